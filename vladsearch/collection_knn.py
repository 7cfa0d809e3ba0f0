"""kNN of every indexed image against the whole index, for the whole-collection verbs.

Also what those verbs read per image: stored vectors (`vectors_by_id`), local features
(`FeatureSource`: the cache, or re-extraction) and mirrored VLADs (`mirrored_vectors`).

`duplicates` and `pairs` search the index once per image. Through the index itself that
costs n² · dim for an exact (`Flat`) index: 100,000 SIFT VLADs of 8,192 dimensions are
1.6e14 multiply-adds, about 45 minutes on 2 cores, before any verification. So:

- a compact-code index (`--preset large`) is searched as it is: IVF-PQ, exact re-scoring;
- an exact index of at most `EXACT_LIMIT` images is searched as it is (exact scores);
- a larger exact index gets a temporary IVF index (8-bit scalar quantised) of 256-d
  projections, built for this run (≈ 256 B per image in RAM): the projection keeps the
  collection's mean direction and its top principal directions (randomized PCA on a
  seeded sample of `quantizer.PCA_SAMPLE` vectors), so inner products of projections
  approximate the VLAD cosines. Its scores are approximate; the callers only rank and
  verify with them, and `duplicates` reports exact cosines of the pairs it groups.
  Candidate recall against the exact search is measured by `benchmarks/dedup.py knn`.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from vladsearch import catalog, segments
from vladsearch.quantizer import PCA_SAMPLE, TRAIN_SAMPLE, CoarseCodes, _faiss, _orthonormal, randomized_pca

if TYPE_CHECKING:
    from vladsearch.index import Index

EXACT_LIMIT = 20_000  # above this many images an exact index is searched through a temporary IVF
PROJECTED_DIM = 256
READ_BLOCK = 8192  # vectors read from the segments at once while building (32 MiB at 1,024-d)


def vectors_by_id(index: Index, rows: dict[int, dict[str, Any]], ids: np.ndarray) -> np.ndarray:
    """Stored vectors of `ids` (len × dim float32), read from the segment files (exact for any factory)."""
    snapshot = index.snapshot
    try:
        out = np.empty((len(ids), index.encoder.dim), np.float32)
        counts = {s["name"]: s["vectors"] for s in catalog.live_segments(snapshot.table)}
        by_segment: dict[str, list[int]] = defaultdict(list)
        for position, image_id in enumerate(ids):
            by_segment[rows[int(image_id)]["segment"]].append(position)
        for name, positions in by_segment.items():
            mapped = segments.open_vectors(snapshot.index_dir, name, index.encoder.dim, counts[name])
            out[positions] = mapped[[rows[int(ids[p])]["row"] for p in positions]]
        return out
    except (KeyError, TypeError, OSError, catalog.IndexDamagedError):
        return index.vectors_of([int(i) for i in ids])  # e.g. a format 1 index


class CollectionSearch:
    """Search many query vectors against every indexed image: `search(xq, k) -> (D, I)`, faiss-style.

    index, rows: the open index and its image rows by id (with segment and row);
    exact_limit: the largest exact index searched as it is; nprobe: IVF lists visited
    (None: the index's own setting, or `DEFAULT_NPROBE` for the temporary IVF).
    """

    DEFAULT_NPROBE = 32

    def __init__(self, index: Index, rows: dict[int, dict[str, Any]], exact_limit: int = EXACT_LIMIT,
                 nprobe: int | None = None, seed: int = 0) -> None:
        self.index, self.rows, self.nprobe = index, rows, nprobe
        snapshot = index.snapshot
        self.approximate = snapshot.coder is None and len(snapshot.loaded_ids) > exact_limit
        self.basis: np.ndarray | None = None
        self.ivf = None
        if self.approximate:
            self._build(np.asarray(snapshot.loaded_ids, np.int64), seed)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return vectors_by_id(self.index, self.rows, ids)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """xq nq×dim float32 -> (D nq×k scores, I nq×k image ids, -1 padded)."""
        if not self.approximate:
            return self.index.search_vectors(xq, k, self.nprobe)
        self.ivf.nprobe = min(self.ivf.nlist, self.nprobe or self.DEFAULT_NPROBE)
        D, I = self.ivf.search(self._project(xq), min(k, self.ivf.ntotal))
        return D, I

    # --- the temporary IVF ------------------------------------------------------------
    def _project(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(x, np.float32) @ self.basis.T, np.float32)

    def _build(self, ids: np.ndarray, seed: int) -> None:
        faiss = _faiss()
        order = np.random.default_rng(seed).permutation(len(ids))
        mean, components = randomized_pca(self.vectors(np.sort(ids[order[:PCA_SAMPLE]])), PROJECTED_DIM - 1, seed)
        direction = mean / max(float(np.linalg.norm(mean)), 1e-12)
        self.basis = _orthonormal(np.vstack([direction[None, :], components]).T).T  # rows: orthonormal
        sample = self._project(self.vectors(np.sort(ids[order[:TRAIN_SAMPLE]])))
        nlist = CoarseCodes.lists_for(len(sample), len(ids))
        ivf = faiss.index_factory(self.basis.shape[0], f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = seed
        ivf.train(sample)
        del sample
        for start in range(0, len(ids), READ_BLOCK):
            block = ids[start:start + READ_BLOCK]
            ivf.add_with_ids(self._project(self.vectors(block)), block)
        self.ivf = ivf


# --- local features and mirrored vectors -------------------------------------------------
class FeatureSource:
    """Local features by image id: the index's cache (memory-mapped) or re-extracted images."""

    def __init__(self, index: Index, rows: dict[int, dict[str, Any]], workers: int | None) -> None:
        self.index, self.rows, self.workers = index, rows, workers
        self.extracted: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def load(self, ids: set[int]) -> None:
        """Re-extract (in parallel) the images of `ids` that have no cached features; forget older ones."""
        from vladsearch.search import database_features

        snapshot = self.index.snapshot
        missing = [i for i in ids if not snapshot.has_cached_features(self.rows[i])]
        self.extracted = {i: f for i, f in self.extracted.items() if i in ids}
        wanted = [i for i in missing if i not in self.extracted]
        if wanted:
            self.extracted.update(database_features(self.index.encoder, snapshot, self.index.root, wanted,
                                                    self.workers))

    def __call__(self, image_id: int) -> tuple[np.ndarray, np.ndarray] | None:
        if image_id in self.extracted:
            return self.extracted[image_id]
        return self.index.snapshot.cached_features(self.rows[image_id])


def mirrored_vectors(index: Index, source: FeatureSource, ids: np.ndarray, workers: int | None = None) -> np.ndarray:
    """VLAD vectors of the mirrored images (SIFT descriptors permuted as a flip permutes them).

    A flipped copy's VLAD is unrelated to its source's (cosine ≈ 0), so the kNN search also
    runs with these vectors; the local features come from the cache (or are re-extracted).
    Encoding costs ≈ 1.5 ms an image at 1,000 keypoints, so blocks run on all cores.
    """
    source.load({int(i) for i in ids})
    workers = workers or len(os.sched_getaffinity(0))
    job = functools.partial(_mirrored_chunk, index.encoder, source)
    if workers == 1 or len(ids) < MIRROR_CHUNK:
        return job(ids)
    chunks = [ids[i:i + MIRROR_CHUNK] for i in range(0, len(ids), MIRROR_CHUNK)]
    global _mirror_job
    _mirror_job = job  # inherited by the forked workers, not pickled
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, len(chunks)), initializer=_one_blas_thread) as pool:
            return np.concatenate(pool.map(_run_mirror_job, chunks))
    finally:
        _mirror_job = None


MIRROR_CHUNK = 128
_mirror_job = None


def _run_mirror_job(ids: np.ndarray) -> np.ndarray:
    return _mirror_job(ids)


def _one_blas_thread() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def _mirrored_chunk(encoder, source: FeatureSource, ids: np.ndarray) -> np.ndarray:
    from vladsearch.rerank import mirror_sift_descriptors

    empty = np.zeros((0, encoder.feature_dim), np.float32)
    descriptors = []
    for image_id in ids:
        found = source(int(image_id))
        descriptors.append(mirror_sift_descriptors(found[1]) if found is not None and len(found[1]) else empty)
    return encoder.encode(descriptors)
