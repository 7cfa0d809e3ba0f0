"""Finding image files and decoding them once, robustly, to grayscale at a bounded size.

Every image goes through `load_image` exactly once per build: the bytes are read once,
hashed for the image table, and decoded straight to grayscale. Large JPEGs are decoded
at a reduced scale by libjpeg (IMREAD_REDUCED_*), which is several times faster than
decoding in full and resizing. Any failure raises `ImageError` with a reason a person
can read, so that the batch can skip the file and report it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".gif",
)
# Larger than any camera, small enough that a grayscale decode (≤ 1 GiB) cannot exhaust RAM.
MAX_PIXELS = 1 << 30

_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                  8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


class ImageError(Exception):
    """An image file that cannot be used; the message says why."""


@dataclass
class LoadedImage:
    """One decoded image.

    gray        H×W uint8, longer side ≤ max_side
    scale       original pixels per `gray` pixel (≥ 1 when downscaled)
    size        (width, height) of the original image
    file_size   bytes on disk; mtime: seconds since the epoch; sha1: hex digest of the bytes
    """

    gray: np.ndarray
    scale: float
    size: tuple[int, int]
    file_size: int
    mtime: float
    sha1: str


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def list_images(root: str | os.PathLike) -> list[Path]:
    """All image files under `root` (recursive, sorted, hidden files skipped).

    Raises FileNotFoundError / ValueError with an actionable message.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    if root.is_file():
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.endswith(".vlad"))
        found.extend(Path(dirpath) / name for name in filenames
                     if not name.startswith(".") and is_image_file(name))
    return sorted(found)


def _image_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding pixels, or None if unknown."""
    try:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.MAX_IMAGE_PIXELS = None  # we enforce MAX_PIXELS ourselves
            import io

            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                # EXIF orientations 5-8 swap width and height after rotation.
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                    width, height = height, width
                return width, height
    except Exception:  # noqa: BLE001 - any header problem: let OpenCV decide
        return None


def _check_not_truncated(data: bytes) -> None:
    """Reject JPEGs cut short; libjpeg would silently fill the missing part with grey."""
    if data[:2] != b"\xff\xd8":
        return
    if data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9":
        return
    # Some writers append data after the end-of-image marker: let Pillow judge.
    try:
        import io

        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.MAX_IMAGE_PIXELS = None
            with Image.open(io.BytesIO(data)) as im:
                im.draft("L", (64, 64))  # decode at 1/8 scale: fast, still reads every scan
                im.load()
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"truncated or corrupt JPEG ({exc})") from None


def decode_gray(data: bytes, max_side: int | None) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Decode encoded image bytes to grayscale uint8 with longer side ≤ max_side.

    Applies EXIF orientation; handles 16-bit, RGBA, CMYK, palette and grayscale files.
    Returns (gray H×W uint8, scale, (orig_width, orig_height)).
    """
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    _check_not_truncated(data)
    size = _image_header_size(data)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise ImageError(f"image too large ({size[0]}×{size[1]} pixels; limit {MAX_PIXELS} pixels)")
    flag = cv2.IMREAD_GRAYSCALE
    if size is not None and max_side and data[:2] == b"\xff\xd8":
        # libjpeg can decode at 1/2, 1/4, 1/8 directly; pick the smallest that stays ≥ max_side.
        for factor in (8, 4, 2):
            if max(size) / factor >= max_side:
                flag = _REDUCED_FLAGS[factor]
                break
    buffer = np.frombuffer(data, np.uint8)
    try:
        gray = cv2.imdecode(buffer, flag)
    except cv2.error as exc:
        raise ImageError(f"cannot decode ({exc.err})") from None
    if gray is None:
        gray = _decode_with_pillow(data)
    if gray.dtype != np.uint8:  # 16-bit or float files
        gray = cv2.normalize(gray, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY)
    if gray.size == 0:
        raise ImageError("image has no pixels")
    if size is None or flag == cv2.IMREAD_GRAYSCALE and gray.shape[1] != size[0]:
        size = (gray.shape[1], gray.shape[0])
    longest = max(gray.shape[:2])
    if max_side and longest > max_side:
        factor = max_side / longest
        new_size = (max(1, round(gray.shape[1] * factor)), max(1, round(gray.shape[0] * factor)))
        gray = cv2.resize(gray, new_size, interpolation=cv2.INTER_AREA)
    scale = size[0] / gray.shape[1]
    return np.ascontiguousarray(gray), float(scale), (int(size[0]), int(size[1]))


def _decode_with_pillow(data: bytes) -> np.ndarray:
    """Fallback for formats OpenCV lacks; raises ImageError for non-images."""
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.MAX_IMAGE_PIXELS = None
            with Image.open(io.BytesIO(data)) as im:
                im = ImageOps.exif_transpose(im)
                return np.asarray(im.convert("L"))
    except UnidentifiedImageError:
        raise ImageError("not an image file (unrecognised format)") from None
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"cannot decode ({exc})") from None


def load_image(path: str | os.PathLike, max_side: int | None = 1024) -> LoadedImage:
    """Read, hash and decode one image file; raises ImageError with the reason on failure."""
    try:
        stat = os.stat(path)
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageError(f"cannot read file ({exc.strerror})") from None
    gray, scale, size = decode_gray(data, max_side)
    return LoadedImage(gray, scale, size, stat.st_size, stat.st_mtime, hashlib.sha1(data).hexdigest())
