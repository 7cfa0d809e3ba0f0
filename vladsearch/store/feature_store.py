"""An append-only on-disk cache of local features, so that reranking never re-decodes
database images.

    features/
      store.json        {"format", "version", "dim", "keypoint_dtype", "descriptor_dtype"}
      keypoints.bin     rows of 2 float32: (x, y) in original-image pixels
      descriptors.bin   rows of `dim` float16

Row i of both files is the same keypoint; an image owns `count` consecutive rows from
`offset`, which the caller keeps (in the image table). Keypoints stay float32 because
float16 has an 11-bit mantissa: above 2048 px its step is 2 px or more, as coarse as the
verification threshold. Descriptors are float16: SIFT values are integers ≤ 255 (exact
in float16) and unit-norm descriptors keep ~3 significant digits, far finer than
descriptor noise, at half the disk and page-cache cost.

Disk cost per image: keypoints · (2·4 + dim·2) bytes, e.g. 1024 SIFT keypoints
(dim 128): 1024 · (8 + 256) = 270,336 bytes ≈ 264 KiB; 1024 SuperPoint (dim 256): 520 KiB.
A million images at 1024 SIFT keypoints: ≈ 252 GiB — cap keypoints lower for large
collections (reranking needs a few hundred strong ones).

Crash safety: each index segment has its own store, written before its commit and never
changed after (segments.py); `committed_rows` and `truncate` serve a store whose caller
records its committed row count elsewhere (format 1 indexes kept it in their manifest).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from vladsearch.features.base import Features

FORMAT_NAME = "vladsearch-feature-store"
FORMAT_VERSION = 1
KEYPOINT_DTYPE = np.dtype("<f4")
# The compact cache (with a descriptor codec) keeps keypoints in half pixels as uint16:
# 0.5 px steps up to 32,767 px, far finer than the 4 px verification threshold.
COMPACT_KEYPOINT_DTYPE = np.dtype("<u2")
COMPACT_KEYPOINT_STEP = 0.5
DESCRIPTOR_DTYPE = np.dtype("<f2")
FLOAT16_MAX = float(np.finfo(np.float16).max)
_FLOAT32_OF_FLOAT16 = np.arange(1 << 16, dtype=np.uint16).view(DESCRIPTOR_DTYPE).astype(np.float32)


def bytes_per_image(avg_keypoints: float, dim: int) -> int:
    """Disk bytes for one image with `avg_keypoints` keypoints of dimension `dim`."""
    return round(avg_keypoints * (2 * KEYPOINT_DTYPE.itemsize + dim * DESCRIPTOR_DTYPE.itemsize))


class FeatureStore:
    """Keypoints and descriptors of many images in two append-only binary files.

    mode "r": read only (the directory must exist); mode "a": create if needed, append.
    `get(offset, count)` reads through np.memmap, so only the pages a query touches are
    read from disk; the maps are reopened lazily when rows were appended since.
    """

    def __init__(self, directory: str | os.PathLike, dim: int, mode: str = "r",
                 committed_rows: int | None = None, codec=None) -> None:
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.directory = Path(directory)
        self.dim = int(dim)
        self.mode = mode
        # compact_codes.DescriptorCodes: descriptors stored as its uint8 codes (compact cache)
        self.codec = codec
        self._kp_path = self.directory / "keypoints.bin"
        self._desc_path = self.directory / "descriptors.bin"
        self._kp_file = self._desc_file = None
        self._maps: tuple[np.memmap, np.memmap] | None = None
        self._mapped_rows = 0
        if mode == "r":
            if not (self.directory / "store.json").is_file():
                raise FileNotFoundError(f"no feature store in {self.directory} (store.json missing): "
                                        "rebuild the index with reranking enabled to cache local features")
            self._check_metadata()
            self._rows = self._complete_rows()
            if committed_rows is not None:  # rows past the manifest's count were never committed
                self._rows = min(self._rows, committed_rows)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            if (self.directory / "store.json").is_file():
                self._check_metadata()
            else:
                self._write_metadata()
            self._rows = self._complete_rows()
            if committed_rows is not None:
                if committed_rows > self._rows:
                    raise ValueError(f"feature store {self.directory} holds {self._rows} rows but the index "
                                     f"committed {committed_rows}: the cache lost data; rebuild the index")
                self._rows = committed_rows
            # Rows beyond those complete in both files are half-written: drop them so that
            # new rows line up in keypoints.bin and descriptors.bin.
            self._truncate_files(self._rows)
            # Handles live as long as the store; close() (or `with`) releases them.
            self._kp_file = open(self._kp_path, "ab")  # noqa: SIM115
            self._desc_file = open(self._desc_path, "ab")  # noqa: SIM115

    # --- metadata ------------------------------------------------------------------
    def _metadata(self) -> dict:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "dim": self.dim,
                "keypoint_dtype": self._kp_dtype.str,
                **({"descriptor_dtype": DESCRIPTOR_DTYPE.str} if self.codec is None else
                   {"descriptor_dtype": "|u1", "descriptor_codes": self.codec.name})}

    def _write_metadata(self) -> None:
        tmp = self.directory / "store.json.tmp"
        tmp.write_text(json.dumps(self._metadata(), indent=1))
        os.replace(tmp, self.directory / "store.json")

    def _check_metadata(self) -> None:
        try:
            found = json.loads((self.directory / "store.json").read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"unreadable feature store metadata {self.directory / 'store.json'}: {exc}") from None
        expected = self._metadata()
        if found.get("format") != FORMAT_NAME or found.get("version") != FORMAT_VERSION:
            raise ValueError(f"{self.directory} holds {found.get('format')} version {found.get('version')}; "
                             f"this vladsearch reads {FORMAT_NAME} version {FORMAT_VERSION}")
        if found != expected:
            raise ValueError(f"feature store {self.directory} has dim {found.get('dim')} and descriptors "
                             f"{found.get('descriptor_codes', found.get('descriptor_dtype'))}, but dim {self.dim} and "
                             f"{expected.get('descriptor_codes', expected.get('descriptor_dtype'))} were asked for: it "
                             "was built with other features or another --feature-codes")

    # --- sizes -----------------------------------------------------------------------
    @property
    def _kp_dtype(self) -> np.dtype:
        return KEYPOINT_DTYPE if self.codec is None else COMPACT_KEYPOINT_DTYPE

    @property
    def _kp_row_bytes(self) -> int:
        return 2 * self._kp_dtype.itemsize

    @property
    def _desc_row_bytes(self) -> int:
        return self.dim * DESCRIPTOR_DTYPE.itemsize if self.codec is None else self.codec.code_size

    def _complete_rows(self) -> int:
        kp = self._kp_path.stat().st_size // self._kp_row_bytes if self._kp_path.exists() else 0
        desc = self._desc_path.stat().st_size // self._desc_row_bytes if self._desc_path.exists() else 0
        return min(kp, desc)

    @property
    def committed_rows(self) -> int:
        """Rows written so far (by this object, or on disk when it was opened)."""
        return self._rows

    def bytes_per_image(self, avg_keypoints: float) -> int:
        """Disk bytes per image: avg_keypoints · (8 + 2·dim); 1024 SIFT keypoints ≈ 264 KiB."""
        return bytes_per_image(avg_keypoints, self.dim)

    # --- writing ---------------------------------------------------------------------
    def append(self, features: Features, max_keypoints: int | None = 1024) -> tuple[int, int]:
        """Store the `max_keypoints` highest-scoring features of one image (None: all).

        Rows are written strongest first, so `get(offset, min(count, k))` returns the
        k strongest. features: keypoints N×2, descriptors N×dim, scores N
        -> (offset, count): the image's rows, to pass to `get` later.
        """
        self._check_writable("append to")
        keypoints = np.asarray(features.keypoints, KEYPOINT_DTYPE).reshape(-1, 2)
        descriptors = np.asarray(features.descriptors, np.float32)
        if descriptors.ndim != 2 or descriptors.shape[1] != self.dim or len(descriptors) != len(keypoints):
            raise ValueError(f"expected {len(keypoints)}×{self.dim} descriptors for {len(keypoints)} keypoints, "
                             f"got {descriptors.shape}")
        scores = np.asarray(features.scores, np.float32).reshape(-1)
        if len(scores) != len(keypoints):
            raise ValueError(f"{len(scores)} scores for {len(keypoints)} keypoints")
        keep = np.argsort(-scores, kind="stable")[:max_keypoints]
        keypoints, descriptors = keypoints[keep], descriptors[keep]
        if not np.isfinite(keypoints).all() or not np.isfinite(descriptors).all():
            raise ValueError("features hold NaN or infinite values")
        if self.codec is not None:
            offset = self._rows
            halves = np.clip(np.round(keypoints / COMPACT_KEYPOINT_STEP), 0, np.iinfo(np.uint16).max)
            self._kp_file.write(np.ascontiguousarray(halves.astype(COMPACT_KEYPOINT_DTYPE)).tobytes())
            self._desc_file.write(np.ascontiguousarray(self.codec.encode(descriptors), np.uint8).tobytes())
            self._rows += len(keypoints)
            return offset, len(keypoints)
        if len(descriptors) and np.abs(descriptors).max() > FLOAT16_MAX:
            raise ValueError(f"descriptor values beyond float16 range (±{FLOAT16_MAX:.0f}); normalise them first")
        offset = self._rows
        self._kp_file.write(np.ascontiguousarray(keypoints).tobytes())
        self._desc_file.write(np.ascontiguousarray(descriptors.astype(DESCRIPTOR_DTYPE)).tobytes())
        self._rows += len(keypoints)
        return offset, len(keypoints)

    def _check_writable(self, action: str) -> None:
        if self.mode != "a":
            raise ValueError(f"feature store {self.directory} is open read-only: open it with mode='a' to {action} it")
        if self._kp_file is None:
            raise ValueError(f"feature store {self.directory} is closed")

    def flush(self) -> None:
        """Push appended rows to disk (fsync): after this, `committed_rows` may go in a manifest."""
        if self.mode != "a" or self._kp_file is None:
            return
        for handle in (self._kp_file, self._desc_file):
            handle.flush()
            os.fsync(handle.fileno())

    def truncate(self, rows: int) -> None:
        """Drop every row from `rows` on (rows written after the last committed manifest)."""
        self._check_writable("truncate")
        self.flush()
        if not 0 <= rows <= self._rows:
            raise ValueError(f"cannot truncate {self.directory} to {rows} rows: it holds {self._rows} "
                             "(the feature cache lost rows the index needs; rebuild it)")
        self._maps = None  # a map must not outlive the bytes it shows (and Windows forbids it)
        self._truncate_files(rows)
        self._rows = rows
        self.flush()

    def _truncate_files(self, rows: int) -> None:
        for path, row_bytes in ((self._kp_path, self._kp_row_bytes), (self._desc_path, self._desc_row_bytes)):
            if not path.exists():
                path.touch()
            if path.stat().st_size != rows * row_bytes:
                os.truncate(path, rows * row_bytes)

    # --- reading ---------------------------------------------------------------------
    def _mapped(self) -> tuple[np.memmap, np.memmap]:
        if self._maps is None or self._mapped_rows != self._rows:
            if self._kp_file is not None:
                for handle in (self._kp_file, self._desc_file):
                    handle.flush()  # the map reads the file, not our write buffer
            dtype, width = (DESCRIPTOR_DTYPE, self.dim) if self.codec is None else (np.uint8, self.codec.code_size)
            if self._rows == 0:
                self._maps = (np.zeros((0, 2), self._kp_dtype), np.zeros((0, width), dtype))
            else:
                self._maps = (np.memmap(self._kp_path, self._kp_dtype, "r", shape=(self._rows, 2)),
                              np.memmap(self._desc_path, dtype, "r", shape=(self._rows, width)))
            self._mapped_rows = self._rows
        return self._maps

    def get(self, offset: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Features of one image: (keypoints count×2 float32, descriptors count×dim float32)."""
        if offset < 0 or count < 0 or offset + count > self._rows:
            raise ValueError(f"rows [{offset}, {offset + count}) are outside the feature store "
                             f"({self._rows} rows): the index and its feature cache disagree")
        keypoints, descriptors = self._mapped()
        points = np.array(keypoints[offset:offset + count], np.float32)
        if self.codec is None:
            # float16 -> float32 through a table of all 65,536 values: 2-3× faster than astype
            return points, np.take(_FLOAT32_OF_FLOAT16, descriptors[offset:offset + count].view("<u2"))
        rows = np.array(descriptors[offset:offset + count])
        return points * np.float32(COMPACT_KEYPOINT_STEP), self.codec.decode(rows)

    # --- lifetime --------------------------------------------------------------------
    def close(self) -> None:
        if self.mode == "a" and self._kp_file is not None:
            self.flush()
            self._kp_file.close()
            self._desc_file.close()
            self._kp_file = self._desc_file = None
        self._maps = None

    def __enter__(self):  # no "-> Self": typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __len__(self) -> int:
        return self._rows
