"""Files the service reads and writes: indexed images, thumbnails, uploads.

Being in the index is the permission to be served: a requested path must be the name of
an indexed image, which is relative to the index's root, or absolute for an image added
from another folder (`add INDEX OTHER_FOLDER`). Either way it is a plain path (no `..`,
no backslash, no empty or `.` component), and its real path (symlinks resolved) must still
lie under the real path of its indexed location: the root for a relative name, the
image's own folder for an absolute one. So no symlink leads a request out of where the
index's owner put the images. Uploads get fresh names that no client chooses.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path

from vladsearch.io import image_formats
from vladsearch.io.images import IMAGE_EXTENSIONS, ImageError
from vladsearch.server.errors import ServiceError

UPLOADS = "uploads"
_MAGIC = ((b"\xff\xd8", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
          (b"RIFF", ".webp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


def check_relative(path: str) -> str:
    """`path` if it is a plain relative path (the way the index names images under its root); else 400."""
    parts = path.split("/")
    if (not path or path.startswith("/") or "\\" in path or "\x00" in path or re.match(r"^[A-Za-z]:", path)
            or any(part in ("", ".", "..") for part in parts)):
        raise ServiceError(400, f"invalid image path {path!r}: give the indexed path relative to the index's "
                                "root, as search returns it (no '..', no absolute path)")
    return path


def check_indexed_name(name: str) -> str:
    """`name` if it is shaped like an image's name in the index (relative, or absolute and plain); else 400."""
    drive = re.match(r"^(/|[A-Za-z]:/)", name)
    if drive is None:
        return check_relative(name)
    rest = name[drive.end():]
    if not rest or "\\" in rest or "\x00" in rest or any(part in ("", ".", "..") for part in rest.split("/")):
        raise ServiceError(400, f"invalid image path {name!r}: give the indexed path as search returns it")
    return name


def resolve_indexed(root: Path, name: str) -> Path:
    """The real file of an indexed name (see the module's docstring); 404 when it leads out of its location."""
    check_indexed_name(name)
    if not re.match(r"^(/|[A-Za-z]:/)", name):
        return resolve_inside(root, name)
    folder, file_name = name.rsplit("/", 1)
    return resolve_inside(Path(folder or "/"), file_name)


def resolve_inside(root: Path, relative: str) -> Path:
    """The real file for an indexed relative path, or 404 when it (or a symlink on the way) leads out of root."""
    check_relative(relative)
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, relative))
    if os.path.commonpath([real_root, real]) != real_root or not os.path.isfile(real):
        raise ServiceError(404, f"{relative} is not a file inside its indexed folder (missing, or a symlink "
                                "leading out of it)")
    return Path(real)


def upload_name(filename: str, data: bytes) -> str:
    """A fresh, safe file name for an upload: date, random part, the client's name reduced to [A-Za-z0-9._-]."""
    stem, suffix = os.path.splitext(os.path.basename(filename.replace("\\", "/")))
    if suffix.lower() not in IMAGE_EXTENSIONS:
        kind = image_formats.container_kind(data)
        suffix = f".{kind}" if kind else next((s for magic, s in _MAGIC if data.startswith(magic)), ".img")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:60] or "image"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}-{stem}{suffix.lower()}"


def write_new(folder: Path, name: str, data: bytes) -> Path:
    """Write `data` to folder/name, never replacing a file, visible under its name only when complete."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    partial = folder / f".{name}.part"  # hidden: folder scans (`vladsearch add`) skip it
    with open(partial, "xb") as handle:
        handle.write(data)
    os.link(partial, target)  # fails if the name exists, unlike rename
    os.unlink(partial)
    return target


def make_thumbnail(path: Path, side: int, max_pixels: int | None) -> bytes:
    """A JPEG of at most side×side pixels (aspect kept, EXIF orientation applied), decoded at reduced scale."""
    from PIL import Image, ImageOps

    if image_formats.is_raw_name(path):
        return _raw_thumbnail(path, side, max_pixels)
    try:
        with open(path, "rb") as handle:
            image_formats.prepare_readers(handle.read(64))  # HEIF: register pillow-heif's opener
        with Image.open(path) as im:
            width, height = im.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageError(f"image too large ({width}×{height} pixels; limit {max_pixels})")
            im.draft("RGB", (side, side))  # JPEG: libjpeg decodes at 1/2 … 1/8 scale directly
            shown = ImageOps.exif_transpose(im)
            shown.thumbnail((side, side))
            buffer = io.BytesIO()
            shown.convert("RGB").save(buffer, "JPEG", quality=85)
            return buffer.getvalue()
    except image_formats.MissingReader as exc:
        raise ImageError(str(exc)) from None
    except ImageError:
        raise
    except Exception:  # noqa: BLE001 - formats Pillow lacks: OpenCV, the same reader the index used
        return _thumbnail_with_opencv(path, side)


def _raw_thumbnail(path: Path, side: int, max_pixels: int | None) -> bytes:
    """A camera RAW's thumbnail, from its embedded preview or a half-size demosaic (image_formats)."""
    from PIL import Image

    try:
        rgb, _ = image_formats.decode_raw(path.read_bytes(), path.name, side, max_pixels, color=True)
    except (image_formats.MissingReader, ValueError) as exc:
        raise ImageError(str(exc)) from None
    shown = Image.fromarray(rgb)
    shown.thumbnail((side, side))
    buffer = io.BytesIO()
    shown.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _thumbnail_with_opencv(path: Path, side: int) -> bytes:
    import cv2
    import numpy as np

    image = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError("cannot decode the image for a thumbnail")
    scale = side / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ImageError("cannot encode the thumbnail")
    return encoded.tobytes()


class ThumbnailCache:
    """An LRU of thumbnails keyed by real path, size and mtime (a changed file gets a new one)."""

    def __init__(self, side: int, max_pixels: int | None, capacity: int = 1024) -> None:
        self.side, self.max_pixels, self.capacity = side, max_pixels, capacity
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> bytes:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        try:
            thumbnail = make_thumbnail(path, self.side, self.max_pixels)
        except ImageError as exc:
            raise ServiceError(415, f"cannot make a thumbnail of this image: {exc}") from None
        with self._lock:
            self._items[key] = thumbnail
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return thumbnail
