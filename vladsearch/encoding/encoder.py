"""How an image becomes a vector: the build parameters and the fitted state that applies them.

`Encoder` holds what a build learns (codebook, optional PCA-whitening) and the extractor
it uses; the write path and the read path both encode through it, so queries and
database images always get the same treatment.
"""

from __future__ import annotations

import inspect
import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from vladsearch.encoding.codebook import Codebook
from vladsearch.encoding.vlad import PCAWhitening, normalize_vlad, vlad
from vladsearch.features import extractor_class, get_extractor
from vladsearch.features.base import Extractor
from vladsearch.io.images import DEFAULT_MAX_PIXELS

# Local features a build keeps per image, so that searches verify without decoding the photos
# again (0: none): the strongest 1,024, descriptors as product-quantised codes (compact_codes.py),
# 32 B a keypoint for SIFT (≈ 33 KiB an image) instead of 264 B in float16.
DEFAULT_KEEP_FEATURES = 1024
DEFAULT_FEATURE_CODES = "PQ32x7"


@dataclass
class BuildParams:
    """Every parameter that decides how an image becomes a vector (saved in the catalog)."""

    features: str = "sift"
    clusters: int = 64
    max_side: int | None = 1024
    max_keypoints: int | None = None  # None: the extractor's own default
    power: float | None = 0.5         # signed square root, as in the notebook
    intra: bool = True
    pca: int = 0                      # 0: no PCA; else output dimension
    whiten: bool = True
    factory: str = "Flat"
    codebook_images: int = 500
    restarts: int = 3
    seed: int = 0
    keep_features: int = DEFAULT_KEEP_FEATURES  # cache the N strongest local features per image for verification
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # larger images are skipped as likely decompression bombs
    codes: str = ""                   # "": every vector in RAM (exact); "PCA256,PQ64": compact codes (compact_codes.py)
    refine: int = 0                   # with codes: candidates re-scored exactly from the vectors on disk
    vector_dtype: str = "float32"     # how segments store vectors ("float16" halves the disk)
    feature_codes: str = DEFAULT_FEATURE_CODES  # "": cached descriptors in float16; "PQ32x7": 28-byte codes

    def __post_init__(self) -> None:
        """Reject malformed settings before any image is read."""
        from vladsearch.encoding.compact_codes import CodeSpec, check_feature_codes

        if self.codes:
            CodeSpec.parse(self.codes)
        if self.feature_codes:
            check_feature_codes(self.feature_codes)
        if self.vector_dtype not in ("float32", "float16"):
            raise ValueError(f"vector_dtype must be float32 or float16, got {self.vector_dtype!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BuildParams:
        """Saved parameters; an index saved before a parameter existed gets that parameter's old behaviour
        (an index of 0.1 kept no features, whatever builds keep now)."""
        values = {"keep_features": 0, "feature_codes": "", **values}
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


# Named settings (`build --preset`); docs/SCALE.md says when to switch.
PRESETS: dict[str, dict[str, Any]] = {
    "exact": {"codes": "", "refine": 0, "vector_dtype": "float32", "feature_codes": DEFAULT_FEATURE_CODES},
    "large": {"codes": "PCA256,PQ64", "refine": 128, "vector_dtype": "float16", "feature_codes": "PQ32x7"},
    # The same place under strong changes (docs/FEATURES.md, "Places preset"): ALIKED at 640 px
    # (cost: ~2.5x fewer pixels than 1024), exact vectors, cached descriptors in float16 (what
    # LightGlue was measured on). Its candidates are verified by the matcher registered for the
    # feature (`query.matching.verification_for`: LightGlue + fundamental matrix, MAGSAC++).
    "places": {"features": "aliked", "clusters": 64, "max_side": 640, "codes": "", "refine": 0,
               "vector_dtype": "float32", "feature_codes": ""},
}


def preset_params(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def preset_with(name: str, **explicit: Any) -> dict[str, Any]:
    """The preset's parameters with `explicit` ones on top; None means "not given" (the preset's
    value, else the `Index.build` default, applies), so `--preset places --features sift` builds SIFT."""
    params = {"features": "sift", "clusters": 64, "max_side": 1024, **preset_params(name)}
    params.update({key: value for key, value in explicit.items() if value is not None})
    return params


class Encoder:
    """Extractor + codebook (+ PCA): local features in, normalised VLAD vectors out."""

    def __init__(self, params: BuildParams, feature_config: dict[str, Any] | None = None,
                 weights: str | None = None) -> None:
        self.params = params
        self.feature_config = dict(feature_config or {})
        self.weights = os.path.abspath(weights) if weights else None
        self.codebook: Codebook | None = None
        self.pca: PCAWhitening | None = None
        self.coder = None  # compact_codes.CoarseCodes, trained at the end of a build with compact codes
        self.descriptor_codec = None  # compact_codes.DescriptorCodes, for a compact feature cache
        self._extractor: Extractor | None = None

    def extractor(self) -> Extractor:
        """The extractor that encodes images for this index (built on first use)."""
        if self._extractor is None:
            cls = extractor_class(self.params.features)
            accepted = set(inspect.signature(cls.__init__).parameters)
            recorded = {k: v for k, v in self.feature_config.items() if k in accepted}
            options = {"max_keypoints": self.params.max_keypoints, **recorded, "weights": self.weights}
            extractor = get_extractor(self.params.features, **{k: v for k, v in options.items() if k in accepted})
            expected = self.feature_config.get("weights_sha256")
            found = getattr(extractor, "weights_sha256", None)
            if expected and found and expected != found:
                raise ValueError(
                    f"this index was built with {self.params.features} weights sha256 {expected[:12]}…, "
                    f"but the weights found now have sha256 {found[:12]}…; pass the same file with "
                    "--weights, or rebuild the index")
            self._extractor = extractor
            if not self.feature_config:
                self.feature_config = extractor.config()
        return self._extractor

    @property
    def feature_dim(self) -> int:
        return int(self.feature_config.get("dim") or self.extractor().dim)

    @property
    def dim(self) -> int:
        """Dimension of the final vectors."""
        if self.pca is not None:
            return self.pca.output_dim
        return self.params.clusters * self.feature_dim

    # --- encoding --------------------------------------------------------------------
    def raw_vlads(self, descriptor_sets: list[np.ndarray]) -> np.ndarray:
        """Unnormalised VLADs: n × (K·D) float32."""
        k, d = self.codebook.centroids_.shape
        raw = np.zeros((len(descriptor_sets), k * d), np.float32)
        for row, descriptors in enumerate(descriptor_sets):
            raw[row] = vlad(descriptors, self.codebook.centroids_, self.codebook.assign(descriptors))
        return raw

    def finish(self, raw: np.ndarray) -> np.ndarray:
        """Normalise (and project) raw VLADs; images without keypoints stay zero vectors."""
        empty = ~np.any(raw, axis=1)
        vectors = normalize_vlad(raw, self.params.clusters, self.params.power, self.params.intra)
        if self.pca is not None:
            vectors = self.pca.transform(vectors)
        vectors[empty] = 0.0
        return np.ascontiguousarray(vectors, np.float32)

    def encode(self, descriptor_sets: list[np.ndarray]) -> np.ndarray:
        """Final index vectors of images given their descriptors: n × dim float32."""
        if self.codebook is None:
            raise RuntimeError("the index has no codebook yet")
        return self.finish(self.raw_vlads(descriptor_sets))

    def fit_pca(self, raw: np.ndarray) -> None:
        """Fit PCA-whitening on the training images' raw VLADs (when --pca is set)."""
        if self.params.pca:
            normalized = normalize_vlad(raw, self.params.clusters, self.params.power, self.params.intra)
            self.pca = PCAWhitening(self.params.pca, whiten=self.params.whiten).fit(normalized[np.any(raw, axis=1)])

    # --- persistence (blobs in the catalog: .npy / .npz, never pickle) ----------------
    def blobs(self) -> dict[str, bytes | None]:
        codebook = io.BytesIO()
        np.save(codebook, self.codebook.centroids_, allow_pickle=False)
        pca = None
        if self.pca is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **self.pca.state())
            pca = buffer.getvalue()
        return {"codebook.npy": codebook.getvalue(), "pca.npz": pca,
                "coarse.npz": self.coder.to_bytes() if self.coder is not None else None,
                "descriptor_pq.faiss": self.descriptor_codec.to_bytes() if self.descriptor_codec is not None else None}

    def load_blobs(self, codebook: bytes, pca: bytes | None, coarse: bytes | None = None,
                   descriptor_pq: bytes | None = None) -> None:
        self.codebook = Codebook.from_centroids(np.load(io.BytesIO(codebook), allow_pickle=False))
        if pca is not None:
            with np.load(io.BytesIO(pca), allow_pickle=False) as arrays:
                self.pca = PCAWhitening.from_state(dict(arrays), whiten=self.params.whiten)
        if coarse is not None:
            from vladsearch.encoding.compact_codes import CoarseCodes

            self.coder = CoarseCodes.from_bytes(coarse)
        if descriptor_pq is not None:
            from vladsearch.encoding.compact_codes import DescriptorCodes

            self.descriptor_codec = DescriptorCodes.from_bytes(descriptor_pq)
