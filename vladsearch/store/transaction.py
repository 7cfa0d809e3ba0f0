"""The one commit API: every change to a live index is one `transaction` (protocol: catalog.py).

    with transaction(index_dir, "add") as tx:   # BEGIN IMMEDIATE; dead writers' leftovers go first
        tx.publish(staged)                       # segment files moved in, their catalog rows inserted
        tx.insert_images(rows)                   # image rows, with new ids
        tx.delete_images(rows); tx.drop_segments(names); tx.clear()   # (a build: all of it)
        tx.write_meta({...}); tx.write_blob(name, data); tx.touch()
    # COMMIT, recorded in the commits table. On any error: ROLLBACK, the published files are
    # removed again (no committed row names them), and a full disk is reported in one line.

Writer (build, add, remove, rename, copy), compaction (merge) and, through the orchestrator, every
executor commit here. The format 1 migration (migration.py) writes a new catalog file instead,
with the same `catalog.insert_segments`, and commits by renaming it into place.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vladsearch.store import catalog, segments


class Changes:
    """What one transaction changes; `added`/`removed` are the counts its commit record keeps."""

    def __init__(self, index_dir: Path, db: sqlite3.Connection) -> None:
        self.index_dir = index_dir
        self.db = db
        self.published: list[segments.StagedSegment] = []
        self.moved: list[Path] = []
        self.added = 0
        self.removed = 0
        self.record = True  # False: nothing happened, leave no commit record

    def publish(self, staged: list[segments.StagedSegment]) -> None:
        """Move staged segments into segments/ and insert their catalog rows (live)."""
        self.moved += segments.publish(self.index_dir, staged)
        catalog.insert_segments(self.db, staged)
        self.published += staged

    def insert_images(self, rows: list[dict[str, Any]]) -> None:
        """Insert image rows (without ids), each with a new id, in order."""
        first = catalog.allocate_ids(self.db, len(rows))
        for offset, row in enumerate(rows):
            catalog.insert_image(self.db, {"id": first + offset, **row})

    def delete_images(self, rows: list[dict[str, Any]]) -> None:
        catalog.delete_images(self.db, rows)

    def drop_segments(self, names: list[str] | None = None) -> None:
        catalog.drop_segments(self.db, names)

    def clear(self) -> None:
        """Drop the whole content (a build replacing an index): every segment, image and deletion."""
        catalog.drop_segments(self.db)
        self.db.execute("DELETE FROM images")
        self.db.execute("DELETE FROM deletions")

    def write_meta(self, meta: dict[str, Any]) -> None:
        catalog.write_meta(self.db, meta)

    def write_blob(self, name: str, data: bytes | None) -> None:
        catalog.write_blob(self.db, name, data)

    def touch(self) -> None:
        """Record when the index last changed (meta `updated`)."""
        catalog.write_meta(self.db, {"updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


@contextlib.contextmanager
def transaction(index_dir: Path, kind: str, db: sqlite3.Connection | None = None) -> Iterator[Changes]:
    """One commit of `kind` (build, add, remove, merge, …) on the catalog of `index_dir`.

    db: a connection to reuse (None: one is opened and closed here).
    """
    index_dir = Path(index_dir)
    own = db is None
    if own:
        db = catalog.connect(index_dir)
    changes = Changes(index_dir, db)
    try:
        with catalog.write_transaction(db):
            segments.collect_garbage(index_dir, db)  # first: never what this transaction drops
            yield changes
            if changes.record:
                catalog.record_commit(db, kind, changes.added, changes.removed, len(changes.published))
    except BaseException as exc:
        segments.unpublish(changes.moved)
        error = catalog.disk_error(index_dir, exc)
        if error is exc:
            raise
        raise error from None
    finally:
        if own:
            db.close()
