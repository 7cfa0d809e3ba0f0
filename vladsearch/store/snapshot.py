"""What a reader sees: one committed state of an index, loaded for searching.

A `Snapshot` reads, in one read transaction of the catalog and under the shared readers
lock (catalog.py states the protocol), which segments are live and where every live image
sits (segment, row, cached-feature rows), and opens those segments' files; so a commit or
a merge that happens meanwhile can neither show half of itself nor delete a file under it.
Where each image lives is kept in one numpy array (40 bytes per image); names and other
metadata are looked up in the catalog when a result needs them (ids are never reused, so
an id names the same image for ever, or nothing once it is deleted).

Two kinds of in-memory index:
- exact (default): every live vector in one faiss index (a search over twenty segments
  costs what a search over one does);
- compact codes (`--preset large`, encoding/compact_codes.py): an IVF-PQ code per image in RAM; the
  `refine` best candidates are re-scored exactly with the full vectors, memory-mapped from
  the segments.
`refresh()` moves to the newest commit; the in-memory index is filled on the first search
(or `backend` access) after it, with only what changed. Whole-collection verbs that never
search through it (`duplicates` on a large exact index, collection/knn.py) never pay for it.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from vladsearch.encoding.compact_codes import CoarseCodes
from vladsearch.store import catalog, segments
from vladsearch.store.feature_store import FeatureStore
from vladsearch.store.index_backend import FaissBackend

TEMPLATE_BLOB = "template.faiss"
CODES_BLOB = "coarse.npz"
# Bytes of the locations per image: one int64 row of id, segment index, row, feature offset, count
# (`loaded_ids`, `_where` and the backend's ids are views of it).
LOCATION_BYTES = 5 * 8


class Snapshot:
    """A consistent, searchable view of one commit: vectors (or codes), locations, feature caches."""

    def __init__(self, index_dir: Path, dim: int, feature_dim: int | None = None, factory: str = "Flat",
                 vector_dtype: str = "float32", refine: int = 0, feature_codec=None) -> None:
        self.index_dir = Path(index_dir)
        self.dim = dim
        self.feature_dim = feature_dim
        self.factory = factory
        self.vector_dtype = vector_dtype
        self.refine = refine
        self.feature_codec = feature_codec
        self.db: sqlite3.Connection | None = None
        self._backend: FaissBackend | None = None
        self._backend_ids = np.zeros(0, np.int64)  # ids whose vectors (codes) the backend holds
        self._backend_lock = threading.Lock()
        self._pending: tuple | None = None  # (live, located, files, segment names) not yet in the backend
        self.coder: CoarseCodes | None = None
        self.features: dict[str, FeatureStore] = {}
        self.vectors: dict[str, np.ndarray] = {}
        self.segment_names: list[str] = []
        self.loaded_ids = np.zeros(0, np.int64)
        self._where = np.zeros((0, 4), np.int64)  # per loaded id: segment index, row, feature offset, count
        self.commit_seq = -1

    @property
    def backend(self) -> FaissBackend | None:
        """The in-memory faiss index of this commit's vectors (codes), brought up to date on use."""
        if self._pending is not None:
            self._sync_backend()
        return self._backend

    @backend.setter
    def backend(self, value: FaissBackend) -> None:
        self._backend, self._pending = value, None

    @property
    def table(self) -> sqlite3.Connection:
        """The catalog (read-only) for metadata lookups."""
        return self.db

    # --- loading ------------------------------------------------------------------
    def refresh(self) -> bool:
        """Move to the newest commit; returns False when nothing was committed since."""
        if self.db is None:
            self.db = catalog.connect(self.index_dir, readonly=True)
        with catalog.readers_lock(self.index_dir):
            self.db.execute("BEGIN")
            try:
                seq, _ = catalog.last_commit(self.db)
                if seq == self.commit_seq:
                    return False
                live = catalog.live_segments(self.db)
                located = self._locations()
                if self._backend is None:
                    self._create_backend()
                code_size = self.coder.code_size if self.coder is not None else 0
                files = {s["name"]: (self.vectors.get(s["name"]) if s["name"] in self.vectors else
                                     segments.open_vectors(self.index_dir, s["name"], self.dim, s["vectors"],
                                                           self.vector_dtype),
                                     segments.open_codes(self.index_dir, s["name"], s["vectors"], code_size)
                                     if code_size else None) for s in live}
                stores = {s["name"]: self.features.get(s["name"]) or segments.open_features(
                    self.index_dir, s["name"], self.feature_dim, self.feature_codec)
                    for s in live if s["features"] and self.feature_dim}
            finally:
                self.db.execute("COMMIT")
        self._apply(live, located, files)
        self.features, self.commit_seq = stores, seq
        return True

    def _locations(self) -> np.ndarray:
        """Every live image with a vector: rows of (id, segment name index, row, feat offset, feat count)."""
        names = {name: i for i, (name,) in enumerate(self.db.execute("SELECT name FROM segments ORDER BY name"))}
        self._all_segment_names = list(names)
        count = self.db.execute("SELECT COUNT(*) FROM images WHERE segment IS NOT NULL").fetchone()[0]
        out = np.empty((count, 5), np.int64)
        cursor = self.db.execute("SELECT id, segment, row, COALESCE(feat_offset, -1), COALESCE(feat_count, -1) "
                                 "FROM images WHERE segment IS NOT NULL ORDER BY id")
        filled = 0
        while chunk := cursor.fetchmany(65536):
            block = np.array([(i, names[s], r, o, c) for i, s, r, o, c in chunk], np.int64).reshape(-1, 5)
            out[filled:filled + len(block)] = block
            filled += len(block)
        return out[:filled]

    def _create_backend(self) -> None:
        codes = catalog.read_blob(self.db, CODES_BLOB)
        if codes is not None:
            self.coder = CoarseCodes.from_bytes(codes)
            self.backend = FaissBackend(self.coder.empty_index(), "codes")
            return
        template = catalog.read_blob(self.db, TEMPLATE_BLOB)
        self.backend = FaissBackend.from_bytes(template, self.factory) if template \
            else FaissBackend.create(self.dim, self.factory)

    def _apply(self, live: list[dict[str, Any]], located: np.ndarray, files: dict) -> None:
        """Adopt a commit's state; the backend catches up on its next use (`_sync_backend`)."""
        self.vectors = {name: pair[0] for name, pair in files.items()}
        self.segment_names = self._all_segment_names
        self.loaded_ids = located[:, 0]
        self._where = located[:, 1:]
        self._pending = (live, located, files, self.segment_names)

    def _sync_backend(self) -> None:
        """Make the in-memory index hold exactly the live vectors, adding only new ones."""
        with self._backend_lock:
            pending = self._pending
            if pending is None:
                return
            live, located, files, names = pending
            ids_now = located[:, 0]
            gone = np.setdiff1d(self._backend_ids, ids_now, assume_unique=True)
            if len(gone):
                self._backend.remove(gone)
            known = np.isin(ids_now, self._backend_ids, assume_unique=True)
            for segment in live:
                index = names.index(segment["name"])
                new = located[(located[:, 1] == index) & ~known]
                if len(new) == 0:
                    continue
                if new[:, 2].max() >= segment["vectors"]:
                    raise catalog.IndexDamagedError(f"the catalog names row {new[:, 2].max()} of segment "
                                                    f"{segment['name']}, which holds {segment['vectors']}")
                vectors, codes = files[segment["name"]]
                if self.coder is not None:
                    self._backend.index.add_sa_codes(np.ascontiguousarray(codes[new[:, 2]]), new[:, 0])
                else:
                    self._backend.add(np.asarray(vectors[new[:, 2]], np.float32), new[:, 0])
            self._backend_ids = ids_now
            if self._pending is pending:  # else a newer commit arrived meanwhile: caught up on next use
                self._pending = None

    # --- what the read path asks --------------------------------------------------
    def location(self, ids) -> np.ndarray:
        """(segment index, row, feat offset, feat count) per id; -1 rows for ids not in this snapshot."""
        ids = np.asarray(ids, np.int64)
        at = np.searchsorted(self.loaded_ids, ids)
        at = np.minimum(at, max(len(self.loaded_ids) - 1, 0))
        found = (len(self.loaded_ids) > 0) & (self.loaded_ids[at] == ids) if len(self.loaded_ids) else \
            np.zeros(len(ids), bool)
        out = np.full((len(ids), 4), -1, np.int64)
        out[found] = self._where[at[found]]
        return out

    def paths_of(self, ids) -> dict[int, str]:
        return {row["id"]: row["path"] for row in catalog.images_by_id(self.db, ids)}

    def rows_of(self, ids) -> dict[int, dict[str, Any]]:
        """Image rows, with segment/row/feature rows as of this snapshot (the files it opened)."""
        rows = {row["id"]: row for row in catalog.images_by_id(self.db, ids)}
        for image_id, (seg, row, offset, count) in zip(rows, self.location(list(rows))):
            if seg >= 0:
                rows[image_id].update(segment=self.segment_names[seg], row=int(row),
                                      feat_offset=None if offset < 0 else int(offset),
                                      feat_count=None if count < 0 else int(count))
        return rows

    def has_cached_features(self, row: dict[str, Any]) -> bool:
        """Whether `cached_features(row)` finds the image's features (without reading them)."""
        return self.feature_rows(row) is not None

    def feature_rows(self, row: dict[str, Any]) -> tuple[FeatureStore, int, int] | None:
        """(store, first row, count) of an image's cached features, read nothing; None without a cache."""
        store = self.features.get(row["segment"])
        if store is None or row["feat_count"] is None:
            return None
        return store, row["feat_offset"], row["feat_count"]

    def cached_features(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """An image's cached (keypoints, descriptors), or None when its segment keeps none."""
        where = self.feature_rows(row)
        return None if where is None else where[0].get(*where[1:])

    def full_vectors(self, ids) -> np.ndarray:
        """The stored vectors of `ids` (len × dim float32) from the segments; zeros for unknown ids."""
        where = self.location(ids)
        out = np.zeros((len(where), self.dim), np.float32)
        for seg in np.unique(where[:, 0]):
            if seg < 0:
                continue
            pick = where[:, 0] == seg
            rows = where[pick, 1]
            order = np.argsort(rows)
            block = np.asarray(self.vectors[self.segment_names[seg]][rows[order]], np.float32)
            out[np.flatnonzero(pick)[order]] = block
        return out

    def reconstruct(self, ids) -> np.ndarray:
        """Stored vectors of `ids`, from the segment files (exact for every factory, and the
        in-memory index is not filled for it); a format 1 index has only its faiss index."""
        if self.coder is not None or self.vectors:
            return self.full_vectors(ids)
        return self.backend.reconstruct(np.asarray(ids, np.int64))

    def search(self, xq: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """faiss-style: xq nq×dim float32 -> (D nq×k scores, I nq×k image ids, -1 padded)."""
        xq = np.ascontiguousarray(xq, np.float32)
        k = min(k, max(self.backend.ntotal, 1))
        if self.coder is None:
            return self.backend.search(xq, k, nprobe)
        ivf = self.backend.index
        if nprobe is not None:
            ivf.nprobe = nprobe
        candidates = min(max(self.refine, k), max(self.backend.ntotal, 1))
        _, I = ivf.search(self.coder.project(xq), candidates)
        D_out = np.full((len(xq), k), -np.inf, np.float32)
        I_out = np.full((len(xq), k), -1, np.int64)
        # Small products, one query at a time: BLAS threads would only spin (measured: 8 ms
        # per query on one thread, 43 ms with two on 2 busy cores).
        with threadpool_limits(1, user_api="blas"):
            for q in range(len(xq)):  # exact scores of the candidates, from the full vectors on disk
                ids = I[q][I[q] >= 0]
                scores = self.full_vectors(ids) @ xq[q]
                order = np.argsort(-scores, kind="stable")[:k]
                D_out[q, :len(order)], I_out[q, :len(order)] = scores[order], ids[order]
        return D_out, I_out

    def ram_bytes_per_image(self) -> float:
        """Marginal RAM per indexed image: what the in-memory index and the location arrays hold."""
        per_vector = (self.coder.ivf_.code_size + 8) if self.coder is not None else 4 * self.dim + 8
        return float(per_vector + LOCATION_BYTES)
