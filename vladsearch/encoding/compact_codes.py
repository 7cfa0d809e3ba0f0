"""Compact codes for large collections: a small code per image in RAM, exact answers from disk.

`--preset large` keeps, per image, a 64-byte product-quantised code (Jégou et al. 2011) of
its vector projected by PCA to 256 dimensions, in an inverted file (IVF) in RAM; the full
vectors stay on disk (float16, memory-mapped segments). A query scans `nprobe` lists of
codes for `refine` (128) candidates, then re-ranks them with the full vectors, exactly as the
default index would score them (faiss's IndexRefine, with the refinement on disk).

Everything is trained on a bounded, seeded sample of the collection's vectors: PCA on at
most PCA_SAMPLE, IVF and PQ on at most TRAIN_SAMPLE (≥ TRAIN_PER_LIST per list), so
training costs the same at 10 thousand or 10 million images.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PCA_SAMPLE = 4096
TRAIN_SAMPLE = 65_536  # 2,048 lists × 32: bounded memory (≈ 64 MiB projected) and minutes of training
TRAIN_PER_LIST = 30   # training vectors per IVF list (faiss warns below 39; 30 keeps lists balanced)
# PQ k-means points per centroid (faiss caps at 256): 64 trains 4× faster, codes as good (measured in scale.py).
PQ_POINTS_PER_CENTROID = 64
DEFAULT_SPEC = "PCA256,PQ64"
# Every build trains the descriptor codes of its feature cache (32 sub-quantisers of 4 SIFT dimensions):
# 32 points per centroid and 15 iterations instead of faiss's 25 cut that training ≈ 3.7× (9.1 → 2.4 s
# on a busy 2-core machine); verification on the codes is measured in docs/BENCHMARKS.md "Answers".
DESCRIPTOR_PQ_POINTS_PER_CENTROID = 32
DESCRIPTOR_PQ_ITERATIONS = 15


def one_thread_after_fork() -> None:
    """In a forked worker: BLAS and OpenMP (faiss's too) run on one thread.

    One process per core needs no more; and libgomp is not fork-safe: a child that enters an
    OpenMP region of the parent's thread pool waits forever (faiss's PQ decode of cached
    features hung that way in `duplicates`' workers). With one thread a region runs inline.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    import_faiss().omp_set_num_threads(1)


def import_faiss():
    """faiss, imported on first use (it is heavy; the knn and codes modules share this)."""
    import faiss

    return faiss


@dataclass
class CodeSpec:
    """Parsed `codes` parameter: PCA dimension and PQ bytes per image."""

    pca: int
    pq: int

    @classmethod
    def parse(cls, text: str) -> CodeSpec:
        match = re.fullmatch(r"PCA(\d+),PQ(\d+)", text.strip())
        if not match:
            raise ValueError(f"codes must look like 'PCA256,PQ64' (PCA dimension, PQ bytes per image), got {text!r}")
        pca, pq = int(match[1]), int(match[2])
        if pca % pq:
            raise ValueError(f"the PCA dimension ({pca}) must be a multiple of the PQ bytes ({pq})")
        return cls(pca, pq)


def _orthonormal(y: np.ndarray) -> np.ndarray:
    """Orthonormal basis of y's columns (Cholesky QR: two small products, no LAPACK QR of a tall matrix)."""
    gram = (y.T @ y).astype(np.float64)
    gram[np.diag_indices_from(gram)] += 1e-6 * max(float(np.trace(gram)) / len(gram), 1e-12)
    chol = np.linalg.cholesky(gram)
    return (y @ np.linalg.inv(chol).T.astype(np.float32)).astype(np.float32)


def randomized_pca(x: np.ndarray, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top `dim` principal directions of x (n×d): (mean d, components dim×d), float32.

    Halko, Martinsson & Tropp (2011): a random range finder with two power iterations,
    a few matrix products instead of a full SVD of the sample.
    """
    x = np.asarray(x, np.float32)
    mean = x.mean(axis=0)
    centred = x - mean
    dim = min(dim, *centred.shape)
    rng = np.random.default_rng(seed)
    width = min(dim + 32, *centred.shape)
    q = _orthonormal(centred @ rng.standard_normal((centred.shape[1], width), dtype=np.float32))
    for _ in range(2):
        q = _orthonormal(centred @ _orthonormal(centred.T @ q))
    small = (q.T @ centred).astype(np.float64)              # width × d
    values, vectors = np.linalg.eigh(small @ small.T)       # = U S² Uᵀ of small = U S Vᵀ
    order = np.argsort(values)[::-1][:dim]
    singular = np.sqrt(np.maximum(values[order], 1e-12))
    components = (vectors[:, order].T @ small) / singular[:, None]
    return mean.astype(np.float32), np.ascontiguousarray(components, np.float32)


class CoarseCodes:
    """PCA projection + IVF-PQ codes. Learned state: mean_, components_, ivf_ (trained, empty)."""

    def __init__(self, spec: str = DEFAULT_SPEC, seed: int = 0) -> None:
        self.spec = CodeSpec.parse(spec)
        self.seed = seed
        self.mean_: np.ndarray | None = None
        self.components_: np.ndarray | None = None
        self.ivf_ = None

    @staticmethod
    def lists_for(sample: int, expected_total: int) -> int:
        """IVF lists: a power of two near 4·√N, with ≥ TRAIN_PER_LIST training vectors each."""
        wanted = min(4 * math.sqrt(max(expected_total, 1)), sample / TRAIN_PER_LIST)
        return 1 << max(0, int(math.log2(max(wanted, 1))))

    def fit(self, read_rows: Callable[[np.ndarray], np.ndarray], total: int,
            expected_total: int | None = None) -> CoarseCodes:
        """Train on a seeded sample of the collection's vectors.

        read_rows(indices) -> len × D float32 vectors of rows 0 ≤ index < total (e.g. read
        back from staged segments); only PCA_SAMPLE full vectors and TRAIN_SAMPLE projected
        ones are ever in memory. expected_total sizes the IVF (default: total).
        """
        faiss = import_faiss()
        if total < 2:
            raise ValueError("compact codes need at least 2 indexed images to train; use --preset exact")
        order = np.random.default_rng(self.seed).permutation(total)
        self.mean_, self.components_ = randomized_pca(read_rows(np.sort(order[:PCA_SAMPLE])), self.spec.pca, self.seed)
        chosen = np.sort(order[:TRAIN_SAMPLE])
        projected = np.concatenate([self.project(read_rows(chosen[i:i + 8192])) for i in range(0, len(chosen), 8192)])
        dim = projected.shape[1]
        pq = self.spec.pq if dim % self.spec.pq == 0 else math.gcd(dim, self.spec.pq)
        nlist = self.lists_for(len(projected), expected_total or total)
        nbits = 8 if len(projected) >= 256 * 4 else max(1, int(math.log2(len(projected) // 4 or 1)))
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, pq, nbits, faiss.METRIC_INNER_PRODUCT)
        ivf.own_fields = True
        quantizer.this.disown()
        ivf.cp.seed = ivf.pq.cp.seed = self.seed
        ivf.cp.min_points_per_centroid = ivf.pq.cp.min_points_per_centroid = 1  # sizes are chosen above
        ivf.pq.cp.max_points_per_centroid = PQ_POINTS_PER_CENTROID
        ivf.train(projected)
        ivf.nprobe = min(nlist, max(8, nlist // 32))
        self.ivf_ = ivf
        return self

    def fit_array(self, x: np.ndarray, expected_total: int | None = None) -> CoarseCodes:
        """`fit` on vectors already in memory (n × D float32)."""
        x = np.asarray(x, np.float32)
        return self.fit(lambda rows: x[rows], len(x), expected_total)

    def project(self, x: np.ndarray) -> np.ndarray:
        """n×D -> n×pca float32 (centred projection; inner products approximate the originals)."""
        return np.ascontiguousarray((np.asarray(x, np.float32) - self.mean_) @ self.components_.T, np.float32)

    @property
    def code_size(self) -> int:
        return int(self.ivf_.sa_code_size())

    def encode(self, x: np.ndarray) -> np.ndarray:
        """n×D vectors -> n×code_size uint8 (list number + PQ code), what segments store."""
        if len(x) == 0:
            return np.zeros((0, self.code_size), np.uint8)
        return self.ivf_.sa_encode(self.project(x))

    def empty_index(self):
        """A fresh, trained, empty IVF-PQ to fill with `add_sa_codes` (one per reader)."""
        return import_faiss().clone_index(self.ivf_)

    # --- persistence: an .npz of the projection + faiss's own serialisation -------
    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean_, components=self.components_,
                 ivf=import_faiss().serialize_index(self.ivf_), spec=np.array([self.spec.pca, self.spec.pq]))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> CoarseCodes:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            pca, pq = (int(v) for v in arrays["spec"])
            codes = cls(f"PCA{pca},PQ{pq}")
            codes.mean_, codes.components_ = arrays["mean"], arrays["components"]
            codes.ivf_ = import_faiss().deserialize_index(arrays["ivf"])
        return codes


def check_feature_codes(spec: str) -> re.Match:
    match = re.fullmatch(r"PQ(\d+)(?:x(\d+))?", spec)
    if not match or not 1 <= int(match[2] or 8) <= 16:
        raise ValueError(f"feature codes must look like 'PQ32x7' (sub-quantisers x bits ≤ 16), got {spec!r}")
    return match


class DescriptorCodes:
    """Product-quantised local descriptors for a compact feature cache (`--feature-codes PQ32x7`).

    Each D-dimensional descriptor becomes m sub-quantiser indices of `nbits` bits (trained
    on the build's seeded descriptor sample); reranking matches the decoded descriptors.
    PQ32x7 is 28 bytes: with 4-byte keypoints, 1,024 SIFT keypoints take 32 KiB instead of
    264 KiB in float16. On homogr_pairs' wide-baseline pairs it verifies 22 of 32 against
    23 of 32 with float16 descriptors, and every exact copy (docs/SCALE.md).
    """

    def __init__(self, dim: int, m: int = 32, nbits: int = 7, seed: int = 0) -> None:
        if dim % m:
            raise ValueError(f"descriptor dimension {dim} is not a multiple of PQ{m}")
        self.dim, self.m, self.nbits, self.seed = dim, m, nbits, seed
        self.pq_ = None

    @classmethod
    def parse(cls, spec: str, dim: int, seed: int = 0) -> DescriptorCodes:
        match = check_feature_codes(spec)
        return cls(dim, int(match[1]), int(match[2] or 8), seed)

    @property
    def name(self) -> str:
        return f"PQ{self.m}x{self.nbits}"

    @property
    def code_size(self) -> int:
        return int(self.pq_.code_size)

    def fit(self, sample: np.ndarray) -> DescriptorCodes:
        faiss = import_faiss()
        sample = np.ascontiguousarray(sample, np.float32)
        nbits = min(self.nbits, max(1, int(math.log2(max(len(sample), 2))) - 1))
        pq = faiss.ProductQuantizer(self.dim, self.m, nbits)
        pq.cp.seed = self.seed
        pq.cp.min_points_per_centroid = 1
        pq.cp.max_points_per_centroid = DESCRIPTOR_PQ_POINTS_PER_CENTROID
        pq.cp.niter = DESCRIPTOR_PQ_ITERATIONS
        pq.train(sample)
        self.pq_ = pq
        return self

    def encode(self, descriptors: np.ndarray) -> np.ndarray:
        if len(descriptors) == 0:
            return np.zeros((0, self.code_size), np.uint8)
        return self.pq_.compute_codes(np.ascontiguousarray(descriptors, np.float32))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        if len(codes) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.pq_.decode(np.ascontiguousarray(codes, np.uint8))

    def to_bytes(self) -> bytes:
        index = import_faiss().IndexPQ(self.dim, self.m, int(self.pq_.nbits))
        index.pq = self.pq_
        index.is_trained = True
        return import_faiss().serialize_index(index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> DescriptorCodes:
        index = import_faiss().deserialize_index(np.frombuffer(data, np.uint8))
        codes = cls(index.d, index.pq.M, int(index.pq.nbits))
        codes.pq_ = index.pq
        codes._owner = index  # keeps the quantizer alive
        return codes
