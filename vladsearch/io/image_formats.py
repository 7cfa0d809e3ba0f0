"""Camera formats beyond what OpenCV decodes: HEIC/HEIF, AVIF and RAW, each through its own library.

- HEIC/HEIF (what phones write) through pillow-heif, registered as a Pillow opener when the
  first HEIF file arrives; libheif applies the file's rotation and mirroring itself.
- AVIF through OpenCV when it was built with libavif, else Pillow (its wheels read AVIF
  from 11.3 on).
- RAW (DNG, CR2, CR3, NEF, ARW, RAF, ORF, RW2) through rawpy (LibRaw): the JPEG preview the
  camera embedded when it is at least as large as needed, else a half-size demosaic. The
  sensor's orientation is applied to the preview as LibRaw applies it to a demosaic.

Each library is imported lazily. Without it, a file of that type fails with an
`ImageError` that names the install line, so the batch reports it and goes on.
"""

from __future__ import annotations

import io
import os

import cv2
import numpy as np

FORMATS_EXTRA = 'pip install "vladsearch[formats]"'
HEIF_EXTENSIONS = (".heic", ".heif", ".hif")
AVIF_EXTENSIONS = (".avif",)
RAW_EXTENSIONS = (".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2")
# ISO base media file brands (the `ftyp` box): HEVC-coded HEIF images and sequences, AV1-coded AVIF.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
# LibRaw's `flip`: how to turn the sensor's image upright (the demosaic applies it; the preview needs it).
_FLIP_ROTATIONS = {3: cv2.ROTATE_180, 5: cv2.ROTATE_90_COUNTERCLOCKWISE, 6: cv2.ROTATE_90_CLOCKWISE}

_heif_registered = False


class MissingReader(Exception):
    """A file whose format needs an optional library that is not installed; the message says how to add it."""


def container_kind(data: bytes) -> str | None:
    """"heif" or "avif" for an ISO-BMFF image (read from its `ftyp` box), else None."""
    if data[4:8] != b"ftyp":
        return None
    box_size = int.from_bytes(data[:4], "big")
    brands = {data[8:12]} | {data[i:i + 4] for i in range(16, min(box_size, len(data), 64) - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & _HEIF_BRANDS:
        return "heif"
    return None


def is_raw_name(name: str | os.PathLike) -> bool:
    return str(name).lower().endswith(RAW_EXTENSIONS)


def register_heif() -> None:
    """Let Pillow open HEIC/HEIF; MissingReader with the install line when pillow-heif is absent."""
    global _heif_registered
    if _heif_registered:
        return
    try:
        import pillow_heif
    except ImportError:
        raise MissingReader(f"HEIC needs pillow-heif: {FORMATS_EXTRA}") from None
    pillow_heif.register_heif_opener()
    _heif_registered = True


def prepare_readers(data: bytes) -> None:
    """Register the Pillow opener this file needs (HEIF); MissingReader when it cannot be had."""
    if container_kind(data) == "heif":
        register_heif()


def missing_reader_reason(data: bytes) -> str | None:
    """Why no installed reader decodes `data` when an optional one would (None: not such a format)."""
    kind = container_kind(data)
    if kind == "heif":
        try:
            register_heif()
        except MissingReader as exc:
            return str(exc)
    if kind == "avif":
        from PIL import features

        if not features.check("avif"):
            return f"AVIF needs Pillow ≥ 11.3 or an OpenCV built with libavif: {FORMATS_EXTRA}"
    return None


def _import_rawpy(name: str):
    try:
        import rawpy
    except ImportError:
        suffix = os.path.splitext(str(name))[1].lstrip(".").upper() or "RAW"
        raise MissingReader(f"{suffix} needs rawpy: {FORMATS_EXTRA}") from None
    return rawpy


def raw_size(raw) -> tuple[int, int]:
    """(width, height) of a RAW file as displayed (after the sensor's orientation)."""
    sizes = raw.sizes
    return (sizes.height, sizes.width) if sizes.flip in (5, 6) else (sizes.width, sizes.height)


def decode_raw(data: bytes, name: str, max_side: int | None, max_pixels: int | None,
               color: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a camera RAW file -> (image uint8 H×W gray, or H×W×3 RGB with color=True; (width, height)).

    The embedded preview is used when its longer side reaches min(max_side, half the sensor's
    longer side), which is what a half-size demosaic would give; else LibRaw demosaics at half
    size with the camera's white balance. Raises MissingReader without rawpy, ValueError for
    a file LibRaw cannot read or one over `max_pixels`.
    """
    rawpy = _import_rawpy(name)
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            size = raw_size(raw)
            if max_pixels is not None and size[0] * size[1] > max_pixels:
                raise ValueError(f"image too large ({size[0]}×{size[1]} pixels; limit {max_pixels} pixels: "
                                 "raise it with --max-pixels)")
            needed = max(size) // 2 if not max_side else min(max_side, max(size) // 2)
            image = _preview(raw, rawpy, needed, color)
            if image is None:
                rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
                image = rgb if color else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    except rawpy.LibRawError as exc:
        raise ValueError(f"cannot decode this RAW file ({type(exc).__name__}: {exc})") from None
    return np.ascontiguousarray(image), size


def _preview(raw, rawpy, needed: int, color: bool) -> np.ndarray | None:
    """The camera's embedded preview, upright, if it has ≥ `needed` pixels on its longer side; else None."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        # The preview's own EXIF orientation (if any) is ignored: the RAW's orientation rules.
        flags = (cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE) | cv2.IMREAD_IGNORE_ORIENTATION
        image = cv2.imdecode(np.frombuffer(thumb.data, np.uint8), flags)
        if image is not None and color:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:  # a bitmap, RGB
        image = np.asarray(thumb.data)
        if image.ndim == 3 and not color:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if image is None or image.size == 0 or max(image.shape[:2]) < needed:
        return None
    rotation = _FLIP_ROTATIONS.get(raw.sizes.flip)
    return cv2.rotate(image, rotation) if rotation is not None else image
