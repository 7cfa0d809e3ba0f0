"""The write path's pieces: staged segments and image rows, the commit, remove and copy.

`SegmentStream` turns extracted images into staged segments of at most SEGMENT_VECTORS rows
and their image rows (ids come at commit), so memory is bounded by a batch, not by the
collection; `commit` publishes segments and rows in one transaction (protocol: catalog.py),
waiting for other writers only there. Build and add are orchestrated once, in
orchestrator.py, for every executor; `remove_names` and `copy_index` commit here directly.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vladsearch.encoding.encoder import Encoder
from vladsearch.features.extraction import ExtractedImage
from vladsearch.store import catalog, migration, segments
from vladsearch.store.catalog import check_writable, disk_error, existing_build
from vladsearch.store.moves import file_sha1
from vladsearch.store.transaction import Changes, transaction
from vladsearch.version import __version__

# Images whose vectors are normalised and written together.
ADD_BATCH = 256
# Rows per segment before a new one starts (8,192-d float32: 1 GiB per 32,768 rows).
SEGMENT_VECTORS = 32_768


@dataclass
class Report:
    """What happened to the files of one build/add call."""

    indexed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, reason)
    not_images: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): a folder's other files
    no_keypoints: list[str] = field(default_factory=list)
    replaced: int = 0
    segments: int = 0

    def count(self, rows: list[dict[str, Any]]) -> None:
        """Count a stream's image rows: indexed, skipped (with the reason), without keypoints."""
        for row in rows:
            if row["status"] == catalog.STATUS_SKIPPED:
                self.skipped.append((row["path"], row["reason"]))
                continue
            self.indexed += 1
            if row["status"] == catalog.STATUS_NO_KEYPOINTS:
                self.no_keypoints.append(row["path"])
    renamed: int = 0   # moved files recognised by content hash (no extraction)


class SegmentStream:
    """Turns extracted images into staged segments and image rows (ids come at commit).

    staging: a `segments.Staging` (or a cluster worker's `segments.SharedStaging`);
    name_of: a file's path -> its indexed name. `staged` and `rows` are what a commit takes;
    `adopt` adds what another process staged for the same commit.
    """

    def __init__(self, staging: segments.Staging | segments.SharedStaging, encoder: Encoder, name_of) -> None:
        self.staging = staging
        self.encoder = encoder
        self.name_of = name_of
        self.rows: list[dict[str, Any]] = []
        self.staged: list[segments.StagedSegment] = []
        self.pending: list[tuple[ExtractedImage, np.ndarray]] = []
        self._segment: segments.SegmentWriter | None = None
        self.seconds = {"encode": 0.0, "write": 0.0}

    def segment(self) -> segments.SegmentWriter:
        if self._segment is None:
            p = self.encoder.params
            # dim None: set by the first vectors, since local features may arrive before PCA is fitted
            self._segment = self.staging.new_segment(None, self.encoder.feature_dim if p.keep_features
                                                     else None, p.keep_features or None, p.vector_dtype,
                                                     self.encoder.coder, self.encoder.descriptor_codec)
        return self._segment

    def arrive(self, item: ExtractedImage) -> None:
        """Record a failed file, or cache an image's local features in the segment it will land in."""
        if item.features is None:
            self.rows.append({"path": self.name_of(item.path), "status": catalog.STATUS_SKIPPED,
                              "reason": item.error or "unknown error"})
        elif self.encoder.params.keep_features and (self.encoder.descriptor_codec is not None
                                                    or not self.encoder.params.feature_codes):
            item.feature_rows = self.segment().append_features(item.features)
        # else: a compact cache before its codes are trained: cached once they are (orchestrator.train)

    def queue(self, item: ExtractedImage, raw: np.ndarray | None = None) -> None:
        """Reduce an image to its raw VLAD at once (its descriptors are freed); write in batches."""
        t0 = time.perf_counter()
        if raw is None:
            raw = self.encoder.raw_vlads([item.features.descriptors])[0]
        item.features.descriptors = None
        self.pending.append((item, raw))
        self.seconds["encode"] += time.perf_counter() - t0
        if len(self.pending) >= ADD_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        t0 = time.perf_counter()
        vectors = self.encoder.finish(np.stack([raw for _, raw in self.pending]))
        t1 = time.perf_counter()
        writer = self.segment()
        first = writer.append(vectors)
        for offset, (item, _) in enumerate(self.pending):
            self._record(item, writer.name, first + offset)
        self.pending.clear()
        if writer.rows >= SEGMENT_VECTORS:
            self.staged.append(writer.finish())
            self._segment = None
        self.seconds["encode"] += t1 - t0
        self.seconds["write"] += time.perf_counter() - t1

    def _record(self, item: ExtractedImage, segment: str, row: int) -> None:
        name = self.name_of(item.path)
        status = catalog.STATUS_INDEXED if len(item.features) else catalog.STATUS_NO_KEYPOINTS
        width, height = item.features.image_size
        offset, count = item.feature_rows or (None, None)
        self.rows.append({"path": name, "status": status,
                          "reason": "no keypoints detected" if status == catalog.STATUS_NO_KEYPOINTS else None,
                          "file_size": item.file_size, "mtime": item.mtime, "sha1": item.sha1, "width": width,
                          "height": height, "keypoints": len(item.features), "segment": segment, "row": row,
                          "feat_offset": offset, "feat_count": count})

    def adopt(self, staged: list[segments.StagedSegment], rows: list[dict[str, Any]]) -> None:
        """Add segments that another process staged in this writer's staging area, and their rows."""
        self.staged += staged
        self.rows += rows

    def finish(self) -> list[segments.StagedSegment]:
        self.flush()
        if self._segment is not None:
            if self._segment.rows:
                self.staged.append(self._segment.finish())
            else:
                self._segment.abort()
            self._segment = None
        return self.staged


