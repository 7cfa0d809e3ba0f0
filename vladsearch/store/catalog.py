"""The catalog of an index: one SQLite database in WAL mode, the index's commit point.

    my.vlad/
      catalog.sqlite       meta (format, parameters, root), blobs (codebook, projection,
                           trained faiss template), images, segments, deletions, commits
      segments/<name>/     immutable segments: vectors.f32 (.f16 for --preset large), compact
                           codes, local features; see segments.py
      staging/<writer>/    a writer's segments before they are committed (+ <writer>.lock)
      readers.lock         shared by readers while they take a snapshot

The commit protocol (Lucene's commit point, on SQLite's atomic commit):

1. A writer extracts and encodes outside any lock, writing whole segments under
   staging/<writer>/ (fsynced), holding an exclusive flock on staging/<writer>.lock so
   that others can tell a live writer from a dead one.
2. It commits with `BEGIN IMMEDIATE` (SQLite's write lock: writers queue here, readers
   go on): removes what dead writers and earlier merges left, moves its segments into
   segments/, inserts their segment and image rows, records deletions, dropped segments
   and meta, then COMMIT. The transaction is the commit: a writer killed before COMMIT
   leaves only files that no committed row names; the next writer removes them. Every
   writer (build, add, remove, merge, on any executor) commits through the one API that
   does this, `transaction.transaction`; the rows are written by this module's functions.
3. Readers take a snapshot: under a shared flock on readers.lock they copy the catalog
   (one read transaction: WAL readers never see half a commit) and open every segment
   file the snapshot names. Files of segments that a merge dropped are deleted only by
   a writer that gets readers.lock exclusively; an open file outlives its unlinking.

Image ids are never reused (meta `next_id`), so "this id was deleted" never becomes
"this id is another image".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

FORMAT_NAME = "vladsearch-index"
FORMAT_VERSION = 2
CATALOG = "catalog.sqlite"
READERS_LOCK = "readers.lock"
# How long a writer waits for another writer's commit before giving up (seconds).
COMMIT_TIMEOUT = 600.0

STATUS_INDEXED = "indexed"
STATUS_NO_KEYPOINTS = "no_keypoints"  # indexed with a zero vector, reported
STATUS_SKIPPED = "skipped"            # not in any segment; reason says why

IMAGE_COLUMNS = ("id", "path", "status", "reason", "file_size", "mtime", "sha1", "width", "height",
                 "keypoints", "segment", "row", "feat_offset", "feat_count")
SEGMENT_COLUMNS = ("name", "vectors", "features", "bytes", "sha256", "state", "created")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (name TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    name TEXT PRIMARY KEY, vectors INTEGER NOT NULL, features INTEGER NOT NULL,
    bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, status TEXT NOT NULL, reason TEXT,
    file_size INTEGER, mtime REAL, sha1 TEXT, width INTEGER, height INTEGER, keypoints INTEGER,
    segment TEXT, row INTEGER, feat_offset INTEGER, feat_count INTEGER
);
CREATE INDEX IF NOT EXISTS images_segment ON images (segment);
CREATE INDEX IF NOT EXISTS images_sha1 ON images (sha1);
CREATE TABLE IF NOT EXISTS deletions (id INTEGER PRIMARY KEY, segment TEXT NOT NULL, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS deletions_segment ON deletions (segment);
CREATE TABLE IF NOT EXISTS commits (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, kind TEXT NOT NULL,
    added INTEGER NOT NULL, removed INTEGER NOT NULL, segments INTEGER NOT NULL
);
"""


class IndexFormatError(ValueError):
    """The directory is not an index this version of vladsearch can read."""


class IndexDamagedError(ValueError):
    """A file of the index is missing or damaged; the message names it."""


def catalog_path(index_dir: str | os.PathLike) -> Path:
    return Path(index_dir) / CATALOG


def _damaged(path: Path, exc: Exception) -> IndexDamagedError:
    return IndexDamagedError(f"the index catalog {path} is damaged ({exc}); run `vladsearch check "
                             f"{path.parent}`, and rebuild the index if it cannot be read")


