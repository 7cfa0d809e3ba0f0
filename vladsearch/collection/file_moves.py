"""Moving files so that nothing is ever lost: a journal (the manifest) written before any move,
moves that never overwrite, and recovery from whatever a crash left behind.

A manifest is one JSON file listing each file's old and new path and its SHA-1. It is written
(fsync'd, atomically through a rename) before the first file moves, and again as moves
complete. The manifest records the plan; the files record the truth: `settle` looks at both
paths of an entry and finishes whatever step a crash interrupted, so that running a move, its
completion or its undo again after a `kill -9` at any instant ends with every file in one
place, byte-identical, and nothing deleted:

- on one filesystem a move is `link(old, new)` (fails if `new` exists: never overwrites),
  then `unlink(old)`; a crash between leaves two names for one file, and the second run
  removes the old name;
- across filesystems (or where hard links do not exist) the bytes are copied to
  `new + PARTIAL_SUFFIX`, fsync'd, hashed again and compared with the source before the copy
  takes the name `new` (again without overwriting); the source is unlinked only after that.
  A leftover partial copy is our own unfinished work and is discarded (its source is intact).

A source whose bytes no longer have the recorded SHA-1 is left alone (state `changed`); a
target that already holds another file is left alone too (state `conflict`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vladsearch.store.moves import file_sha1  # noqa: F401 - the one SHA-1 of a file, also used by callers here

MANIFEST_FORMAT = "vladsearch-moves"
MANIFEST_VERSION = 1
PARTIAL_SUFFIX = ".vladsearch-partial"
# link() failing with these means "no hard links here": copy instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}

# entry states
PLANNED, MOVED, RESTORED = "planned", "moved", "restored"
CHANGED, CONFLICT, MISSING, SYMLINK = "changed", "conflict", "missing", "symlink"
LEFT_ALONE = {CHANGED, CONFLICT, MISSING, SYMLINK}


class MoveRefused(Exception):
    """A file was left where it is; `state` says why (changed, conflict, missing, symlink)."""

    def __init__(self, state: str, message: str) -> None:
        super().__init__(message)
        self.state = state


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a new name, a removed one) durable."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stamp(now: datetime.datetime | None = None) -> str:
    """A file-name-safe local date and time: 2026-12-03T19-05-00."""
    return (now or datetime.datetime.now()).strftime("%Y-%m-%dT%H-%M-%S")


# --- the manifest ----------------------------------------------------------------------------
def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically: a fsync'd temporary file renamed over it, then the folder fsync'd."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=1, ensure_ascii=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """A manifest written by `write_manifest`; ValueError with what to do when it is not one."""
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"manifest {path} does not exist (a move prints the path of its manifest)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read manifest {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a vladsearch move manifest (no \"format\": \"{MANIFEST_FORMAT}\")")
    if manifest.get("version", 0) > MANIFEST_VERSION:
        raise ValueError(f"{path} was written by a newer vladsearch (manifest version {manifest['version']}); "
                         "upgrade vladsearch to use it")
    return manifest


@contextlib.contextmanager
def manifest_lock(path: Path) -> Iterator[None]:
    """Lock the manifest's folder (an advisory flock, no file left behind): one vladsearch process at a
    time acts on the manifests there; another gets ValueError at once."""
    import fcntl

    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another vladsearch process is moving files with a manifest in {folder} right now: "
                             "wait for it to finish, then run the command again") from None
        yield
    finally:
        os.close(fd)


def default_manifest_path(folder: Path, action: str = "moves") -> Path:
    """FOLDER/vladsearch-moves-2026-12-03T19-05-00.json (a suffix when that name is taken)."""
    base = f"vladsearch-{action}-{stamp()}"
    path = Path(folder) / f"{base}.json"
    number = 1
    while path.exists():
        number += 1
        path = Path(folder) / f"{base}-{number}.json"
    return path


# --- one file --------------------------------------------------------------------------------
def move_file(source: Path, target: Path, sha1: str | None = None) -> None:
    """Move `source` to `target` without ever overwriting or losing it (see the module docstring).

    sha1: the bytes expected (checked on the copy path, where the bytes are read anyway).
    Raises MoveRefused (conflict) when `target` exists; OSError as the system reports it.
    """
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target):
        raise MoveRefused(CONFLICT, f"{target} already exists: not overwritten")
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise MoveRefused(CONFLICT, f"{target} already exists: not overwritten") from None
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        _copy_verified(source, target, sha1)
    fsync_dir(target.parent)
    os.unlink(source)
    fsync_dir(source.parent)


def _copy_verified(source: Path, target: Path, sha1: str | None) -> None:
    """Copy to a partial file, fsync, check its hash against the source's, then give it the target's name."""
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    partial.unlink(missing_ok=True)  # our own unfinished copy from a crash
    digest = hashlib.sha1()
    with open(source, "rb") as reader, open(partial, "xb") as writer:
        for block in iter(lambda: reader.read(1 << 20), b""):
            digest.update(block)
            writer.write(block)
        writer.flush()
        os.fsync(writer.fileno())
    shutil.copystat(source, partial)  # keep the mtime: it is the file's age
    copied = file_sha1(partial)
    if copied != digest.hexdigest() or (sha1 is not None and copied != sha1):
        partial.unlink(missing_ok=True)
        raise MoveRefused(CHANGED, f"{source} changed while it was copied (or its SHA-1 is not the indexed one): "
                                   "left in place")
    try:
        os.link(partial, target)
    except FileExistsError:
        partial.unlink(missing_ok=True)
        raise MoveRefused(CONFLICT, f"{target} already exists: not overwritten") from None
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        if os.path.lexists(target):  # no hard links at all here: check, then rename (a tiny race)
            partial.unlink(missing_ok=True)
            raise MoveRefused(CONFLICT, f"{target} already exists: not overwritten") from None
        os.rename(partial, target)
        return
    partial.unlink()


def settle(source: Path, target: Path, sha1: str, checked: bool = False) -> None:
    """Bring one file from `source` to `target`, finishing whatever an interrupted attempt left.

    checked: the source's SHA-1 was verified just now (skip hashing it again). Returns when the
    file is at `target` only; raises MoveRefused (changed, conflict, missing, symlink) otherwise.
    """
    source, target = Path(source), Path(target)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    if os.path.lexists(target):
        if not os.path.lexists(source):
            partial.unlink(missing_ok=True)
            return  # already done
        if _same_bytes(source, target):  # a crash between link (or verified copy) and unlink
            partial.unlink(missing_ok=True)
            os.unlink(source)
            fsync_dir(source.parent)
            return
        raise MoveRefused(CONFLICT, f"{target} already exists and holds another file: both left as they are")
    if not os.path.lexists(source):
        raise MoveRefused(MISSING, f"{source} is not there any more (and not at {target}): nothing to move")
    if os.path.islink(source):
        raise MoveRefused(SYMLINK, f"{source} is a symbolic link: left alone (move the file it points to)")
    if not checked and file_sha1(source) != sha1:
        raise MoveRefused(CHANGED, f"{source} changed since it was indexed (its SHA-1 differs): left alone")
    move_file(source, target, sha1)


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
        return os.path.getsize(a) == os.path.getsize(b) and file_sha1(a) == file_sha1(b)
    except OSError:
        return False


def where_is(entry: dict[str, Any]) -> str:
    """'old', 'new', 'both' or 'neither': where an entry's file lies now (by name only)."""
    old, new = os.path.lexists(entry["old"]), os.path.lexists(entry["new"])
    return {(True, False): "old", (False, True): "new", (True, True): "both"}.get((old, new), "neither")


def count_states(entries: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["state"]] = counts.get(entry["state"], 0) + 1
    return counts
