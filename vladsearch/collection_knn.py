"""kNN of every indexed image against the whole index, for the whole-collection verbs.

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
