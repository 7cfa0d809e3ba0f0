"""`Index`: build, search, update and persist a VLAD image index.

The build makes one pass over the images. They are visited in a seeded random order;
the first `codebook_images` of that order form the training set: their descriptors
feed a bounded reservoir sample for k-means and wait, compactly on disk (float16),
for the codebook. Once it is trained, the waiting images are encoded and every later
image is encoded as soon as it is extracted. Memory is bounded by the sample, not by
the collection.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vladsearch import __version__, storage
from vladsearch.codebook import SAMPLE_POINTS_PER_CLUSTER, Codebook, DescriptorSample, PendingDescriptors
from vladsearch.extraction import ExtractedImage, extract_images, single_blas_thread
from vladsearch.feature_store import IndexFeatureCache
from vladsearch.features import extractor_class, get_extractor
from vladsearch.features.base import Extractor
from vladsearch.images import IMAGE_EXTENSIONS, list_images
from vladsearch.index_backend import FaissBackend
from vladsearch.progress import progress_bar
from vladsearch.search import SearchResult
from vladsearch.vlad import PCAWhitening, normalize_vlad, vlad


@dataclass
class BuildParams:
    """Every parameter that decides how an image becomes a vector (saved in the manifest)."""

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
    keep_features: int = 0            # cache the N strongest local features per image for reranking


# Images whose vectors are added to faiss together.
ADD_BATCH = 256
# Keypoints per database image used for reranking when they must be re-extracted.
RERANK_KEYPOINTS = 1024


@dataclass
class Report:
    """What happened to the files of one build/add call."""

    indexed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, reason)
    no_keypoints: list[str] = field(default_factory=list)


class Index:
    """A VLAD index over a collection of images; see the module docstring for the build."""

    def __init__(self, params: BuildParams, root: Path) -> None:
        self.params = params
        self.root = Path(root)
        self.table = storage.ImageTable()
        self.codebook: Codebook | None = None
        self.pca: PCAWhitening | None = None
        self.backend: FaissBackend | None = None
        self.feature_config: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.report = Report()
        self.created: dict[str, Any] = {}
        self._extractor: Extractor | None = None
        self._weights: str | None = None
        self.store: IndexFeatureCache | None = None   # cached local features (keep_features)

    # --- construction --------------------------------------------------------------
    @classmethod
    def build(cls, images: str | os.PathLike, *, features: str = "sift", clusters: int = 64,
              weights: str | None = None, workers: int | None = None, progress: bool = True,
              **params: Any) -> Index:
        """Index every image under the folder `images` (not saved: call `save`)."""
        extractor_class(features)  # unknown names fail before any work
        root = Path(images)
        paths = list_images(root)
        if not paths:
            raise ValueError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        index = cls(BuildParams(features=features, clusters=clusters, **params), Path(os.path.abspath(root)))
        index._weights = os.path.abspath(weights) if weights else None  # found again from any directory
        index._run_build(paths, workers, progress)
        return index

    def extractor(self) -> Extractor:
        """The extractor that encodes images for this index (built on first use)."""
        if self._extractor is None:
            cls = extractor_class(self.params.features)
            accepted = set(inspect.signature(cls.__init__).parameters)
            recorded = {k: v for k, v in self.feature_config.items() if k in accepted}
            options = {"max_keypoints": self.params.max_keypoints, **recorded, "weights": self._weights}
            extractor = get_extractor(self.params.features,
                                      **{k: v for k, v in options.items() if k in accepted})
            expected = self.feature_config.get("weights_sha256")
            found = getattr(extractor, "weights_sha256", None)
            if expected and found and expected != found:
                raise ValueError(
                    f"this index was built with {self.params.features} weights sha256 {expected[:12]}…, "
                    f"but the weights found now have sha256 {found[:12]}…; pass the same file with "
                    "--weights, or rebuild the index"
                )
            self._extractor = extractor
        return self._extractor

    def _run_build(self, paths: list[Path], workers: int | None, progress: bool) -> None:
        p = self.params
        extractor = self.extractor()
        self.feature_config = extractor.config()
        self.codebook = Codebook(p.clusters, restarts=p.restarts, seed=p.seed)
        self.backend = None
        order = np.random.default_rng(p.seed).permutation(len(paths))
        train_count = min(len(paths), p.codebook_images)
        sample = DescriptorSample(SAMPLE_POINTS_PER_CLUSTER * p.clusters, seed=p.seed)
        timings = {"codebook": 0.0, "encode": 0.0, "index": 0.0}
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="vladsearch-") as scratch, single_blas_thread(extractor):
            cache = PendingDescriptors(scratch)
            stream = extract_images([paths[i] for i in order], extractor, p.max_side, workers)
            bar = progress_bar(stream, total=len(paths), desc="extract+encode", enabled=progress)
            pending: list[tuple[ExtractedImage, np.ndarray]] = []
            for position, item in enumerate(bar):
                self._cache_features(item)
                if position < train_count:
                    if item.features is not None:
                        sample.add(item.features.descriptors)
                        cache.append(item)
                    else:
                        self._record(item, None)
                    if position == train_count - 1:
                        self._train(sample.sample(), cache, timings)
                    continue
                self._queue(item, pending, timings)
            self._flush(pending, timings)
        timings["extract"] = time.perf_counter() - start - sum(timings.values())
        self.timings = {"extract": timings["extract"], **{k: timings[k] for k in ("codebook", "encode", "index")}}
        if self.backend is None or self.backend.ntotal == 0 and self.table.count(storage.STATUS_INDEXED) == 0:
            reasons = "; ".join(f"{path}: {why}" for path, why in self.report.skipped[:5])
            raise ValueError(f"none of the {len(paths)} images could be indexed ({reasons})")

    def _cache_features(self, item: ExtractedImage) -> None:
        """Append an image's strongest local features to the feature cache (when kept)."""
        if not self.params.keep_features or item.features is None:
            return
        if self.store is None:
            dim = int(self.feature_config.get("dim") or self.extractor().dim)
            self.store = IndexFeatureCache.new(dim, self.params.keep_features)
        item.feature_rows = self.store.append(item.features)

    def _train(self, sample: np.ndarray, cache: PendingDescriptors, timings: dict[str, float]) -> None:
        t0 = time.perf_counter()
        if len(sample) == 0:
            raise ValueError("the training images have no keypoints at all; check the images or --features")
        self.codebook.fit(sample)
        timings["codebook"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        items = [entry[0] for entry in cache.entries]
        raw = np.zeros((len(items), self.codebook.centroids_.size), np.float32)
        for row, item in enumerate(cache):  # one image's descriptors in RAM at a time
            raw[row] = self._raw_vlads([item.features.descriptors])[0]
            item.features.descriptors = None
        if self.params.pca:
            normalized = normalize_vlad(raw, self.params.clusters, self.params.power, self.params.intra)
            self.pca = PCAWhitening(self.params.pca, whiten=self.params.whiten).fit(normalized[np.any(raw, axis=1)])
        vectors = self._finish_vectors(raw)
        timings["encode"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        self.backend = FaissBackend.create(vectors.shape[1], self.params.factory)
        self.backend.train(vectors)
        self._add_vectors(items, vectors)
        timings["index"] += time.perf_counter() - t0

    # --- encoding ------------------------------------------------------------------
    def _raw_vlads(self, descriptor_sets: list[np.ndarray]) -> np.ndarray:
        k, d = self.codebook.centroids_.shape
        raw = np.zeros((len(descriptor_sets), k * d), np.float32)
        for row, descriptors in enumerate(descriptor_sets):
            raw[row] = vlad(descriptors, self.codebook.centroids_, self.codebook.assign(descriptors))
        return raw

    def _finish_vectors(self, raw: np.ndarray) -> np.ndarray:
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
        return self._finish_vectors(self._raw_vlads(descriptor_sets))

    def _queue(self, item: ExtractedImage, pending: list, timings: dict[str, float]) -> None:
        """Reduce an image to its raw VLAD at once (its descriptors are freed); add in batches."""
        if item.features is None:
            self._record(item, None)
            return
        t0 = time.perf_counter()
        pending.append((item, self._raw_vlads([item.features.descriptors])[0]))
        item.features.descriptors = None
        timings["encode"] += time.perf_counter() - t0
        if len(pending) >= ADD_BATCH:
            self._flush(pending, timings)

    def _flush(self, pending: list, timings: dict[str, float]) -> None:
        if not pending:
            return
        t0 = time.perf_counter()
        vectors = self._finish_vectors(np.stack([raw for _, raw in pending]))
        timings["encode"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        self._add_vectors([item for item, _ in pending], vectors)
        timings["index"] += time.perf_counter() - t0
        pending.clear()

    def _add_vectors(self, items: list[ExtractedImage], vectors: np.ndarray) -> None:
        first = self.table.next_id()
        ids = np.arange(first, first + len(items), dtype=np.int64)
        for image_id, item in zip(ids, items):
            self._record(item, int(image_id))
        self.backend.add(vectors, ids)

    def _relative(self, path: Path) -> str:
        """The table's name for a file: relative to the build folder (through symlinks too), else absolute."""
        absolute = Path(os.path.abspath(path))
        for candidate, root in ((absolute, self.root), (Path(os.path.realpath(path)), Path(os.path.realpath(self.root)))):
            try:
                return candidate.relative_to(root).as_posix()
            except ValueError:
                continue
        return absolute.as_posix()

    def _record(self, item: ExtractedImage, image_id: int | None) -> None:
        relative = self._relative(item.path)
        if item.features is None:
            self.report.skipped.append((relative, item.error or "unknown error"))
            existing = self.table.find(relative)
            if existing is None or existing["status"] == storage.STATUS_SKIPPED:
                self.table.insert(id=existing["id"] if existing else self.table.next_id(), path=relative,
                                  status=storage.STATUS_SKIPPED, reason=item.error)
            return
        status = storage.STATUS_INDEXED
        if len(item.features) == 0:
            status = storage.STATUS_NO_KEYPOINTS
            self.report.no_keypoints.append(relative)
        self.report.indexed += 1
        width, height = item.features.image_size
        self.table.insert(id=image_id, path=relative, status=status,
                          reason="no keypoints detected" if status == storage.STATUS_NO_KEYPOINTS else None,
                          file_size=item.file_size, mtime=item.mtime, sha1=item.sha1, width=width,
                          height=height, keypoints=len(item.features),
                          feat_offset=item.feature_rows[0] if item.feature_rows else None,
                          feat_count=item.feature_rows[1] if item.feature_rows else None)

    # --- queries -------------------------------------------------------------------
    def search(self, queries: list[str | os.PathLike], top: int = 10, *, rerank: int = 0,
               verified_only: bool = False, query_expansion: int = 0, mirrored: bool = False,
               workers: int | None = None, progress: bool = False, nprobe: int | None = None) -> list[SearchResult]:
        """Top-`top` database images for each query image file (or folder of them).

        rerank: verify the best N candidates geometrically (see vladsearch.rerank);
        verified_only: keep only verified matches (needs rerank); query_expansion: αQE
        with the N best (verified, when reranking) neighbours; mirrored: also verify the
        mirrored query (sift/rootsift), so that flipped copies verify.
        """
        from vladsearch.search import search_index

        return search_index(self, queries, top=top, rerank=rerank, verified_only=verified_only,
                            query_expansion=query_expansion, mirrored=mirrored, workers=workers,
                            progress=progress, nprobe=nprobe)

    def search_vectors(self, xq: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """faiss-style search: xq nq×dim float32 -> (D nq×k scores, I nq×k image ids, -1 padded)."""
        return self.backend.search(np.ascontiguousarray(xq, np.float32), min(k, max(self.backend.ntotal, 1)), nprobe)

    def vectors_of(self, ids: list[int]) -> np.ndarray:
        """Stored index vectors of images: len(ids) × dim float32 (Flat and HNSW indexes)."""
        return self.backend.reconstruct(np.asarray(ids, np.int64))

    def database_features(self, ids: list[int], workers: int | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Local features (keypoints N×2, descriptors N×D float32) of database images.

        From the feature cache when the index has one (`keep_features`), else by
        decoding the images again from the folder the index was built from.
        """
        rows = {row["id"]: row for row in self.table.rows_by_id(ids)}
        found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        to_extract = []
        for image_id in ids:
            row = rows.get(image_id)
            if row is None:
                continue
            if self.store is not None and row["feat_count"] is not None:
                found[image_id] = self.store.get(row["feat_offset"], row["feat_count"])
            else:
                to_extract.append((image_id, self.root / row["path"]))
        if to_extract:
            stream = extract_images([path for _, path in to_extract], self.extractor(), self.params.max_side, workers)
            for (image_id, _), item in zip(to_extract, stream):
                if item.features is not None:
                    keep = np.argsort(-item.features.scores, kind="stable")[:RERANK_KEYPOINTS]
                    found[image_id] = (item.features.keypoints[keep], item.features.descriptors[keep])
        return found

    # --- updates -------------------------------------------------------------------
    def add(self, paths: list[str | os.PathLike], workers: int | None = None, progress: bool = True) -> Report:
        """Encode more images with the existing codebook; unchanged files are skipped."""
        # One entry per indexed name, even when the same file is given twice.
        files = {self._relative(f): f for given in paths for f in list_images(given)}
        self.report = Report()
        todo = []
        for relative, path in files.items():
            existing = self.table.find(relative)
            stat = os.stat(path)
            if existing and existing["status"] != storage.STATUS_SKIPPED and existing["mtime"] == stat.st_mtime \
                    and existing["file_size"] == stat.st_size:
                self.report.unchanged += 1
            else:
                todo.append(path)
        timings = {"codebook": 0.0, "encode": 0.0, "index": 0.0}
        stream = extract_images(todo, self.extractor(), self.params.max_side, workers)
        with single_blas_thread(self.extractor()):
            self._add_stream(stream, len(todo), progress, timings)
        return self.report

    def _add_stream(self, stream, total: int, progress: bool, timings: dict[str, float]) -> None:
        pending: list[tuple[ExtractedImage, np.ndarray]] = []
        for item in progress_bar(stream, total=total, desc="add", enabled=progress):
            self._cache_features(item)
            if item.features is not None:
                existing = self.table.find(self._relative(item.path))
                if existing and existing["status"] != storage.STATUS_SKIPPED:
                    self.remove_ids([existing["id"]])
            self._queue(item, pending, timings)
        self._flush(pending, timings)

    def remove(self, images: list[str | os.PathLike]) -> list[str]:
        """Drop images by their indexed path (or a filesystem path to them); returns the missing ones."""
        missing, ids = [], []
        for image in images:
            row = self.table.find(str(image).replace(os.sep, "/")) or self.table.find(self._relative(Path(image)))
            if row is None:
                missing.append(str(image))
            else:
                ids.append(row["id"])
        self.remove_ids(ids)
        return missing

    def remove_ids(self, ids: list[int]) -> None:
        if ids:
            self.backend.remove(np.asarray(ids, np.int64))
            self.table.delete(ids)

    # --- persistence ---------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {
            "created_by": __version__,
            "created": self.created or {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "root": str(self.root)},
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "root": str(self.root),
            "params": vars(self.params),
            "features": self.feature_config,
            "weights_path": self._weights,
            "dim": self.backend.dim,
            "counts": {"images": self.table.count(), "vectors": int(self.backend.ntotal),
                       "indexed": self.table.count(storage.STATUS_INDEXED),
                       "no_keypoints": self.table.count(storage.STATUS_NO_KEYPOINTS),
                       "skipped": self.table.count(storage.STATUS_SKIPPED)},
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "feature_store": None if self.store is None else self.store.manifest_entry(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index directory atomically (see vladsearch.storage)."""
        path = Path(path)
        staging, name = storage.prepare_generation(path)
        try:
            np.save(staging / "codebook.npy", self.codebook.centroids_)
            if self.pca is not None:
                np.savez(staging / "pca.npz", **self.pca.state())
            self.backend.save(staging / "index.faiss")
            self.table.save(staging / "images.sqlite")
            if self.store is not None:
                self.store.place_in(path)
            storage.commit_generation(path, staging, name, self.manifest())
        except BaseException:
            storage.discard_generation(staging)
            raise
        IndexFeatureCache.remove_stale(path, self.store.name if self.store is not None else None)
        return path

    @classmethod
    def open(cls, path: str | os.PathLike, weights: str | None = None) -> Index:
        """Load a saved index; fails clearly on a foreign or incompatible directory."""
        manifest = storage.read_manifest(path)
        data = storage.generation_dir(Path(path), manifest)
        params = BuildParams(**{k: v for k, v in manifest["params"].items() if k in BuildParams.__dataclass_fields__})
        index = cls(params, Path(manifest["root"]))
        index.feature_config = manifest["features"]
        index._weights = os.path.abspath(weights) if weights else manifest.get("weights_path")
        index.created = manifest.get("created", {})
        index.timings = manifest.get("timings", {})
        index.codebook = Codebook.from_centroids(np.load(data / "codebook.npy", allow_pickle=False))
        if (data / "pca.npz").exists():
            with np.load(data / "pca.npz", allow_pickle=False) as arrays:
                index.pca = PCAWhitening.from_state(dict(arrays), whiten=params.whiten)
        index.backend = FaissBackend.load(data / "index.faiss", params.factory)
        index.table = storage.ImageTable.load(data / "images.sqlite")
        cache = manifest.get("feature_store")
        if cache:
            index.store = IndexFeatureCache.open(Path(path), cache)
        return index

    def image_paths(self) -> list[str]:
        """Relative paths of the images in the faiss index, in id order."""
        return [row["path"] for row in self.table.rows() if row["status"] != storage.STATUS_SKIPPED]

    def info(self) -> dict[str, Any]:
        info = self.manifest()
        info["skipped_files"] = [{"path": r["path"], "reason": r["reason"]}
                                 for r in self.table.rows(storage.STATUS_SKIPPED)]
        info["no_keypoint_files"] = [r["path"] for r in self.table.rows(storage.STATUS_NO_KEYPOINTS)]
        return info