# --- build ------------------------------------------------------------------------------
def build_meta(encoder: Encoder, index_dir: Path, root: Path) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return {"format": catalog.FORMAT_NAME, "format_version": catalog.FORMAT_VERSION, "created_by": __version__,
            "created": now, "build_id": uuid.uuid4().hex, "params": vars(encoder.params),
            "features": encoder.feature_config, "weights_path": encoder.weights, "dim": encoder.dim,
            **catalog.root_meta(index_dir, root)}


def prepare_directory(index_dir: Path, force: bool) -> None:
    check_writable(index_dir)
    previous = existing_build(index_dir)
    if previous is not None and not force:
        raise FileExistsError(f"{index_dir} already holds an index (of {previous.get('root')}); pass --force to "
                              f"replace it, or use `vladsearch add {index_dir} PHOTOS` to extend it")
    if previous is None and index_dir.exists() and any(index_dir.iterdir()) \
            and not catalog.catalog_path(index_dir).exists():
        raise FileExistsError(f"{index_dir} exists and is not a vladsearch index; choose another --index path")
    index_dir.mkdir(parents=True, exist_ok=True)
    if (index_dir / "manifest.json").exists():  # a format-1 index being replaced
        migration.remove_format1(index_dir)
    catalog.connect(index_dir, create=True).close()
    (index_dir / catalog.READERS_LOCK).touch()


def commit(index_dir: Path, staged: list[segments.StagedSegment], rows: list[dict[str, Any]], report: Report,
           kind: str, build_id: str | None = None, replace: dict[str, Any] | None = None,
           meta: dict[str, Any] | None = None) -> None:
    """One transaction: publish segments, insert image rows (replacing older versions of a file).

    build_id: the build this writer encoded for; the commit fails if a rebuild replaced it.
    replace: for a build, {"meta": …, "blobs": …} replacing the whole previous content;
    meta: entries to update (e.g. where the photos are now).
    """
    with transaction(index_dir, kind) as tx:
        if replace is None:
            current = catalog.read_meta(tx.db).get("build_id")
            if build_id is not None and current != build_id:
                raise RuntimeError("the index was rebuilt while this command ran; nothing was added: run it again")
        else:
            tx.clear()
            tx.write_meta(replace["meta"])
            for name, data in replace["blobs"].items():
                tx.write_blob(name, data)
        tx.publish(staged)
        _insert_rows(tx, rows, report)
        tx.write_meta(meta or {})
        tx.touch()
        tx.added, tx.removed = report.indexed, report.replaced
    report.segments = len(staged)


