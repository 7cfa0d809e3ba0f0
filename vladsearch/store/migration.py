"""Format 1 indexes (vladsearch 0.1): read as they are, migrated to format 2 on the first write.

    my.vlad/                 (format 1)
      manifest.json          format, version, parameters, counts; names the generation
      gen-00000002/          codebook.npy, pca.npz, index.faiss (ids = image ids), images.sqlite
      features-<id>/         optional local-feature cache (rows named by images.sqlite)

Migration (`migrate`, run by add/remove/compact) writes one segment holding every vector,
and a catalog holding the image table, under staging names; renaming the catalog into
place is its commit. A crash before that leaves the format 1 index as it was; after it,
the format 1 files are leftovers that the migration (or the next writer) deletes.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from vladsearch.encoding.encoder import BuildParams, Encoder
from vladsearch.store import catalog, segments
from vladsearch.store.feature_store import FeatureStore
from vladsearch.store.index_backend import FaissBackend
from vladsearch.store.snapshot import TEMPLATE_BLOB, Snapshot

MANIFEST = "manifest.json"
V1_COLUMNS = ("id", "path", "status", "reason", "file_size", "mtime", "sha1", "width", "height",
              "keypoints", "feat_offset", "feat_count")
LEGACY_SEGMENT = "seg-format1"


def is_format1(index_dir: Path) -> bool:
    return (Path(index_dir) / MANIFEST).is_file() and not catalog.catalog_path(index_dir).exists()


def read_manifest(index_dir: Path) -> dict[str, Any]:
    path = Path(index_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise catalog.IndexFormatError(f"{path} is corrupt ({exc}); rebuild the index") from None
    if manifest.get("format") != catalog.FORMAT_NAME:
        raise catalog.IndexFormatError(f"{index_dir} is not a vladsearch index (format {manifest.get('format')!r})")
    if manifest.get("format_version") != 1:
        raise catalog.IndexFormatError(
            f"{index_dir} was written in index format version {manifest.get('format_version')} (by vladsearch "
            f"{manifest.get('created_by', '?')}); this vladsearch reads versions 1 and {catalog.FORMAT_VERSION}. "
            "Rebuild it with `vladsearch build --force`, or use the vladsearch version that wrote it.")
    return manifest


class Format1Snapshot(Snapshot):
    """A format 1 index loaded in the shape of a snapshot (it never changes until migrated)."""

    def __init__(self, index_dir: Path, manifest: dict[str, Any], dim: int, feature_dim: int | None) -> None:
        super().__init__(index_dir, dim, feature_dim, manifest["params"].get("factory", "Flat"))
        self.manifest = manifest

    def refresh(self) -> bool:
        if self.db is not None:
            return False
        data = self.index_dir / self.manifest["generation"]
        try:
            self.backend = FaissBackend.load(data / "index.faiss", self.factory)
        except RuntimeError as exc:
            raise catalog.IndexDamagedError(f"{data / 'index.faiss'} is damaged ({str(exc).splitlines()[0]}); "
                                            "rebuild the index") from None
        self.db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self.db.executescript(catalog.SCHEMA)
        source = sqlite3.connect(f"file:{data / 'images.sqlite'}?mode=ro", uri=True)
        try:
            rows = source.execute(f"SELECT {', '.join(V1_COLUMNS)} FROM images").fetchall()
        except sqlite3.DatabaseError as exc:
            raise catalog.IndexDamagedError(f"{data / 'images.sqlite'} is damaged ({exc}); rebuild the index") from None
        finally:
            source.close()
        for row in rows:
            values = dict(zip(V1_COLUMNS, row))
            indexed = values["status"] != catalog.STATUS_SKIPPED
            catalog.insert_image(self.db, {**values, "segment": LEGACY_SEGMENT if indexed else None,
                                              "row": None})
        cache = self.manifest.get("feature_store")
        if cache and self.feature_dim:
            self.features = {LEGACY_SEGMENT: FeatureStore(self.index_dir / cache["dir"], cache["dim"], mode="r",
                                                          committed_rows=cache["rows"])}
        located = sorted((r[0], 0, -1, -1 if r[10] is None else r[10], -1 if r[11] is None else r[11])
                         for r in rows if r[2] != catalog.STATUS_SKIPPED)
        located = np.array(located, np.int64).reshape(-1, 5)
        self.loaded_ids, self._where, self.segment_names = located[:, 0], located[:, 1:], [LEGACY_SEGMENT]
        self.commit_seq = 0
        return True


def open_format1(index_class, path: Path, weights: str | None, root: str | os.PathLike | None):
    manifest = read_manifest(path)
    data = path / manifest["generation"]
    params = BuildParams.from_dict(manifest["params"])
    encoder = Encoder(params, manifest["features"], weights or manifest.get("weights_path"))
    encoder.load_blobs((data / "codebook.npy").read_bytes(),
                       (data / "pca.npz").read_bytes() if (data / "pca.npz").exists() else None)
    meta = {**manifest, "root_relative": None, "updated": manifest.get("updated")}
    feature_dim = encoder.feature_dim if params.keep_features else None
    snapshot = Format1Snapshot(path, manifest, encoder.dim, feature_dim)
    snapshot.refresh()
    return index_class(path, encoder, meta, Path(root) if root else None, snapshot=snapshot)


def migrate(index_dir: Path, index) -> None:
    """Rewrite a format 1 index as format 2 (module docstring); `index` is it, opened."""
    snapshot: Format1Snapshot = index.snapshot
    rows = catalog.image_rows(snapshot.db)
    staged = []
    with segments.Staging(index_dir) as staging:
        has_features = bool(snapshot.features)
        seg = segments.SegmentWriter(staging.directory / LEGACY_SEGMENT, index.encoder.dim,
                                     index.encoder.feature_dim if has_features else None, None)
        vector_rows = [r for r in rows if r["segment"] is not None]
        if vector_rows:
            vectors = _stored_vectors(snapshot.backend, [r["id"] for r in vector_rows])
            seg.append(vectors)
        for position, row in enumerate(vector_rows):
            row["row"] = position
            if has_features and row["feat_count"] is not None:
                keypoints, descriptors = snapshot.features[LEGACY_SEGMENT].get(row["feat_offset"], row["feat_count"])
                order = -np.arange(len(keypoints), dtype=np.float32)
                from vladsearch.features.base import Features

                row["feat_offset"], row["feat_count"] = seg.features.append(
                    Features(keypoints, descriptors, order, (0, 0)), max_keypoints=None)
        staged.append(seg.finish())
        manifest = snapshot.manifest
        meta = {"format": catalog.FORMAT_NAME, "format_version": catalog.FORMAT_VERSION,
                "created_by": manifest.get("created_by"), "created": manifest.get("created", {}).get("time")
                if isinstance(manifest.get("created"), dict) else manifest.get("created"),
                "build_id": os.urandom(16).hex(), "params": manifest["params"], "features": manifest["features"],
                "weights_path": manifest.get("weights_path"), "dim": index.encoder.dim,
                "timings": manifest.get("timings", {}), "migrated_from": 1,
                "next_id": max((r["id"] for r in rows), default=-1) + 1,
                **catalog.root_meta(index_dir, index.root)}
        template = None if snapshot.factory == "Flat" else _empty_clone(snapshot.backend)
        _write_catalog(index_dir, meta, {**index.encoder.blobs(), TEMPLATE_BLOB: template}, staged, rows)
    remove_format1(index_dir)


def _stored_vectors(backend: FaissBackend, ids: list[int]) -> np.ndarray:
    import faiss

    try:
        faiss.extract_index_ivf(backend.index).make_direct_map()
    except RuntimeError:
        pass
    return backend.reconstruct(np.asarray(ids, np.int64))


def _empty_clone(backend: FaissBackend) -> bytes | None:
    import faiss

    clone = faiss.clone_index(backend.index)
    try:
        clone.reset()
    except RuntimeError:
        return None
    return FaissBackend(clone, backend.factory).to_bytes()


def _write_catalog(index_dir: Path, meta: dict, blobs: dict, staged: list, rows: list[dict]) -> None:
    """Create the format 2 catalog under a temporary name, publish the segment, rename: the commit
    (a new catalog file, so not a `transaction.transaction` on a live one; its rows are written
    by the same catalog functions)."""
    building = index_dir / "catalog.sqlite.migrating"
    building.unlink(missing_ok=True)
    db = sqlite3.connect(building, isolation_level=None)
    try:
        db.executescript(catalog.SCHEMA)
        db.execute("BEGIN")
        catalog.write_meta(db, meta)
        for name, data in blobs.items():
            catalog.write_blob(db, name, data)
        for row in rows:
            catalog.insert_image(db, row)
        catalog.insert_segments(db, staged)
        catalog.record_commit(db, "migrate", len(rows), 0, len(staged))
        db.execute("COMMIT")
    finally:
        db.close()
    with open(building, "rb+") as handle:
        os.fsync(handle.fileno())
    segments.publish(index_dir, staged)
    os.replace(building, catalog.catalog_path(index_dir))
    segments.fsync_dir(index_dir)
    (index_dir / catalog.READERS_LOCK).touch()


def remove_format1(index_dir: Path) -> None:
    """Delete format 1 files (manifest first, so that the directory never looks like a half index)."""
    (Path(index_dir) / MANIFEST).unlink(missing_ok=True)
    for stale in list(Path(index_dir).glob("gen-*")) + list(Path(index_dir).glob("features-*")):
        shutil.rmtree(stale, ignore_errors=True)
    (Path(index_dir) / "catalog.sqlite.migrating").unlink(missing_ok=True)
