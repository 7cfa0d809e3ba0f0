"""Segments: the immutable files a commit adds to an index (see catalog.py for the protocol).

    segments/<name>/
      segment.json       {"format", "version", "dim", "vectors", "dtype", "code_size", "sha256"}
      vectors.f32        vectors × dim, float32 (or float16 for --preset large: vectors.f16);
                         row r = the image with (segment, row) = (name, r)
      codes.u8           vectors × code_size uint8: the compact codes (--preset large only)
      store.json, keypoints.bin, descriptors.bin
                         the segment's local-feature cache, when the index keeps one
                         (feature_store.FeatureStore; offsets are per segment)

A segment never changes once written: a merge writes a new one. Which rows are alive is
the catalog's business (its image table), so deleting an image rewrites nothing here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vladsearch.store.catalog import IndexDamagedError, readers_lock
from vladsearch.store.feature_store import FeatureStore

SEGMENTS_DIR = "segments"
STAGING_DIR = "staging"
SEGMENT_FORMAT = "vladsearch-segment"
SEGMENT_VERSION = 1
VECTORS_FILE = "vectors.f32"
VECTOR_FILES = {"float32": ("vectors.f32", "<f4"), "float16": ("vectors.f16", "<f2")}
CODES_FILE = "codes.u8"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class StagedSegment:
    """A finished segment waiting for its commit."""

    name: str
    directory: Path
    vectors: int
    features: bool
    bytes: int
    sha256: str


class SegmentWriter:
    """Appends vectors (and local features) of one segment under a staging directory."""

    def __init__(self, directory: Path, dim: int | None, feature_dim: int | None = None,
                 max_keypoints: int | None = None, dtype: str = "float32", coder=None, feature_codec=None) -> None:
        self.name = directory.name
        self.directory = directory
        self.dim = dim
        self.max_keypoints = max_keypoints
        self.dtype = dtype
        self.coder = coder  # compact_codes.CoarseCodes: also write each vector's compact code
        directory.mkdir(parents=True)
        filename, self._numpy_dtype = VECTOR_FILES[dtype]
        self._vectors = open(directory / filename, "wb")  # noqa: SIM115 - closed in finish()
        self._codes = open(directory / CODES_FILE, "wb") if coder is not None else None  # noqa: SIM115
        self._code_size = coder.code_size if coder is not None else 0
        self._hash = hashlib.sha256()
        self.rows = 0
        self.features = FeatureStore(directory, feature_dim, mode="a", codec=feature_codec) if feature_dim else None

    def append(self, vectors: np.ndarray, codes: np.ndarray | None = None) -> int:
        """Add n×dim vectors (and their compact codes, computed here unless given); returns the row of the first."""
        vectors = np.asarray(vectors, np.float32)
        if self.dim is None:  # decided by the first vectors (e.g. after PCA is fitted)
            self.dim = vectors.shape[-1]
        vectors = vectors.reshape(-1, self.dim)
        data = np.ascontiguousarray(vectors, self._numpy_dtype).tobytes()
        self._vectors.write(data)
        self._hash.update(data)
        if codes is not None and self._codes is None:  # a merge copying codes: no coder needed
            self._codes = open(self.directory / CODES_FILE, "wb")  # noqa: SIM115 - closed in finish()
            self._code_size = codes.shape[1]
        if self._codes is not None:
            codes = self.coder.encode(vectors) if codes is None else codes
            self._codes.write(np.ascontiguousarray(codes, np.uint8).tobytes())
        first, self.rows = self.rows, self.rows + len(vectors)
        return first

    def append_features(self, features) -> tuple[int, int]:
        """Cache one image's strongest local features; returns its (offset, count) in this segment."""
        return self.features.append(features, max_keypoints=self.max_keypoints)

    def finish(self) -> StagedSegment:
        """Flush everything to disk (fsync) and describe the segment for the commit."""
        for handle in (self._vectors, self._codes):
            if handle is not None:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
        if self.features is not None:
            self.features.close()
        info = {"format": SEGMENT_FORMAT, "version": SEGMENT_VERSION, "dim": self.dim, "vectors": self.rows,
                "dtype": self.dtype, "code_size": self._code_size,
                "sha256": self._hash.hexdigest()}
        with open(self.directory / "segment.json", "w", encoding="utf-8") as handle:
            json.dump(info, handle)
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(self.directory)
        size = sum(f.stat().st_size for f in self.directory.iterdir())
        return StagedSegment(self.name, self.directory, self.rows, self.features is not None, size, info["sha256"])

    def abort(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self._vectors.close()
            self._codes.close()
        if self.features is not None:
            self.features.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class Staging:
    """A writer's private area: staging/<writer>/, marked alive by an flock on staging/<writer>.lock."""

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = Path(index_dir)
        root = self.index_dir / STAGING_DIR
        root.mkdir(exist_ok=True)
        self.writer = uuid.uuid4().hex[:16]
        self.directory = root / self.writer
        self._lock = os.open(root / f"{self.writer}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.directory.mkdir()

    def new_segment(self, dim: int | None, feature_dim: int | None = None, max_keypoints: int | None = None,
                    dtype: str = "float32", coder=None, feature_codec=None) -> SegmentWriter:
        """A writer for one more segment in this staging area (dim None: set by the first vectors)."""
        return SegmentWriter(self.directory / f"seg-{uuid.uuid4().hex[:16]}", dim, feature_dim, max_keypoints,
                             dtype, coder, feature_codec)

    def close(self) -> None:
        """Remove what was not committed, then the lock."""
        shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(self.index_dir / STAGING_DIR / f"{self.writer}.lock")
        os.close(self._lock)

    def __enter__(self):  # no "-> Self": typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class SharedStaging:
    """Another process's view of a writer's staging area (a cluster worker writing segments
    that the driver commits): new segments only; the owning `Staging` holds the lock and
    removes what is not committed."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    new_segment = Staging.new_segment  # reads only self.directory


def publish(index_dir: Path, staged: list[StagedSegment]) -> list[Path]:
    """Move staged segments into segments/ (call inside the commit transaction)."""
    target_root = Path(index_dir) / SEGMENTS_DIR
    target_root.mkdir(exist_ok=True)
    moved = []
    for segment in staged:
        target = target_root / segment.name
        os.replace(segment.directory, target)
        segment.directory = target
        moved.append(target)
    fsync_dir(target_root)
    return moved


def unpublish(paths: list[Path]) -> None:
    """Undo `publish` after a failed commit: those files belong to nobody."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def collect_garbage(index_dir: Path, db) -> int:
    """Remove what no commit needs; returns folders removed.

    Call it first thing inside a write transaction: a segment that this transaction
    drops is still live for readers until COMMIT, so only earlier drops may go.

    Dead writers' staging areas; segments a crashed commit moved in but never committed;
    segments dropped by a merge, once no reader is taking a snapshot.
    """
    index_dir = Path(index_dir)
    removed = 0
    staging = index_dir / STAGING_DIR
    for lock in staging.glob("*.lock") if staging.is_dir() else []:
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:  # its writer finished between the listing and here
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live writer
        else:
            shutil.rmtree(staging / lock.stem, ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed += 1
        finally:
            os.close(fd)
    for folder in staging.iterdir() if staging.is_dir() else []:
        if folder.is_dir() and not (staging / f"{folder.name}.lock").exists():
            shutil.rmtree(folder, ignore_errors=True)  # its writer is gone (e.g. a cluster worker wrote late)
            removed += 1
    known = {name for (name,) in db.execute("SELECT name FROM segments")}
    segments_root = index_dir / SEGMENTS_DIR
    for folder in segments_root.iterdir() if segments_root.is_dir() else []:
        if folder.name not in known:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    dropped = [name for (name,) in db.execute("SELECT name FROM segments WHERE state = 'dropped'")]
    if dropped:
        with readers_lock(index_dir, exclusive=True, wait=False) as held:
            if held:
                for name in dropped:
                    shutil.rmtree(segments_root / name, ignore_errors=True)
                db.executemany("DELETE FROM segments WHERE name = ?", [(n,) for n in dropped])
                removed += len(dropped)
    return removed


def copy_segment(index_dir: Path, segment: dict, staging_dir: Path) -> StagedSegment:
    """Copy a committed segment into a staging directory (fsynced), e.g. to save an index elsewhere."""
    target = Path(staging_dir) / segment["name"]
    shutil.copytree(segment_dir(index_dir, segment["name"]), target)
    for child in target.iterdir():
        with open(child, "rb+") as handle:
            os.fsync(handle.fileno())
    fsync_dir(target)
    return StagedSegment(segment["name"], target, segment["vectors"], bool(segment["features"]),
                         segment["bytes"], segment["sha256"])


# --- reading ----------------------------------------------------------------------------
def segment_dir(index_dir: Path, name: str) -> Path:
    return Path(index_dir) / SEGMENTS_DIR / name


def read_vectors(directory: Path, dim: int, dtype: str, rows: np.ndarray) -> np.ndarray:
    """Rows of a segment's vectors as float32 (len(rows) × dim), read with pread, not mapped.

    A writer reads back what it staged this way so that the pages it touches stay in the
    page cache, not in its own resident memory (a build's peak memory must not grow with
    the collection; memory-mapped reads would count every touched page).
    """
    filename, numpy_dtype = VECTOR_FILES[dtype]
    row_bytes = dim * np.dtype(numpy_dtype).itemsize
    out = np.empty((len(rows), dim), np.float32)
    fd = os.open(directory / filename, os.O_RDONLY)
    try:
        for k, row in enumerate(rows):
            out[k] = np.frombuffer(os.pread(fd, row_bytes, int(row) * row_bytes), numpy_dtype)
    finally:
        os.close(fd)
    return out


def vector_blocks(directory: Path, dim: int, dtype: str, count: int, block: int = 4096):
    """A segment's vectors in order, `block` rows at a time (float32), read without mapping."""
    filename, numpy_dtype = VECTOR_FILES[dtype]
    with open(directory / filename, "rb") as handle:
        for start in range(0, count, block):
            rows = min(block, count - start)
            yield np.fromfile(handle, numpy_dtype, rows * dim).reshape(rows, dim).astype(np.float32)


def add_codes(staged: StagedSegment, coder, dim: int, dtype: str) -> None:
    """Write the compact codes of a staged segment whose vectors were written before training."""
    with open(staged.directory / CODES_FILE, "wb") as handle:
        handle.writelines(np.ascontiguousarray(coder.encode(block)).tobytes()
                          for block in vector_blocks(staged.directory, dim, dtype, staged.vectors))
        handle.flush()
        os.fsync(handle.fileno())
    info_path = staged.directory / "segment.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["code_size"] = coder.code_size
    info_path.write_text(json.dumps(info), encoding="utf-8")
    staged.bytes += (staged.directory / CODES_FILE).stat().st_size


def open_codes(index_dir: Path, name: str, count: int, code_size: int) -> np.ndarray:
    """The segment's compact codes, memory-mapped: count × code_size uint8."""
    path = segment_dir(index_dir, name) / CODES_FILE
    if not path.is_file() or path.stat().st_size != count * code_size:
        raise IndexDamagedError(f"segment file {path} is missing or not {count} × {code_size} bytes; "
                                f"run `vladsearch check {index_dir}`")
    return np.memmap(path, np.uint8, "r", shape=(count, code_size)) if count else np.zeros((0, code_size), np.uint8)


def open_vectors(index_dir: Path, name: str, dim: int, count: int, dtype: str = "float32",
                 directory: Path | None = None) -> np.ndarray:
    """The segment's vectors, memory-mapped: count × dim (read-only; float32 or float16)."""
    filename, numpy_dtype = VECTOR_FILES[dtype]
    path = (directory or segment_dir(index_dir, name)) / filename
    itemsize = np.dtype(numpy_dtype).itemsize
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise IndexDamagedError(f"segment file {path} is missing ({exc.strerror}); run `vladsearch check "
                                f"{index_dir}`") from None
    if size != count * dim * itemsize:
        raise IndexDamagedError(f"segment file {path} holds {size} bytes, the catalog expects {count} × {dim} "
                                f"{dtype} = {count * dim * itemsize}; run `vladsearch check {index_dir}`")
    if count == 0:
        return np.zeros((0, dim), np.float32)
    return np.memmap(path, numpy_dtype, "r", shape=(count, dim))


def open_features(index_dir: Path, name: str, dim: int, codec=None) -> FeatureStore:
    directory = segment_dir(index_dir, name)
    try:
        store = FeatureStore(directory, dim, mode="r", codec=codec)
        store.get(0, 0)  # map the files now: a mapping outlives a later unlink by a merge
        return store
    except (OSError, ValueError) as exc:
        raise IndexDamagedError(f"the feature cache of segment {directory} is damaged ({exc}); "
                                f"run `vladsearch check {index_dir}`") from None


def verify_segment(index_dir: Path, segment: dict, dim: int, feature_dim: int | None, codec=None) -> list[str]:
    """Problems found in one committed segment's files (empty when it is sound); codec: the index's
    descriptor codes (quantizer.DescriptorCodes) when its feature cache is compact."""
    directory = segment_dir(index_dir, segment["name"])
    problems = []
    try:
        info = json.loads((directory / "segment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{directory / 'segment.json'}: unreadable ({exc})"]
    if info.get("dim") != dim or info.get("vectors") != segment["vectors"]:
        problems.append(f"{directory / 'segment.json'}: {info.get('vectors')} vectors of {info.get('dim')} "
                        f"dimensions, the catalog says {segment['vectors']} of {dim}")
    path = directory / VECTOR_FILES[info.get("dtype", "float32")][0]
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    except OSError as exc:
        return problems + [f"{path}: unreadable ({exc.strerror})"]
    if digest.hexdigest() != segment["sha256"]:
        problems.append(f"{path}: checksum mismatch (the file was changed or damaged)")
    code_size = info.get("code_size", 0)
    if code_size and (not (directory / CODES_FILE).is_file()
                      or (directory / CODES_FILE).stat().st_size != code_size * segment["vectors"]):
        problems.append(f"{directory / CODES_FILE}: missing or not {segment['vectors']} × {code_size} bytes")
    if segment["features"] and feature_dim:
        try:
            FeatureStore(directory, feature_dim, mode="r", codec=codec)
        except (OSError, ValueError) as exc:
            problems.append(f"{directory}: feature cache unreadable ({exc})")
    return problems