def _insert_rows(tx: Changes, rows: list[dict[str, Any]], report: Report) -> None:
    new_rows = []
    for row in rows:
        existing = catalog.find_image(tx.db, row["path"])
        if existing is not None:
            if row["status"] == catalog.STATUS_SKIPPED and existing["status"] != catalog.STATUS_SKIPPED:
                continue  # a file that fails now keeps the vector it had
            if row["status"] != catalog.STATUS_SKIPPED and existing["status"] != catalog.STATUS_SKIPPED \
                    and existing["sha1"] == row["sha1"]:
                report.indexed -= 1  # another writer committed this very file meanwhile
                report.unchanged += 1
                report.no_keypoints = [n for n in report.no_keypoints if n != row["path"]]
                continue
            if existing["status"] != catalog.STATUS_SKIPPED:
                report.replaced += 1
            tx.delete_images([existing])
        new_rows.append(row)
    tx.insert_images(new_rows)


# --- add and remove ---------------------------------------------------------------------
def unchanged(row: dict[str, Any] | None, path: Path) -> bool:
    """Whether an indexed row still describes the file (size and mtime, else content hash)."""
    if row is None or row["status"] == catalog.STATUS_SKIPPED:
        return False
    stat = os.stat(path)
    if row["file_size"] != stat.st_size:
        return False
    if row["mtime"] == stat.st_mtime:
        return True
    return file_sha1(path) == row["sha1"]  # copied or moved files keep their bytes, not their mtime


def remove_names(index_dir: Path, names: list[str]) -> list[str]:
    """Delete images by indexed name in one commit; returns the names that were not indexed."""
    check_writable(index_dir)
    with transaction(index_dir, "remove") as tx:
        rows = [catalog.find_image(tx.db, name) for name in names]
        found = [r for r in rows if r is not None]
        tx.delete_images(found)
        tx.removed, tx.record = len(found), bool(found)
        if found:
            tx.touch()
    return [name for name, row in zip(names, rows) if row is None]


def rename_names(index_dir: Path, moves: dict[str, str]) -> int:
    """Change indexed names old → new in one commit (ids, vectors, features and hashes stay).

    Returns the number renamed; raises ValueError, renaming nothing, for an old name not
    indexed or a new name that already is (catalog.rename_images).
    """
    check_writable(index_dir)
    with transaction(index_dir, "rename") as tx:
        count = catalog.rename_images(tx.db, moves)
        tx.record = count > 0
        if count:
            tx.touch()
    return count


def copy_index(source_dir: Path, table: sqlite3.Connection, target: Path, force: bool, root: Path) -> None:
    """Copy the committed state in `table` (a snapshot's catalog) and its segments to `target`."""
    prepare_directory(target, force)
    meta = catalog.read_meta(table)
    meta.update(catalog.root_meta(target, root), build_id=uuid.uuid4().hex, next_id=0)
    blobs = {name: bytes(data) for name, data in table.execute("SELECT name, data FROM blobs")}
    rows = [{k: v for k, v in r.items() if k != "id"} for r in catalog.image_rows(table)]
    try:
        with segments.Staging(target) as staging:
            staged = [segments.copy_segment(source_dir, s, staging.directory) for s in catalog.live_segments(table)]
            commit(target, staged, rows, Report(), "build", replace={"meta": meta, "blobs": blobs})
    except OSError as exc:
        raise disk_error(target, exc) from None
