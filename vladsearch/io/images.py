"""Finding image files and decoding them once, robustly, to grayscale at a bounded size.

Every image goes through `load_image` exactly once per build: the bytes are read once,
hashed for the image table, and decoded straight to grayscale. Large JPEGs are decoded
at a reduced scale by libjpeg (IMREAD_REDUCED_*), which is several times faster than
decoding in full and resizing. Any failure raises `ImageError` with a reason a person
can read, so that the batch can skip the file and report it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vladsearch.io import image_formats
from vladsearch.io.image_formats import AVIF_EXTENSIONS, HEIF_EXTENSIONS, RAW_EXTENSIONS

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".gif",
    *HEIF_EXTENSIONS, *AVIF_EXTENSIONS, *RAW_EXTENSIONS,  # through optional readers (image_formats.py)
)
# Pillow's own error threshold (2 × Image.MAX_IMAGE_PIXELS, ~13.4k × 13.4k): above any
# 150 MP camera, and a grayscale decode stays under 180 MB. Checked on the header, before
# any pixel is decoded, so a few-kB PNG that inflates to gigabytes is refused cheaply.
DEFAULT_MAX_PIXELS = 178_956_970
MAX_PIXELS = DEFAULT_MAX_PIXELS  # old name, kept for imports
# Formats whose EXIF block sits in the header; for PNG, Pillow's getexif() decodes every pixel.
_EXIF_IN_HEADER = {"JPEG", "MPO", "TIFF", "WEBP"}

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


@dataclass
class FolderScan:
    """What a walk of a folder found: image files, and every other file with why it is not one.

    images      sorted image paths
    not_images  (path, reason) of the other files; hidden files (a name starting with ".")
                and hidden or *.vlad folders are not walked, hence in neither list
    """

    images: list[Path]
    not_images: list[tuple[Path, str]]


def list_images(root: str | os.PathLike) -> list[Path]:
    """All image files under `root` (recursive, sorted, hidden files and *.vlad folders skipped).

    See `scan_folder`, which also returns the files that are not images.
    """
    return scan_folder(root).images


def not_image_reason(path: str | os.PathLike) -> str:
    suffix = os.path.splitext(str(path))[1].lower()
    return f"not an image ({suffix} files are not read)" if suffix else "not an image (no file extension)"


def scan_folder(root: str | os.PathLike) -> FolderScan:
    """Walk `root`: its image files and, with their reason, its other files (see FolderScan).

    Symlinked folders are followed, but each real folder is visited once (by device and
    inode), so loops such as `ln -s .. up` end, and each real file is listed once, under
    the first path the walk meets (real folders are walked before symlinked siblings).
    Raises FileNotFoundError with an actionable message.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    if root.is_file():
        return FolderScan([root], [])
    found, others, seen = [], [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        key = _identity(dirpath)
        if key in seen:
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".") and not d.endswith(".vlad")),
                             key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            key = _identity(os.path.join(dirpath, name))
            if key not in seen:
                seen.add(key)
                if is_image_file(name):
                    found.append(Path(dirpath) / name)
                else:
                    others.append((Path(dirpath) / name, not_image_reason(name)))
    return FolderScan(sorted(found), sorted(others))


def _identity(path: str) -> tuple:
    """(st_dev, st_ino) of what `path` points to; its realpath where the inode is unknown or dangling."""
    try:
        st = os.stat(path)
        if st.st_ino:
            return st.st_dev, st.st_ino
    except OSError:
        pass
    return (os.path.realpath(path),)


def _open_pillow(data: bytes):
    """Pillow image for `data` without pixels decoded, ignoring Pillow's process-wide bomb limit.

    Callers check `max_pixels` on `.size` first. Image.MAX_IMAGE_PIXELS belongs to the whole
    process (and other code in it), so it is left alone: past it, the format's own plugin
    is called directly, as Image.open does, minus that check. Raises UnidentifiedImageError.
    """
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            pass
    Image.init()
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        accepted = accept(data[:16]) if accept else True
        if accepted and not isinstance(accepted, str):
            try:
                return factory(io.BytesIO(data))
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue
    raise UnidentifiedImageError("cannot identify image file")


def _image_header_size(data: bytes, max_pixels: int | None = None) -> tuple[int, int] | None:
    """(width, height) as displayed, read from the header; None if unknown; ImageError if > max_pixels."""
    try:
        im = _open_pillow(data)
    except Exception:  # noqa: BLE001 - any header problem: let OpenCV decide
        return None
    with im:
        width, height = im.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageError(f"image too large ({width}×{height} pixels; limit {max_pixels} pixels: "
                             "raise it with --max-pixels)")
        with contextlib.suppress(Exception):  # unreadable EXIF: keep the stored orientation
            # EXIF orientations 5-8 swap width and height after rotation.
            if im.format in _EXIF_IN_HEADER and im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
        return width, height


