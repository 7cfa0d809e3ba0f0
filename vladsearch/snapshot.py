"""What a reader sees: one committed state of an index, loaded for searching.

A `Snapshot` copies the catalog into memory in one read transaction and opens the files of
every segment it names, under the shared readers lock (catalog.py states the protocol),
so a commit or a merge that happens meanwhile can neither show half of itself nor delete
a file under it. The live vectors of all segments go into one faiss index: a search over
twenty segments costs what a search over one does. `refresh()` moves to the newest commit
and loads only what changed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from vladsearch import catalog, segments
from vladsearch.feature_store import FeatureStore
from vladsearch.index_backend import FaissBackend

TEMPLATE_BLOB = "template.faiss"


def _copy_catalog(index_dir: Path) -> sqlite3.Connection:
    """The whole catalog as of its last commit, in memory (SQLite's backup: one read transaction)."""
    source = catalog.connect(index_dir, readonly=True)
    memory = sqlite3.connect(":memory:", check_same_thread=False)
    try:
        source.backup(memory)
    except sqlite3.DatabaseError as exc:
        raise catalog.IndexDamagedError(f"cannot read the catalog of {index_dir} ({exc}); run "
                                        f"`vladsearch check {index_dir}`") from None
    finally:
        source.close()
    return memory


class Snapshot:
    """A consistent, searchable view of one commit: image table, vectors, feature caches."""

    def __init__(self, index_dir: Path, dim: int, feature_dim: int | None = None, factory: str = "Flat") -> None:
        self.index_dir = Path(index_dir)
        self.dim = dim
        self.feature_dim = feature_dim
        self.factory = factory
        self.table: sqlite3.Connection | None = None
        self.backend: FaissBackend | None = None
        self.features: dict[str, FeatureStore] = {}
        self.loaded_ids = np.zeros(0, np.int64)
        self.commit_seq = -1

    def refresh(self) -> bool:
        """Move to the newest commit; returns False when nothing was committed since."""
        with catalog.readers_lock(self.index_dir):
            if self.table is not None:
                probe = catalog.connect(self.index_dir, readonly=True)
                try:
                    seq, _ = catalog.last_commit(probe)
                finally:
                    probe.close()
                if seq == self.commit_seq:
                    return False
            table = _copy_catalog(self.index_dir)
            seq, _ = catalog.last_commit(table)
            live = catalog.live_segments(table)
            vectors = {s["name"]: segments.open_vectors(self.index_dir, s["name"], self.dim, s["vectors"]) for s in live}
            stores = {s["name"]: self.features.get(s["name"]) or segments.open_features(
                self.index_dir, s["name"], self.feature_dim) for s in live if s["features"] and self.feature_dim}
        self._apply(table, live, vectors)
        self.table, self.features, self.commit_seq = table, stores, seq
        return True

    def _apply(self, table: sqlite3.Connection, live: list[dict[str, Any]], vectors: dict[str, np.ndarray]) -> None:
        """Make the faiss index hold exactly the snapshot's live vectors, adding only new ones."""
        if self.backend is None:
            template = catalog.read_blob(table, TEMPLATE_BLOB)
            self.backend = FaissBackend.from_bytes(template, self.factory) if template \
                else FaissBackend.create(self.dim, self.factory)
        ids_now = np.fromiter((i for (i,) in table.execute("SELECT id FROM images WHERE segment IS NOT NULL")),
                              np.int64)
        gone = np.setdiff1d(self.loaded_ids, ids_now, assume_unique=True)
        if len(gone):
            self.backend.remove(gone)
        loaded = self.loaded_ids[np.isin(self.loaded_ids, ids_now, assume_unique=True)]
        added = [loaded]
        for segment in live:
            rows = np.array(table.execute("SELECT id, row FROM images WHERE segment = ? ORDER BY row",
                                          (segment["name"],)).fetchall(), np.int64).reshape(-1, 2)
            new = rows[~np.isin(rows[:, 0], loaded)]
            if len(new) == 0:
                continue
            if new[:, 1].max() >= segment["vectors"]:
                raise catalog.IndexDamagedError(f"the catalog names row {new[:, 1].max()} of segment "
                                                f"{segment['name']}, which holds {segment['vectors']}")
            self.backend.add(np.asarray(vectors[segment["name"]][new[:, 1]], np.float32), new[:, 0])
            added.append(new[:, 0])
        self.loaded_ids = np.sort(np.concatenate(added))

    # --- what the read path asks --------------------------------------------------
    def paths_of(self, ids) -> dict[int, str]:
        return {row["id"]: row["path"] for row in catalog.images_by_id(self.table, ids)}

    def rows_of(self, ids) -> dict[int, dict[str, Any]]:
        return {row["id"]: row for row in catalog.images_by_id(self.table, ids)}

    def cached_features(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """An image's cached (keypoints, descriptors), or None when its segment keeps none."""
        store = self.features.get(row["segment"])
        if store is None or row["feat_count"] is None:
            return None
        return store.get(row["feat_offset"], row["feat_count"])

    def search(self, xq: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """faiss-style: xq nq×dim float32 -> (D nq×k scores, I nq×k image ids, -1 padded)."""
        return self.backend.search(np.ascontiguousarray(xq, np.float32), min(k, max(self.backend.ntotal, 1)), nprobe)