def connect(index_dir: str | os.PathLike, *, create: bool = False, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the catalog (WAL, full fsync); isolation is explicit (BEGIN … COMMIT)."""
    path = catalog_path(index_dir)
    if not create and not path.is_file():
        raise IndexFormatError(f"{index_dir} is not a vladsearch index (no {CATALOG})")
    try:
        if readonly:
            try:
                db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                     timeout=COMMIT_TIMEOUT, check_same_thread=False)
                db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            except sqlite3.OperationalError:
                if os.access(path.parent, os.W_OK):
                    raise
                # A read-only directory cannot hold WAL's shared-memory file: read it as a
                # file nobody changes (true: nobody can write there either).
                db = sqlite3.connect(f"file:{path}?immutable=1", uri=True, isolation_level=None,
                                     check_same_thread=False)
        else:
            db = sqlite3.connect(path, isolation_level=None, timeout=COMMIT_TIMEOUT, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        if create:
            db.executescript(SCHEMA)
        db.execute("SELECT COUNT(*) FROM meta").fetchone()
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc) or "readonly" in str(exc):
            raise
        raise _damaged(path, exc) from None
    return db


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection):
    """BEGIN IMMEDIATE … COMMIT: the one writer lock; rolled back on any error."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            raise TimeoutError(f"another writer held the index for over {COMMIT_TIMEOUT:.0f} s; try again") from None
        raise
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def check_writable(index_dir: Path) -> None:
    """Fail before any extraction when the index cannot be written."""
    probe = index_dir if index_dir.exists() else index_dir.parent
    targets = [probe] + [p for p in (index_dir / CATALOG,) if p.exists()]
    for target in targets:
        if not os.access(target, os.W_OK):
            raise PermissionError(f"cannot write to {target} (read-only): nothing was changed; "
                                  "fix its permissions or choose another --index")


def disk_error(index_dir: Path, exc: BaseException) -> BaseException:
    """A one-line error for a full disk; other errors pass through unchanged."""
    full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        (isinstance(exc, sqlite3.OperationalError) and "full" in str(exc))
    if full:
        return OSError(errno.ENOSPC, f"the disk holding {index_dir} is full: nothing was committed and the index "
                                     "is as it was; free some space and run the command again")
    return exc


def existing_build(index_dir: Path) -> dict[str, Any] | None:
    """The meta of the index already at index_dir (None: no committed index there)."""
    if (index_dir / "manifest.json").exists() and not catalog_path(index_dir).exists():
        return {"root": "(format 1 index)"}
    if not catalog_path(index_dir).exists():
        return None
    db = connect(index_dir, readonly=True)
    try:
        return read_meta(db)
    except IndexFormatError:
        return None
    finally:
        db.close()


# --- meta and blobs --------------------------------------------------------------------
def read_meta(db: sqlite3.Connection) -> dict[str, Any]:
    meta = {key: json.loads(value) for key, value in db.execute("SELECT key, value FROM meta")}
    if not meta:
        raise IndexFormatError("the index has no committed build yet (was its build interrupted?): "
                               "run `vladsearch build PHOTOS --index INDEX --force`")
    if meta.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"not a vladsearch index (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"the index was written in format version {meta.get('format_version')} by vladsearch "
            f"{meta.get('created_by', '?')}; this vladsearch reads versions 1 and {FORMAT_VERSION}. "
            "Use the vladsearch version that wrote it, or rebuild it with `vladsearch build --force`.")
    return meta


def write_meta(db: sqlite3.Connection, meta: dict[str, Any]) -> None:
    db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                   [(k, json.dumps(v, ensure_ascii=False)) for k, v in meta.items()])


def read_blob(db: sqlite3.Connection, name: str) -> bytes | None:
    row = db.execute("SELECT data FROM blobs WHERE name = ?", (name,)).fetchone()
    return None if row is None else bytes(row[0])


def write_blob(db: sqlite3.Connection, name: str, data: bytes | None) -> None:
    if data is None:
        db.execute("DELETE FROM blobs WHERE name = ?", (name,))
    else:
        db.execute("INSERT OR REPLACE INTO blobs (name, data) VALUES (?, ?)", (name, sqlite3.Binary(data)))


def allocate_ids(db: sqlite3.Connection, count: int) -> int:
    """Reserve `count` new image ids (inside a write transaction); returns the first."""
    (first,) = db.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone() or ("0",)
    first = int(json.loads(first))
    write_meta(db, {"next_id": first + count})
    return first


def record_commit(db: sqlite3.Connection, kind: str, added: int, removed: int, segments: int) -> None:
    db.execute("INSERT INTO commits (time, kind, added, removed, segments) VALUES (?, ?, ?, ?, ?)",
               (time.time(), kind, added, removed, segments))


def last_commit(db: sqlite3.Connection) -> tuple[int, float | None]:
    """(sequence number, unix time) of the newest commit; readers poll it to refresh."""
    seq, when = db.execute("SELECT COALESCE(MAX(seq), 0), MAX(time) FROM commits").fetchone()
    return int(seq), when


def root_meta(index_dir: Path, root: Path) -> dict[str, str]:
    """The photos' folder, relative to the index (found again when both move) and absolute."""
    root = Path(os.path.abspath(root))
    return {"root": str(root), "root_relative": os.path.relpath(root, os.path.abspath(index_dir))}


# --- image rows -------------------------------------------------------------------------
def _rows(cursor) -> list[dict[str, Any]]:
    return [dict(zip(IMAGE_COLUMNS, row)) for row in cursor]


def find_image(db: sqlite3.Connection, path: str) -> dict[str, Any] | None:
    found = _rows(db.execute(f"SELECT {', '.join(IMAGE_COLUMNS)} FROM images WHERE path = ?", (path,)))
    return found[0] if found else None