def _check_not_truncated(data: bytes) -> None:
    """Reject JPEGs cut short; libjpeg would silently fill the missing part with grey."""
    if data[:2] != b"\xff\xd8":
        return
    if data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9":
        return
    # Some writers append data after the end-of-image marker: let Pillow judge.
    try:
        with _open_pillow(data) as im:
            im.draft("L", (64, 64))  # decode at 1/8 scale: fast, still reads every scan
            im.load()
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"truncated or corrupt JPEG ({exc})") from None


def decode_gray(data: bytes, max_side: int | None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                name: str | os.PathLike | None = None) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Decode encoded image bytes to grayscale uint8 with longer side ≤ max_side.

    Refuses images over `max_pixels` (None: no limit) from the header, before decoding.
    Applies EXIF orientation; handles 16-bit, float, RGBA, CMYK, palette and grayscale files;
    a file of frames (GIF, multi-page TIFF, animated WebP, HEIF sequence) gives its first.
    `name` (the file's name) routes camera RAW files, which only their extension tells apart
    from TIFF, to rawpy. Returns (gray H×W uint8, scale, (orig_width, orig_height)).
    """
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        if name is not None and image_formats.is_raw_name(name):
            gray, size = image_formats.decode_raw(data, str(name), max_side, max_pixels)
            return _fit(gray, size, max_side)
        image_formats.prepare_readers(data)
    except (image_formats.MissingReader, ValueError) as exc:
        raise ImageError(str(exc)) from None
    size = _image_header_size(data, max_pixels)
    _check_not_truncated(data)
    is_jpeg = data[:2] == b"\xff\xd8"
    # ANYDEPTH keeps 16-bit and float samples, which _to_uint8 stretches; without it OpenCV
    # divides 16-bit by 256 (12-bit camera data turns black) and truncates floats in [0, 1].
    flag = cv2.IMREAD_GRAYSCALE if is_jpeg else cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH
    reduced = False
    if size is not None and max_side and is_jpeg:
        # libjpeg can decode at 1/2, 1/4, 1/8 directly; pick the smallest that stays ≥ max_side.
        for factor in (8, 4, 2):
            if max(size) / factor >= max_side:
                flag, reduced = _REDUCED_FLAGS[factor], True
                break
    gray = _decode_with_pillow(data) if _pillow_first(data) else _decode_with_opencv(data, flag)
    if gray is None:
        gray = _decode_with_pillow(data)
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY)
    if gray.size == 0:
        raise ImageError("image has no pixels")
    gray = _to_uint8(gray)
    if size is None or not reduced and gray.shape[1] != size[0]:
        size = (gray.shape[1], gray.shape[0])
    return _fit(gray, size, max_side)


def _fit(gray: np.ndarray, size: tuple[int, int], max_side: int | None) -> tuple[np.ndarray, float, tuple[int, int]]:
    """(gray with longer side ≤ max_side, original pixels per gray pixel, size) for decode_gray."""
    longest = max(gray.shape[:2])
    if max_side and longest > max_side:
        factor = max_side / longest
        new_size = (max(1, round(gray.shape[1] * factor)), max(1, round(gray.shape[0] * factor)))
        gray = cv2.resize(gray, new_size, interpolation=cv2.INTER_AREA)
    scale = size[0] / gray.shape[1]
    return np.ascontiguousarray(gray), float(scale), (int(size[0]), int(size[1]))


def _pillow_first(data: bytes) -> bool:
    """HEIF, and AVIF where Pillow reads it: Pillow applies their rotation boxes and EXIF orientation."""
    kind = image_formats.container_kind(data)
    if kind == "avif":
        from PIL import features

        return bool(features.check("avif"))
    return kind == "heif"


def _decode_with_opencv(data: bytes, flag: int) -> np.ndarray | None:
    """OpenCV's decode (None when OpenCV does not know the format); ImageError when it fails on the data."""
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error as exc:
        raise ImageError(f"cannot decode ({exc.err})") from None


def _to_uint8(gray: np.ndarray) -> np.ndarray:
    """Stretch 16-bit, 32-bit and float samples to 0-255 (NaN and ±inf safe; constant → 0)."""
    if gray.dtype == np.uint8:
        return gray
    if gray.dtype.kind == "f":
        # Float files (scientific tools) often hold outliers or no-data sentinels: use the
        # 0.1-99.9 percentiles of the finite values (from a ≤ 1M sample), then clip.
        finite = gray.ravel()[:: max(1, gray.size // 1_000_000)]
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            return np.zeros(gray.shape, np.uint8)
        low, high = (float(v) for v in np.percentile(finite, [0.1, 99.9]))
        gray = np.require(gray, np.float32, "W")  # in place when OpenCV's own float32 result
        cv2.patchNaNs(gray, low)
        gray = cv2.min(cv2.max(gray, low), high)  # clamps ±inf and outliers too
    else:
        # Integers: the stored range is meaningful, so min-max keeps full-range 16-bit exact.
        low, high = float(gray.min()), float(gray.max())
    if high <= low:
        return np.zeros(gray.shape, np.uint8)
    alpha = 255.0 / (high - low)
    # Every value is ≥ low here, so the "Abs" is a no-op; the result saturates to 0-255.
    return cv2.convertScaleAbs(gray, alpha=alpha, beta=-low * alpha)


def _decode_with_pillow(data: bytes) -> np.ndarray:
    """Fallback for formats OpenCV lacks; raises ImageError for non-images."""
    from PIL import ImageOps, UnidentifiedImageError

    try:
        with _open_pillow(data) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith(("I", "F")):  # keep the depth (native byte order): _to_uint8 stretches it
                return np.asarray(im).astype(np.float32 if im.mode == "F" else np.int32)
            return np.asarray(im.convert("L"))
    except UnidentifiedImageError:
        raise ImageError(image_formats.missing_reader_reason(data) or "not an image file (unrecognised format)") \
            from None
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"cannot decode ({exc})") from None


def load_image(path: str | os.PathLike, max_side: int | None = 1024,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read, hash and decode one image file; raises ImageError with the reason on failure.

    `max_pixels` (None: no limit) refuses larger images from their header, before decoding.
    """
    try:
        stat = os.stat(path)
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageError(f"cannot read file ({exc.strerror})") from None
    gray, scale, size = decode_gray(data, max_side, max_pixels, name=path)
    return LoadedImage(gray, scale, size, stat.st_size, stat.st_mtime, hashlib.sha1(data).hexdigest())


# --- lists of images (a folder, an image, or a text file naming them) --------------------
LIST_SUFFIXES = (".txt", ".lst")


def read_image_list(list_file: Path) -> list[Path]:
    """Paths listed one per line in a text file (blank lines and # comments skipped).

    Relative entries are relative to the list's folder; every path comes back absolute.
    """
    base = Path(os.path.abspath(list_file)).parent
    paths = []
    for line in Path(list_file).read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if "://" in entry:
            raise ValueError(f"{list_file}: {entry!r} is a URI; list paths that every worker can read "
                             "(mount the bucket at the same path on every node, see docs/RAY.md)")
        paths.append(Path(os.path.abspath(base / entry)))
    return paths


def is_image_list(source: str | os.PathLike) -> bool:
    path = Path(source)
    return path.is_file() and path.suffix.lower() in LIST_SUFFIXES and not is_image_file(path)


def collect_inputs(source: str | os.PathLike) -> tuple[Path, list[Path]]:
    """(root, image paths) for a folder, an image file, or a text file listing images (see scan_inputs)."""
    root, scan = scan_inputs(source)
    return root, scan.images


def scan_inputs(source: str | os.PathLike) -> tuple[Path, FolderScan]:
    """(root, scan) for a folder, an image file, or a text file listing images.

    A list's root is the deepest folder holding every listed file (indexed names are
    relative to it, as they are to a folder); a list's files are all taken as images.
    """
    if is_image_list(source):
        paths = read_image_list(Path(source))
        if not paths:
            raise ValueError(f"{source} lists no images (one path per line)")
        return Path(os.path.commonpath([str(p.parent) for p in paths])), FolderScan(paths, [])
    root = Path(os.path.abspath(source))
    return root, scan_folder(root)


def expand_inputs(source: str | os.PathLike) -> list[Path]:
    """The image files of a folder, an image, or a list file (`add`)."""
    return scan_input(source).images


def scan_input(source: str | os.PathLike) -> FolderScan:
    """The image files of a folder, an image, or a list file, and the folder's other files (`add`)."""
    return FolderScan(read_image_list(Path(source)), []) if is_image_list(source) else scan_folder(source)
