"""`vladsearch watch`: keep an index in step with folders (new, changed, moved and deleted photos).

One batch compares what lies on disk under some paths (every watched folder when catching
up or polling; the paths that file events named otherwise) with the catalog's rows there
(path, size, mtime, then SHA-1), and commits the difference through the live index:

1. files that are new to the index but carry the bytes of an indexed file that vanished
   are renamed (`Index.rename`: the entry keeps its vector, nothing is extracted);
2. new and changed files are added (`Index.add`: one segment, one commit);
3. indexed files that vanished are removed (one commit).

A file is taken only once it is complete: nothing wrote it for `settle` seconds (its
mtime is that old) or a close event came after its last write; until then it waits and
is looked at again. Changes are debounced: a batch runs after `quiet` seconds without a
new event, or `max_delay` seconds after the first one under a steady stream. The event
sources (watchdog, or polling) are in events.py; each commit takes the index's
writer lock only for itself, so readers, `serve` and other writers go on meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vladsearch.index import Index, indexed_name
from vladsearch.io.images import is_image_file, list_images
from vladsearch.store import catalog
from vladsearch.store.moves import file_sha1, find_moves, indexed_file

QUIET = 2.0       # seconds without a change before a batch is committed
MAX_DELAY = 20.0  # a batch waits at most this long under a steady stream of changes
SETTLE = 2.0      # a file is complete once nothing wrote it for this long (or it was closed)
RESCAN = 600.0    # with file events, a full scan this often too (events can be lost: a full inotify queue)


@dataclass
class Batch:
    """What one batch committed; `extracted` counts files whose features were computed."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)   # old name -> new name
    removed: list[str] = field(default_factory=list)
    extracted: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    waiting: int = 0   # files still being written, looked at again later

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.renamed or self.removed or self.skipped)

    def event(self) -> dict:
        return {"event": "batch", **asdict(self), "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}

    def line(self) -> str:
        parts = [f"{len(self.added)} added", f"{len(self.changed)} changed",
                 f"{len(self.renamed)} renamed (not extracted again)", f"{len(self.removed)} removed"]
        text = f"watch: {', '.join(parts)}; {self.extracted} extracted"
        return text + (f"; {len(self.skipped)} skipped" if self.skipped else "")


class Watcher:
    """Keeps the index at `index_dir` in step with `folders`; `sync` runs one batch."""

    def __init__(self, index: Index, folders: Iterable[str | os.PathLike], *, workers: int | None = None,
                 settle: float = SETTLE) -> None:
        self.index = index
        self.folders = [Path(os.path.abspath(f)) for f in folders]
        for folder in self.folders:
            if not folder.is_dir():
                raise NotADirectoryError(f"{folder} is not a folder: watch takes folders of photos")
        self.workers = workers
        self.settle = settle
        self.handled: dict[str, tuple[int, float]] = {}  # name -> (size, mtime) already taken or failed
        self.closed: dict[str, float] = {}               # path -> time of its last close-after-write
        self.waiting: set[Path] = set()                   # files not complete yet

    def reopen(self) -> None:
        """Open the index again (after a failed batch: it may have been rebuilt) and forget what was handled."""
        self.index = Index.open(self.index.path, weights=self.index.encoder.weights, root=self.index.root)
        self.handled.clear()

    # --- which files and rows a batch looks at ------------------------------------------
    def watched(self, path: Path) -> bool:
        """Whether an event's path is ours: under a folder, not hidden, not inside an index."""
        for folder in self.folders:
            try:
                parts = Path(os.path.abspath(path)).relative_to(folder).parts
            except ValueError:
                continue
            return not any(p.startswith(".") or p.endswith(".vlad") for p in parts)
        return False

    def _files_under(self, scope: list[Path]) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for path in scope:
            if path.is_dir():
                found = list_images(path)
            else:
                found = [path] if path.is_file() and is_image_file(path) and self.watched(path) else []
            files.update((indexed_name(f, self.index.root), f) for f in found)
        return files

    def _rows_under(self, db, scope: list[Path]) -> dict[str, tuple]:
        """Catalog rows whose file lies in `scope`: name -> (status, size, mtime, sha1)."""
        prefixes = [(str(p), str(p).rstrip(os.sep) + os.sep) for p in scope]
        rows = {}
        for name, *row in db.execute("SELECT path, status, file_size, mtime, sha1 FROM images"):
            where = os.path.abspath(indexed_file(self.index.root, name))
            if any(where == exact or where.startswith(prefix) for exact, prefix in prefixes):
                rows[name] = tuple(row)
        return rows

    def _needs_encoding(self, row: tuple | None, path: Path, state: tuple[int, float]) -> bool:
        """New, failed before, or changed: a new size, or new bytes under a new mtime (a touch is no change)."""
        if row is None or row[0] == catalog.STATUS_SKIPPED:
            return True
        try:
            return row[1] != state[0] or file_sha1(path) != row[3]
        except OSError:
            return False

    def _complete(self, path: Path, mtime: float, now: float) -> bool:
        return now - mtime >= self.settle or self.closed.get(str(path), 0.0) > mtime

    # --- one batch ----------------------------------------------------------------------
    def sync(self, scope: Iterable[Path] | None = None) -> Batch:
        """Commit what changed under `scope` (None: every watched folder) and return it."""
        scope = self.folders if scope is None else sorted({Path(os.path.abspath(p)) for p in scope} | self.waiting)
        self.waiting = set()
        batch = Batch()
        files = self._files_under(scope)
        db = catalog.connect(self.index.path, readonly=True)
        try:
            rows = self._rows_under(db, scope)
            todo, now = {}, time.time()
            for name, path in files.items():
                try:
                    stat = path.stat()
                except OSError:
                    continue
                state = (stat.st_size, stat.st_mtime)
                row = rows.get(name)
                if self.handled.get(name) == state or (row and row[0] != catalog.STATUS_SKIPPED
                                                       and (row[1], row[2]) == state):
                    continue
                if not self._complete(path, stat.st_mtime, now):
                    self.waiting.add(path)
                elif self._needs_encoding(row, path, state):
                    todo[name] = (path, state)
                else:
                    self.handled[name] = state
            gone = {name for name in rows if name not in files and not indexed_file(self.index.root, name).exists()}
            new = {name: path for name, (path, _) in todo.items() if name not in rows}
            moves = find_moves(db, new, self.index.root, gone=gone) if gone and new else {}
            if self.waiting and gone - set(moves):  # a file being written may be one that vanished, moved
                self.waiting |= {indexed_file(self.index.root, name) for name in gone - set(moves)}
                gone = set(moves)  # the others are removed once no file is being written
        finally:
            db.close()
        batch.waiting = len(self.waiting)
        self._commit(batch, todo, rows, gone, moves)
        return batch

    def _commit(self, batch: Batch, todo: dict, rows: dict, gone: set[str], moves: dict[str, str]) -> None:
        if moves:
            self.index.rename(moves)
            batch.renamed = moves
        to_add = {name: path for name, (path, _) in todo.items() if name not in moves.values()}
        if to_add:
            report = self.index.add(list(to_add.values()), workers=self.workers, progress=False)
            batch.extracted = report.indexed + len(report.skipped)
            batch.skipped = report.skipped
            batch.added = sorted(n for n in to_add if n not in rows)
            batch.changed = sorted(n for n in to_add if n in rows)
        for name, (_, state) in todo.items():
            self.handled[name] = state
        vanished = sorted(gone - set(moves))
        if vanished:
            self.index.remove(vanished)
            batch.removed = vanished
        for name in vanished:
            self.handled.pop(name, None)


def run(watcher: Watcher, source, stop: threading.Event, report: Callable[[Batch], None], *, quiet: float = QUIET,
        max_delay: float = MAX_DELAY, rescan: float = RESCAN,
        on_error: Callable[[Exception], None] | None = None) -> None:
    """Catch up, then commit a batch whenever `source` (watch_events) has been quiet; until `stop` is set.

    The batch under way when `stop` is set is finished (its commits are whole) before returning.
    """
    full_due, pending, failures = True, set(), 0
    first = last = last_batch = last_full = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now - last_full >= rescan:
            full_due, last_full = True, now
        settled = pending and (now - last >= quiet or now - first >= max_delay)
        if full_due or settled or (watcher.waiting and now - last_batch >= watcher.settle):
            scope, full_due, pending = (None if full_due else pending), False, set()
            try:
                batch = watcher.sync(scope)
                failures = 0
                if batch:
                    report(batch)
            except Exception as exc:  # retried by a full scan, waiting longer each time
                if on_error is None:
                    raise
                on_error(exc)
                with contextlib.suppress(Exception):
                    watcher.reopen()
                failures += 1
                stop.wait(min(quiet * 2 ** failures, 300.0))
                full_due = True
            last_batch = time.monotonic()
            continue
        changes, full = source.wait(min(quiet, watcher.settle) / 2, stop)
        full_due = full_due or full
        changes = {p for p in changes if watcher.watched(p)}
        if changes:
            first = first if pending else time.monotonic()
            pending |= changes
            last = time.monotonic()