def images_by_id(db: sqlite3.Connection, ids) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    unique = sorted({int(i) for i in ids})
    for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
        chunk = unique[start:start + 900]
        query = f"SELECT {', '.join(IMAGE_COLUMNS)} FROM images WHERE id IN ({', '.join('?' * len(chunk))})"
        out.extend(_rows(db.execute(query, chunk)))
    return out


def image_rows(db: sqlite3.Connection, status: str | None = None) -> list[dict[str, Any]]:
    query, args = f"SELECT {', '.join(IMAGE_COLUMNS)} FROM images", ()
    if status is not None:
        query, args = query + " WHERE status = ?", (status,)
    return _rows(db.execute(query + " ORDER BY id", args))


def count_images(db: sqlite3.Connection, status: str | None = None) -> int:
    if status is None:
        return db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    return db.execute("SELECT COUNT(*) FROM images WHERE status = ?", (status,)).fetchone()[0]


def insert_image(db: sqlite3.Connection, row: dict[str, Any]) -> None:
    columns = ", ".join(row)
    db.execute(f"INSERT INTO images ({columns}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))


def delete_images(db: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    """Drop image rows; those with vectors leave a deletion for the next merge."""
    now = time.time()
    db.executemany("INSERT OR REPLACE INTO deletions (id, segment, time) VALUES (?, ?, ?)",
                   [(r["id"], r["segment"], now) for r in rows if r["segment"] is not None])
    db.executemany("DELETE FROM images WHERE id = ?", [(r["id"],) for r in rows])


def rename_images(db: sqlite3.Connection, moves: dict[str, str]) -> int:
    """Change indexed names old → new (ids, vectors, features and hashes stay), inside a write
    transaction (`transaction.transaction`; writer.rename_names is the commit).

    Raises ValueError, changing nothing, when an old name is not indexed or a new name
    already is (and is not itself renamed away here). Returns the number renamed.
    """
    moves = {old: new for old, new in moves.items() if old != new}
    if not moves:
        return 0
    if len(set(moves.values())) != len(moves):
        raise ValueError("two images cannot be renamed to the same path: nothing was renamed")
    ids = {}
    for old, new in moves.items():
        row = find_image(db, old)
        if row is None:
            raise ValueError(f"{old} is not in the index: nothing was renamed (see `vladsearch info`)")
        if new not in moves and find_image(db, new) is not None:
            raise ValueError(f"{new} is already in the index: nothing was renamed; remove it first")
        ids[old] = row["id"]
    # two steps, so that names may swap or shift along a chain without breaking UNIQUE(path)
    rename = "UPDATE images SET path = ? WHERE id = ?"
    db.executemany(rename, [(f"//vladsearch-rename/{i}", i) for i in ids.values()])
    db.executemany(rename, [(moves[old], i) for old, i in ids.items()])
    return len(moves)


# --- segment rows -----------------------------------------------------------------------
def insert_segments(db: sqlite3.Connection, staged: list) -> None:
    """Rows for segments just published (live): the one place a segment enters the catalog.

    staged: `segments.StagedSegment`s (name, vectors, features, bytes, sha256).
    """
    now = time.time()
    db.executemany("INSERT INTO segments (name, vectors, features, bytes, sha256, state, created) "
                   "VALUES (?, ?, ?, ?, ?, 'live', ?)",
                   [(s.name, s.vectors, int(s.features), s.bytes, s.sha256, now) for s in staged])


def drop_segments(db: sqlite3.Connection, names: list[str] | None = None) -> None:
    """Mark segments dropped (None: every live one); their files go once no reader needs them."""
    if names is None:
        db.execute("UPDATE segments SET state = 'dropped' WHERE state = 'live'")
    else:
        db.executemany("UPDATE segments SET state = 'dropped' WHERE name = ?", [(name,) for name in names])


def live_segments(db: sqlite3.Connection) -> list[dict[str, Any]]:
    cursor = db.execute(f"SELECT {', '.join(SEGMENT_COLUMNS)} FROM segments WHERE state = 'live' ORDER BY created, name")
    return [dict(zip(SEGMENT_COLUMNS, row)) for row in cursor]


# --- locks ------------------------------------------------------------------------------
@contextlib.contextmanager
def readers_lock(index_dir: Path, exclusive: bool = False, wait: bool = True):
    """flock on readers.lock: shared while a reader takes its snapshot, exclusive to delete files.

    Yields True when held (False: not held — exclusive without wait and a reader is busy,
    or a read-only directory without the lock file, where nobody deletes anything).
    """
    path = Path(index_dir) / READERS_LOCK
    try:
        fd = os.open(path, os.O_RDONLY | (0 if path.exists() else os.O_CREAT), 0o644)
    except OSError:
        yield False
        return
    try:
        flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
