"""The visual vocabulary: k-means centroids of local descriptors (faiss).

The codebook is trained on a bounded, seeded sample of descriptors — never on all of
them — so memory and time do not grow with the collection. `DescriptorSample` draws
that sample while images stream past (reservoir sampling, Vitter 1985).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# faiss warns below 39 points per centroid; 256 per centroid is its own default cap.
MIN_POINTS_PER_CLUSTER = 39
SAMPLE_POINTS_PER_CLUSTER = 256
# Below this many multiply-adds k-means trains on one thread (≈ 1 s on one core).
SINGLE_THREAD_FLOPS = 2e10


class Codebook:
    """k-means visual words. Learned state: centroids_ (K×D float32).

    clusters: K; restarts: k-means runs from different seeds, the one with the lowest
    quantisation error is kept (faiss `nredo`); iterations per run; seed.
    """

    def __init__(self, clusters: int = 64, restarts: int = 3, iterations: int = 25, seed: int = 0) -> None:
        if clusters < 1:
            raise ValueError(f"--clusters must be at least 1, got {clusters}")
        self.clusters = clusters
        self.restarts = restarts
        self.iterations = iterations
        self.seed = seed

    def fit(self, descriptors: np.ndarray) -> Codebook:
        """descriptors: N×D float32 sample, N ≥ clusters."""
        import faiss

        descriptors = np.ascontiguousarray(descriptors, np.float32)
        n, dim = descriptors.shape
        if n < self.clusters:
            raise ValueError(
                f"cannot train {self.clusters} visual words on {n} descriptors: use fewer "
                f"--clusters (at most {n}) or more/larger images"
            )
        kmeans = faiss.Kmeans(
            dim, self.clusters, niter=self.iterations, nredo=self.restarts, seed=self.seed,
            max_points_per_centroid=max(SAMPLE_POINTS_PER_CLUSTER, -(-n // self.clusters)),
            min_points_per_centroid=1, verbose=False,
        )
        # A small problem runs fastest on one thread: OpenMP threads that spin-wait beside
        # busy extraction workers slowed a 0.2 s training to 17 s on 2 shared cores.
        work = n * self.clusters * dim * self.iterations * self.restarts
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1 if work < SINGLE_THREAD_FLOPS else threads)
        try:
            kmeans.train(descriptors)
        finally:
            faiss.omp_set_num_threads(threads)
        self.centroids_ = np.ascontiguousarray(kmeans.centroids, np.float32)
        self.dim_ = dim
        return self

    def assign(self, descriptors: np.ndarray) -> np.ndarray:
        """Nearest visual word of each descriptor: N×D float32 -> N int64.

        One matrix product: argmin ‖x−c‖² = argmax (x·c − ‖c‖²/2).
        """
        if len(descriptors) == 0:
            return np.zeros(0, np.int64)
        scores = descriptors @ self.centroids_.T - 0.5 * self._sq_norms
        return scores.argmax(axis=1)

    @property
    def _sq_norms(self) -> np.ndarray:
        if getattr(self, "_sq_norms_cache", None) is None:
            self._sq_norms_cache = (self.centroids_ ** 2).sum(axis=1)
        return self._sq_norms_cache

    @classmethod
    def from_centroids(cls, centroids: np.ndarray, **params) -> Codebook:
        codebook = cls(clusters=len(centroids), **params)
        codebook.centroids_ = np.ascontiguousarray(centroids, np.float32)
        codebook.dim_ = centroids.shape[1]
        return codebook


class DescriptorSample:
    """A seeded uniform sample of at most `capacity` descriptor rows from a stream.

    Memory is capacity×D float32 whatever the stream's length.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.rows: np.ndarray | None = None
        self.filled = 0

    def add(self, descriptors: np.ndarray) -> None:
        """Offer N×D rows to the reservoir."""
        n = len(descriptors)
        if n == 0:
            return
        if self.rows is None:
            self.rows = np.empty((min(self.capacity, max(2 * n, 4096)), descriptors.shape[1]), np.float32)
        take = min(n, self.capacity - self.filled)
        if self.filled + take > len(self.rows):  # grow by doubling, never past capacity
            grown = np.empty((min(self.capacity, max(2 * len(self.rows), self.filled + take)), self.rows.shape[1]),
                             np.float32)
            grown[: self.filled] = self.rows[: self.filled]
            self.rows = grown
        if take:
            self.rows[self.filled:self.filled + take] = descriptors[:take]
            self.filled += take
        rest = descriptors[take:]
        if len(rest):
            # Row i of the stream (0-based, global index g) replaces a random slot with
            # probability capacity/(g+1) (algorithm R, vectorised).
            global_index = self.seen + take + np.arange(len(rest))
            slots = (self.rng.random(len(rest)) * (global_index + 1)).astype(np.int64)
            keep = slots < self.capacity
            self.rows[slots[keep]] = rest[keep]  # later rows win, as in the sequential algorithm
        self.seen += n

    def sample(self) -> np.ndarray:
        if self.rows is None:
            return np.zeros((0, 0), np.float32)
        return self.rows[: self.filled]


class PendingDescriptors:
    """Descriptors of training images waiting for the codebook: one float16 file on disk.

    `append(item)` takes an item with `.features.descriptors` (N×D float32), writes them as
    float16 and drops them from the item; iterating gives the items back, one at a time,
    with their descriptors restored (float32) from a memory map.
    """

    def __init__(self, directory: str) -> None:
        self.path = Path(directory) / "descriptors.f16"
        self.handle = open(self.path, "wb")  # noqa: SIM115 - closed when the cache is read back
        self.entries: list[tuple[object, int, int]] = []
        self.rows = 0
        self.dim = 0

    def append(self, item) -> None:
        descriptors = item.features.descriptors
        self.dim = descriptors.shape[1]
        self.handle.write(descriptors.astype(np.float16).tobytes())
        self.entries.append((item, self.rows, len(descriptors)))
        self.rows += len(descriptors)
        item.features.descriptors = None  # release: the cache holds them now

    def __iter__(self):
        self.handle.close()
        table = (np.memmap(self.path, np.float16, "r", shape=(self.rows, self.dim))
                 if self.rows else np.zeros((0, self.dim), np.float16))
        for item, offset, count in self.entries:
            item.features.descriptors = np.asarray(table[offset:offset + count], np.float32)
            yield item
