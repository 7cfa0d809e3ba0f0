"""Files that moved: recognise an indexed image under a new name by its content hash.

A renamed or moved file keeps its bytes, so its SHA-1 (recorded in the catalog when it was
indexed) names it again. `find_moves` pairs files that are new to the index with indexed
rows whose file is gone, hashing only the new files whose size matches such a row; the
caller then renames the rows (`catalog.rename_images`) instead of extracting again.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from vladsearch.store import catalog


def file_sha1(path: str | os.PathLike) -> str:
    """Hex SHA-1 of a file's bytes (what the catalog records as `sha1`)."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def indexed_file(root: Path, name: str) -> Path:
    """Where the file of an indexed name lies: relative names are under the photos' folder."""
    return Path(name) if os.path.isabs(name) else Path(root) / name


def rows_with_sizes(db: sqlite3.Connection, sizes: set[int]) -> list[dict[str, Any]]:
    """Indexed (not skipped) rows whose recorded file size is one of `sizes`."""
    rows: list[dict[str, Any]] = []
    unique = sorted(sizes)
    for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
        chunk = unique[start:start + 900]
        cursor = db.execute(f"SELECT {', '.join(catalog.IMAGE_COLUMNS)} FROM images WHERE status != ? AND "
                            f"sha1 IS NOT NULL AND file_size IN ({', '.join('?' * len(chunk))})",
                            (catalog.STATUS_SKIPPED, *chunk))
        rows.extend(dict(zip(catalog.IMAGE_COLUMNS, row)) for row in cursor)
    return rows


def find_moves(db: sqlite3.Connection, files: dict[str, Path], root: Path,
               gone: set[str] | None = None) -> dict[str, str]:
    """Indexed name → new name, for new files whose bytes an indexed, vanished file had.

    files: name -> file, the candidates (names already indexed are ignored);
    gone: indexed names known to have vanished (None: a row counts as gone when its file
    no longer exists). Each vanished row is matched at most once.
    """
    new = {name: path for name, path in files.items() if catalog.find_image(db, name) is None}
    sizes = {}
    for name, path in new.items():
        try:
            sizes[name] = os.stat(path).st_size
        except OSError:
            continue
    by_hash: dict[tuple[int, str], list[str]] = {}
    for row in rows_with_sizes(db, set(sizes.values())):
        vanished = row["path"] in gone if gone is not None else not indexed_file(root, row["path"]).exists()
        if vanished and row["path"] not in files:
            by_hash.setdefault((row["file_size"], row["sha1"]), []).append(row["path"])
    moves: dict[str, str] = {}
    if not by_hash:
        return moves
    candidate_sizes = {size for size, _ in by_hash}
    for name, size in sorted(sizes.items()):
        if size not in candidate_sizes:
            continue
        try:
            olds = by_hash.get((size, file_sha1(new[name])))
        except OSError:
            continue
        if olds:
            moves[olds.pop(0)] = name
    return moves
