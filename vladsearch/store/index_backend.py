"""The nearest-neighbour index behind `Index`: faiss, chosen by a factory string.

"Flat" (default) is exact inner-product search; any faiss factory string
("IVF1024,Flat", "IVF4096,PQ32", "HNSW32", "PCA256,IVF1024,PQ32", …) gives a compressed
or approximate index for large collections. Vectors carry the image-table ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _faiss():
    import faiss

    return faiss


class FaissBackend:
    """A faiss index with ids, inner-product metric."""

    def __init__(self, index, factory: str) -> None:
        self.index = index
        self.factory = factory

    @classmethod
    def create(cls, dim: int, factory: str = "Flat") -> FaissBackend:
        faiss = _faiss()
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ValueError(
                f"invalid faiss index factory string {factory!r} for {dim}-d vectors "
                f"(examples: 'Flat', 'IVF256,Flat', 'IVF1024,PQ32', 'HNSW32'): {str(exc).splitlines()[0]}"
            ) from None
        # Flat and HNSW store vectors by position: wrap them so that ids and removal work.
        if not isinstance(index, faiss.IndexIVF) and not isinstance(index, faiss.IndexIDMap):
            index = faiss.IndexIDMap2(index)
        return cls(index, factory)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def train(self, xb: np.ndarray) -> None:
        """Train quantisers when the factory needs it (IVF, PQ); a no-op for Flat."""
        if self.index.is_trained:
            return
        needed = getattr(_faiss().extract_index_ivf(self.index), "nlist", 1) if self._is_ivf() else 1
        if len(xb) < needed:
            raise ValueError(
                f"the index type {self.factory!r} needs at least {needed} training vectors but the "
                f"training set has {len(xb)} images: raise --codebook-images or use fewer IVF lists"
            )
        self.index.train(np.ascontiguousarray(xb, np.float32))

    def _is_ivf(self) -> bool:
        try:
            _faiss().extract_index_ivf(self.index)
            return True
        except RuntimeError:
            return False

    def add(self, xb: np.ndarray, ids: np.ndarray) -> None:
        if len(xb):
            self.index.add_with_ids(np.ascontiguousarray(xb, np.float32), np.ascontiguousarray(ids, np.int64))

    def remove(self, ids: np.ndarray) -> int:
        return int(self.index.remove_ids(np.ascontiguousarray(ids, np.int64)))

    def search(self, xq: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """xq nq×d float32 -> (D nq×k similarities, I nq×k ids; -1 where fewer than k).

        nprobe: IVF lists visited (more is slower and more exact); ignored by other indexes.
        """
        if nprobe is not None and self._is_ivf():
            _faiss().extract_index_ivf(self.index).nprobe = nprobe
        return self.index.search(xq, k)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of `ids`: len(ids) × d float32 (exact for Flat, decoded for PQ)."""
        try:
            return np.stack([self.index.reconstruct(int(i)) for i in ids]).astype(np.float32)
        except RuntimeError as exc:
            raise ValueError(f"the {self.factory!r} index cannot return stored vectors, which query expansion "
                             f"needs; build with --factory Flat or HNSW32 ({str(exc).splitlines()[0]})") from None

    def to_bytes(self) -> bytes:
        """The index serialised (faiss's own format), e.g. to keep a trained, empty template."""
        return _faiss().serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, factory: str = "") -> FaissBackend:
        return cls(_faiss().deserialize_index(np.frombuffer(data, np.uint8)), factory)

    def save(self, path: Path) -> None:
        _faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, factory: str = "") -> FaissBackend:
        return cls(_faiss().read_index(str(path)), factory)
