"""The service's engine: one warm index that follows commits, searched and changed through the Python API.

- Searches run on a `WorkQueue` of `workers` threads (SIFT, faiss and numpy release the
  GIL, so threads use every core), each with `workers=1` inside the index: no process pool
  is forked from this threaded process.
- Adds and removes run one at a time on their own queue, through a second `Index` object
  that never loads a snapshot (so a write never touches the snapshot being searched);
  other processes may write at the same time (the index's commit protocol orders them).
- A follower thread polls the catalog's commit number every `refresh_interval` seconds and
  moves the searched snapshot to a newer commit under the exclusive side of a
  `ReadWriteLock`; searches hold its shared side, so none ever sees half a refresh.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vladsearch.features.extraction import keep_freed_memory
from vladsearch.index import Index
from vladsearch.io.images import ImageError, decode_gray
from vladsearch.query.search import SearchOptions
from vladsearch.server.concurrency import ReadWriteLock, WorkQueue
from vladsearch.server.errors import ServiceError
from vladsearch.server.files import (
    UPLOADS,
    ThumbnailCache,
    check_indexed_name,
    resolve_indexed,
    resolve_inside,
    upload_name,
    write_new,
)
from vladsearch.store import catalog

log = logging.getLogger("vladsearch.server")


@dataclass
class Limits:
    """What one request may cost. max_upload_bytes: a request body; max_pixels: an uploaded image, from
    its header; max_files: images in one POST /api/images; thumbnail_side: pixels."""

    max_upload_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_files: int = 64
    thumbnail_side: int = 256


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Engine:
    """One open index, its work queues and its follower; every method is blocking (run them on a queue)."""

    def __init__(self, index_dir: str | os.PathLike, *, workers: int | None = None, waiting: int = 32,
                 limits: Limits | None = None, refresh_interval: float = 1.0, weights: str | None = None,
                 root: str | os.PathLike | None = None) -> None:
        self.limits = limits or Limits()
        self.refresh_interval = refresh_interval
        self._weights, self._root = weights, root
        keep_freed_memory()  # queries are extracted in this process: reuse SIFT's buffers (extraction.py)
        self.index = Index.open(index_dir, weights=weights, root=root)
        self.index.snapshot  # noqa: B018 - load the vectors now: the first query must not pay for it
        self._writer = self._writer_for(self.index)
        self.snapshot_lock = ReadWriteLock()
        self._write_lock = threading.Lock()  # this server's own adds/removes, one at a time
        self.searches = WorkQueue("search", workers or default_workers(), waiting)
        self.writes = WorkQueue("write", 1, max(4, waiting // 4))
        self.light = WorkQueue("file", 2, 256)  # thumbnails, images, info
        self.whole = WorkQueue("duplicates", 1, 1)  # whole-collection answers: one at a time
        self._duplicates_cache: dict[tuple, dict[str, Any]] = {}
        self.thumbnails = ThumbnailCache(self.limits.thumbnail_side, self.limits.max_pixels)
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    @staticmethod
    def _writer_for(index: Index) -> Index:
        return Index(index.path, index.encoder, index.meta, index.root)

    # --- following other processes' commits ------------------------------------------
    def start(self) -> None:
        if self._follower is None:
            self._stop.clear()
            self._follower = threading.Thread(target=self._follow_loop, name="vladsearch-follower", daemon=True)
            self._follower.start()

    def stop(self) -> None:
        self._stop.set()
        if self._follower is not None:
            self._follower.join(timeout=10)
            self._follower = None
        for queue in (self.searches, self.writes, self.light, self.whole):
            queue.shutdown()

    def _follow_loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            try:
                self.follow()
            except Exception as exc:  # noqa: BLE001 - keep serving the last good snapshot
                log.warning("cannot follow the index's commits (still serving the last one): %s", exc)

    def follow(self) -> bool:
        """Move to the newest commit of any process; True when the snapshot changed."""
        db = catalog.connect(self.index.path, readonly=True)
        try:
            seq, _ = catalog.last_commit(db)
            build_id = catalog.read_meta(db).get("build_id") if seq != self.index.snapshot.commit_seq else None
        finally:
            db.close()
        if build_id is None:
            return False
        if build_id != self.index.meta.get("build_id"):  # rebuilt with --force: new codebook, reopen whole
            fresh = Index.open(self.index.path, weights=self._weights, root=self._root)
            fresh.snapshot  # noqa: B018
            with self._write_lock, self.snapshot_lock.exclusive():
                self.index, self._writer = fresh, self._writer_for(fresh)
            return True
        with self.snapshot_lock.exclusive():
            return self.index.refresh()

    # --- searching -----------------------------------------------------------------------
    def check_image(self, data: bytes, name: str | None = None) -> None:
        """Decode an upload as the index would, under the upload pixel limit; ImageError says what is wrong.

        name: the client's file name, whose extension tells camera RAW files apart from TIFF.
        """
        decode_gray(data, self.index.params.max_side, self.limits.max_pixels, name=name)

    def search_upload(self, data: bytes, filename: str, options: SearchOptions) -> dict[str, Any]:
        """One element of `search --json` for uploaded bytes, plus `seconds`; 400 for an unusable image."""
        started = time.perf_counter()
        try:
            self.check_image(data, filename)
        except ImageError as exc:
            raise ServiceError(400, f"{filename}: {exc}") from None
        with tempfile.NamedTemporaryFile(prefix="vladsearch-query-", suffix=Path(upload_name(filename, data)).suffix) \
                as query:
            query.write(data)
            query.flush()
            result = self._search_file(query.name, options)
        result.query = filename
        return {**result.to_dict(), "seconds": round(time.perf_counter() - started, 4)}

    def _search_file(self, path: str, options: SearchOptions):
        """Index.search of one file on the current snapshot (hits removed since it was taken are skipped)."""
        try:
            with self.snapshot_lock.shared():
                return self.index.search([path], options=options, workers=1)[0]
        except ValueError as exc:
            raise ServiceError(400, str(exc)) from None

    # --- the images of the index -------------------------------------------------------
    def indexed_file(self, path: str) -> Path:
        """The real file of an indexed image, inside its indexed folder (files.py); else 404 (or 400 for a bad path)."""
        check_indexed_name(path)
        with self.snapshot_lock.shared():
            row = catalog.find_image(self.index.snapshot.table, path)
            root = self.index.root
        if row is None or row["segment"] is None:
            raise ServiceError(404, f"{path} is not in the index")
        return resolve_indexed(root, path)

    def thumbnail(self, path: str) -> bytes:
        return self.thumbnails.get(self.indexed_file(path))

    def add_uploads(self, files: list[tuple[str, bytes]]) -> dict[str, Any]:
        """Store uploads under <root>/uploads with fresh names and add them (one commit); `add --json` + images."""
        if not files:
            raise ServiceError(400, "no file in the field 'images'")
        if len(files) > self.limits.max_files:
            raise ServiceError(400, f"{len(files)} files in one request; at most {self.limits.max_files}")
        started = time.perf_counter()
        skipped, usable = [], []
        for name, data in files:
            try:
                self.check_image(data, name)
                usable.append((name, data))
            except ImageError as exc:
                skipped.append({"path": name, "reason": str(exc)})
        if not usable:
            raise ServiceError(400, "no usable image: " + "; ".join(f"{s['path']}: {s['reason']}" for s in skipped))
        with self._write_lock:
            writer, root = self._writer, self._writer.root
            try:
                saved = [(name, write_new(root / UPLOADS, upload_name(name, data), data)) for name, data in usable]
            except OSError as exc:
                raise ServiceError(507, f"cannot store the upload under {root / UPLOADS}: {exc}") from None
            try:
                report = writer.add([path for _, path in saved], workers=1, progress=False)
            except (ValueError, RuntimeError, OSError) as exc:  # e.g. rebuilt meanwhile, disk full
                for _, path in saved:
                    path.unlink(missing_ok=True)
                raise ServiceError(409 if not isinstance(exc, OSError) else 507, f"nothing added: {exc}") from None
        self.follow()
        return {"indexed": report.indexed, "unchanged": report.unchanged, "replaced": report.replaced,
                "skipped": skipped + [{"path": p, "reason": r} for p, r in report.skipped],
                "no_keypoints": report.no_keypoints,
                "images": [{"name": name, "image": path.relative_to(root).as_posix()} for name, path in saved],
                "seconds": round(time.perf_counter() - started, 4)}

    def remove(self, path: str) -> dict[str, Any]:
        """Remove one indexed image (one commit); a file this server uploaded is deleted too."""
        with self.snapshot_lock.shared():
            row = catalog.find_image(self.index.snapshot.table, path)
        if row is None or row["segment"] is None:
            raise ServiceError(404, f"{path} is not in the index")
        with self._write_lock:
            writer, root = self._writer, self._writer.root
            try:
                missing = writer.remove([path])
            except (ValueError, RuntimeError, OSError) as exc:
                raise ServiceError(409 if not isinstance(exc, OSError) else 507, f"not removed: {exc}") from None
            if missing:
                raise ServiceError(404, f"{path} is not in the index")
            if path.startswith(UPLOADS + "/"):  # ours: delete it, or a folder re-add would bring it back
                with contextlib.suppress(ServiceError, OSError):
                    resolve_inside(root / UPLOADS, path[len(UPLOADS) + 1:]).unlink()
        self.follow()
        with self.snapshot_lock.shared():
            remaining = len(self.index.snapshot.loaded_ids)
        return {"removed": path, "vectors": remaining}

    def duplicates(self, min_inliers: int | None, neighbors: int | None) -> dict[str, Any]:
        """`vladsearch duplicates --json` of the current snapshot (kept until the next commit)."""
        from vladsearch.collection.duplicates import DEFAULT_MIN_INLIERS, DEFAULT_NEIGHBORS, find_duplicates
        from vladsearch.collection.report import report_to_dict

        options = {"min_inliers": min_inliers or DEFAULT_MIN_INLIERS, "neighbors": neighbors or DEFAULT_NEIGHBORS}
        with self.snapshot_lock.shared():
            key = (self.index.snapshot.commit_seq, *options.values())
            if key not in self._duplicates_cache:
                report = find_duplicates(self.index, workers=1, **options)
                self._duplicates_cache = {key: report_to_dict(report)}
            return self._duplicates_cache[key]

    def info(self) -> dict[str, Any]:
        with self.snapshot_lock.shared():
            return self.index.info()
