"""An index on disk: one directory, written atomically, no pickle.

    my.vlad/
      manifest.json          format, version, every parameter, counts; names the generation
      gen-00000002/          the data of the committed generation
        codebook.npy         K×D float32 centroids
        pca.npz              PCA-whitening (only when enabled)
        index.faiss          the faiss index (ids are image-table ids)
        images.sqlite        the image table
      features/              optional local-feature cache for reranking (append-only)

Saving writes a new generation directory beside the old one, flushes it to disk, then
replaces manifest.json with os.replace (atomic on POSIX and Windows). A process killed
at any moment leaves either the old manifest naming the old, complete generation, or
the new one naming the new, complete generation; stale generations are removed after.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

FORMAT_NAME = "vladsearch-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class IndexFormatError(ValueError):
    """The directory is not an index this version of vladsearch can read."""


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for child in path.iterdir():
        if child.is_file():
            with open(child, "rb+") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(path)


def read_manifest(index_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an index directory, checked for format and version."""
    index_dir = Path(index_dir)
    manifest_path = index_dir / MANIFEST
    if not index_dir.exists():
        raise FileNotFoundError(f"index {index_dir} does not exist: create it with `vladsearch build IMAGES_DIR --index {index_dir}`")
    if not manifest_path.is_file():
        raise IndexFormatError(f"{index_dir} is not a vladsearch index (no {MANIFEST}); build one with `vladsearch build`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{manifest_path} is corrupt ({exc}); rebuild the index") from None
    if manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{index_dir} is not a vladsearch index (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{index_dir} was written in index format version {version} "
            f"(by vladsearch {manifest.get('created_by', '?')}); this vladsearch reads version "
            f"{FORMAT_VERSION}. Rebuild it with `vladsearch build`, or use the vladsearch version that wrote it."
        )
    return manifest


def generation_dir(index_dir: Path, manifest: dict[str, Any]) -> Path:
    return Path(index_dir) / manifest["generation"]


def prepare_generation(index_dir: str | os.PathLike) -> tuple[Path, str]:
    """Create an empty staging directory for the next generation; return (path, name)."""
    index_dir = Path(index_dir)
    occupied = index_dir.exists() and (not index_dir.is_dir() or any(index_dir.iterdir()))
    if occupied and not (index_dir / MANIFEST).exists():
        raise FileExistsError(
            f"{index_dir} exists and is not a vladsearch index; choose another --index path"
        )
    index_dir.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name.split("-")[1].split(".")[0]) for p in index_dir.glob("gen-*")
               if p.name.split("-")[1].split(".")[0].isdigit()]
    name = f"gen-{max(numbers, default=0) + 1:08d}"
    staging = index_dir / f"{name}.tmp"
    staging.mkdir()
    return staging, name


def commit_generation(index_dir: str | os.PathLike, staging: Path, name: str, manifest: dict[str, Any]) -> None:
    """Make the staged generation current (see module docstring), then drop old ones."""
    index_dir = Path(index_dir)
    _fsync_tree(staging)
    final = index_dir / name
    os.replace(staging, final)
    manifest = {**manifest, "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "generation": name}
    tmp = index_dir / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, index_dir / MANIFEST)
    _fsync_dir(index_dir)
    for stale in index_dir.glob("gen-*"):
        if stale.name != name:
            shutil.rmtree(stale, ignore_errors=True)


def discard_generation(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


# --- the image table -----------------------------------------------------------------
IMAGE_COLUMNS = ("id", "path", "status", "reason", "file_size", "mtime", "sha1", "width", "height",
                 "keypoints", "feat_offset", "feat_count")
STATUS_INDEXED = "indexed"
STATUS_NO_KEYPOINTS = "no_keypoints"  # indexed with a zero vector, reported
STATUS_SKIPPED = "skipped"            # not in the faiss index; reason says why

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    reason TEXT,
    file_size INTEGER,
    mtime REAL,
    sha1 TEXT,
    width INTEGER,
    height INTEGER,
    keypoints INTEGER,
    feat_offset INTEGER,
    feat_count INTEGER
);
CREATE INDEX IF NOT EXISTS images_sha1 ON images (sha1);
"""


class ImageTable:
    """The images of an index, in SQLite (held in memory while the index is open).

    Ids are the faiss ids of the images' vectors.
    """

    def __init__(self, connection: sqlite3.Connection | None = None) -> None:
        self.db = connection or sqlite3.connect(":memory:")
        self.db.executescript(_SCHEMA)

    @classmethod
    def load(cls, path: Path) -> ImageTable:
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        memory = sqlite3.connect(":memory:")
        source.backup(memory)
        source.close()
        return cls(memory)

    def save(self, path: Path) -> None:
        target = sqlite3.connect(path)
        self.db.commit()
        self.db.backup(target)
        target.close()

    def next_id(self) -> int:
        (largest,) = self.db.execute("SELECT COALESCE(MAX(id), -1) FROM images").fetchone()
        return largest + 1

    def insert(self, **row: Any) -> None:
        columns = ", ".join(row)
        self.db.execute(f"INSERT OR REPLACE INTO images ({columns}) VALUES ({', '.join('?' * len(row))})",
                        tuple(row.values()))

    def delete(self, ids: list[int]) -> None:
        self.db.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in ids])

    def find(self, path: str) -> dict[str, Any] | None:
        cursor = self.db.execute(f"SELECT {', '.join(IMAGE_COLUMNS)} FROM images WHERE path = ?", (path,))
        row = cursor.fetchone()
        return dict(zip(IMAGE_COLUMNS, row)) if row else None

    def paths_of(self, ids: list[int]) -> dict[int, str]:
        if not ids:
            return {}
        found: dict[int, str] = {}
        unique = sorted(set(ids))
        for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
            chunk = unique[start:start + 900]
            query = f"SELECT id, path FROM images WHERE id IN ({', '.join('?' * len(chunk))})"
            found.update(self.db.execute(query, chunk).fetchall())
        return found

    def rows_by_id(self, ids: list[int]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        unique = sorted({int(i) for i in ids})
        for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
            chunk = unique[start:start + 900]
            query = f"SELECT {', '.join(IMAGE_COLUMNS)} FROM images WHERE id IN ({', '.join('?' * len(chunk))})"
            out.extend(dict(zip(IMAGE_COLUMNS, row)) for row in self.db.execute(query, chunk))
        return out

    def rows(self, status: str | None = None) -> list[dict[str, Any]]:
        query = f"SELECT {', '.join(IMAGE_COLUMNS)} FROM images"
        args: tuple = ()
        if status is not None:
            query += " WHERE status = ?"
            args = (status,)
        return [dict(zip(IMAGE_COLUMNS, row)) for row in self.db.execute(query + " ORDER BY id", args)]

    def count(self, status: str | None = None) -> int:
        if status is None:
            return self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM images WHERE status = ?", (status,)).fetchone()[0]
