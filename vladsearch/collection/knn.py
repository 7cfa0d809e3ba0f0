"""kNN of every indexed image against the whole index, for the whole-collection verbs.

Also what those verbs read per image: local features (`FeatureSource`: the cache, or
re-extraction) and mirrored VLADs (`mirrored_vectors`).

`duplicates` and `pairs` search the index once per image. Through the index itself that
costs n² · dim for an exact (`Flat`) index: 100,000 SIFT VLADs of 8,192 dimensions are
1.6e14 multiply-adds, about 45 minutes on 2 cores, before any verification. So (`knn="auto"`):

- an index of at most `EXACT_LIMIT` images is searched as it is (exact scores, or the
  compact codes of `--preset large`);
- a larger one is searched through 2,048-bit sign-random-projection codes of its stored
  vectors (SimHash, Charikar 2002: the fraction of differing bits estimates the angle
  between two vectors), built for this run (256 B per image) and compared exhaustively by
  Hamming distance (faiss `IndexBinaryFlat`, popcounts). With these codes the source is
  among the 10 nearest for 99.8-100 % of 3,000 planted copies at 100k
  (`benchmarks/dedup.py timing`). Scores are then cosines estimated from the Hamming
  distance; `duplicates` reports exact cosines of the pairs it groups.

A projection to the top principal directions loses these copies: at 100k synthetic images a
temporary IVF over 256-d PCA projections proposed only two thirds of them (an edited copy's
cosine to its source, 0.26-0.48 and rank 1 exactly, fell to 0.04-0.13), and a `--preset
large` index (PCA-256 + PQ64, exact re-scoring) of 21,000 such images grouped 773 of 1,000
planted copies in 148 s where its codes grouped 983 in 60 s. `knn="index"` still searches a
large index as it is (e.g. where its stored vectors are too slow to read).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from typing import TYPE_CHECKING

import numpy as np

from vladsearch.encoding.compact_codes import import_faiss
from vladsearch.query.verification import CachedFeatures, FeatureSource  # noqa: F401 - the features these verbs read

if TYPE_CHECKING:
    from vladsearch.index import Index

EXACT_LIMIT = 5_000  # above this many images an exact index is searched through binary codes
KNN_MODES = ("auto", "index", "codes")
CODE_BITS = 2048
_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1, dtype=np.uint8)  # bits set per byte
READ_BLOCK = 8192  # vectors read from the segments at once while encoding (256 MiB at 8,192-d)


class CollectionSearch:
    """Search many query vectors against every indexed image: `search(xq, k) -> (D, I)`, faiss-style.

    index: the open index;
    knn: "auto" (the module's rule), "index" (always the index as built) or "codes" (always
    binary codes of the stored vectors); exact_limit: the largest exact index "auto" searches
    as it is; nprobe: IVF lists visited by a compact-code index (None: its own setting).
    """

    def __init__(self, index: Index, exact_limit: int = EXACT_LIMIT, nprobe: int | None = None, seed: int = 0,
                 bits: int = CODE_BITS, knn: str = "auto") -> None:
        if knn not in KNN_MODES:
            raise ValueError(f"unknown kNN mode {knn!r}; choose one of: {', '.join(KNN_MODES)}")
        self.index, self.nprobe = index, nprobe
        snapshot = index.snapshot
        self.approximate = knn == "codes" or (knn == "auto" and len(snapshot.loaded_ids) > exact_limit)
        self.projection: np.ndarray | None = None
        self.codes = None
        self.code_array = np.zeros((0, bits // 8), np.uint8)
        self.ids = np.zeros(0, np.int64)
        if self.approximate:
            self._build(np.asarray(snapshot.loaded_ids, np.int64), seed, bits)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of indexed images (len × dim float32), read from the segment files."""
        return self.index.vectors_of(np.asarray(ids, np.int64))

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """xq nq×dim float32 -> (D nq×k scores, I nq×k image ids, -1 padded)."""
        if not self.approximate:
            return self.index.search_vectors(xq, k, self.nprobe)
        return self._search_codes(self._encode(xq), k)

    def _search_codes(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.codes.ntotal)
        hamming, positions = self.codes.search(codes, k)
        bits = self.projection.shape[1]
        cosines = np.cos(np.pi * hamming.astype(np.float32) / bits)  # P(bit differs) = angle / π
        found = np.where(positions >= 0, self.ids[np.maximum(positions, 0)], -1)
        return cosines.astype(np.float32), found

    def search_indexed(self, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`search` with the stored vectors of indexed images `ids` as queries (with codes, their
        codes are reused rather than read and projected again)."""
        if not self.approximate:
            return self.search(self.vectors(ids), k)
        return self._search_codes(self.code_array[np.searchsorted(self.ids, ids)], k)  # self.ids: ascending

    def similarities(self, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
        """Cosines of the pairs (a[i], b[i]) of indexed images, on the scale `search` reports
        (estimated from the codes when it searches through them); None for a compact-code
        index (its stored vectors are not read pair by pair)."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        if self.approximate:
            codes = self.code_array
            differing = _POPCOUNT[codes[np.searchsorted(self.ids, a)] ^ codes[np.searchsorted(self.ids, b)]]
            return np.cos(np.pi * differing.sum(axis=1, dtype=np.float32) / self.projection.shape[1])
        if self.index.snapshot.coder is not None:
            return None
        unique, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
        x = self.vectors(unique)
        return np.einsum("ij,ij->i", x[inverse[:len(a)]], x[inverse[len(a):]])

    # --- the binary codes ---------------------------------------------------------------
    def _encode(self, x: np.ndarray) -> np.ndarray:
        return np.packbits(np.asarray(x, np.float32) @ self.projection > 0, axis=1)

    def _build(self, ids: np.ndarray, seed: int, bits: int) -> None:
        faiss = import_faiss()
        dim = self.index.encoder.dim
        self.projection = np.random.default_rng(seed).standard_normal((dim, bits), dtype=np.float32)
        self.code_array = np.concatenate([self._encode(self.vectors(ids[start:start + READ_BLOCK]))
                                          for start in range(0, len(ids), READ_BLOCK)])  # row i: ids[i]
        self.codes = faiss.IndexBinaryFlat(bits)
        self.codes.add(self.code_array)
        self.ids = ids  # faiss binary ids are insertion positions


# --- local features and mirrored vectors -------------------------------------------------
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
    from vladsearch.encoding.compact_codes import one_thread_after_fork

    one_thread_after_fork()


def _mirrored_chunk(encoder, source: FeatureSource, ids: np.ndarray) -> np.ndarray:
    from vladsearch.query.rerank import mirror_sift_descriptors

    empty = np.zeros((0, encoder.feature_dim), np.float32)
    descriptors = []
    for image_id in ids:
        found = source(int(image_id))
        descriptors.append(mirror_sift_descriptors(found[1]) if found is not None and len(found[1]) else empty)
    return encoder.encode(descriptors)
