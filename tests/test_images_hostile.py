"""Hostile inputs: symlink loops, decompression bombs, 16-bit and float files that would decode black."""

import os
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import photo
from PIL import Image

from vladsearch.io.images import DEFAULT_MAX_PIXELS, MAX_PIXELS, ImageError, list_images, load_image

symlinks = pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="needs symlinks")


def png_bomb(path, side: int) -> None:
    """A valid 1-bit grayscale PNG of side×side zeros (~110 kB for 30000²), streamed through zlib.

    Written by hand: Pillow keeps mode "1" at a byte per pixel, so building it with
    Pillow would itself cost side² bytes of memory.
    """
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = bytes(1 + (side + 7) // 8)  # filter byte 0, then the packed zero pixels
    packer, parts = zlib.compressobj(9), []
    for start in range(0, side, 1000):
        parts.append(packer.compress(row * min(1000, side - start)))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
                     + chunk(b"IEND", b""))


def names(root, found):
    return [p.relative_to(root).as_posix() for p in found]


# --- list_images --------------------------------------------------------------------------

@symlinks
def test_symlink_to_own_folder_lists_each_image_once(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["a.jpg", "sub/b.png"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "self").symlink_to(".")
    (tmp_path / "sub" / "up").symlink_to("..")  # would never end with a plain followlinks walk
    assert names(tmp_path, list_images(tmp_path)) == ["a.jpg", "sub/b.png"]


@symlinks
def test_mutual_symlink_loop_ends(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "c").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"x")
    (tmp_path / "a" / "to_c").symlink_to("../c")
    (tmp_path / "c" / "to_a").symlink_to("../a")
    assert names(tmp_path, list_images(tmp_path)) == ["a/x.jpg"]


@symlinks
def test_real_folder_wins_over_symlinked_sibling(tmp_path):
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "x.jpg").write_bytes(b"x")
    (tmp_path / "a").symlink_to("z")  # sorts first, but is only another name for z
    assert names(tmp_path, list_images(tmp_path)) == ["z/x.jpg"]


@symlinks
def test_symlinked_root_and_outside_files_are_listed_once(tmp_path):
    outside, tree = tmp_path / "outside", tmp_path / "tree"
    outside.mkdir()
    tree.mkdir()
    (outside / "o.jpg").write_bytes(b"x")
    (tree / "link1.jpg").symlink_to(outside / "o.jpg")
    (tree / "link2.jpg").symlink_to(outside / "o.jpg")  # same real file: kept under the first name
    (tree / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")  # listed; load_image reports it
    (tree / "skip.vlad").mkdir()
    (tree / "skip.vlad" / "s.jpg").write_bytes(b"x")
    (tmp_path / "root_link").symlink_to(tree)
    assert names(tree, list_images(tree)) == ["dangling.jpg", "link1.jpg"]
    found = list_images(tmp_path / "root_link")
    assert names(tmp_path / "root_link", found) == ["dangling.jpg", "link1.jpg"]
    assert list_images(tree / "link2.jpg") == [tree / "link2.jpg"]


# --- decompression bombs ------------------------------------------------------------------

def test_max_pixels_constants_and_small_limit(tmp_path):
    assert DEFAULT_MAX_PIXELS == MAX_PIXELS == 178_956_970
    cv2.imwrite(str(tmp_path / "c.png"), photo("camera"))
    with pytest.raises(ImageError, match=r"too large \(512×512 pixels; limit 1000 pixels"):
        load_image(tmp_path / "c.png", max_pixels=1000)
    assert load_image(tmp_path / "c.png", max_pixels=512 * 512).size == (512, 512)


def test_png_bomb_is_refused_from_its_header_in_bounded_time_and_memory(tmp_path):
    started = time.perf_counter()
    png_bomb(tmp_path / "bomb.png", 30000)  # 900 MP
    assert time.perf_counter() - started < 10
    with pytest.raises(Image.DecompressionBombError, match="900000000 pixels"):  # a valid PNG: Pillow
        Image.open(tmp_path / "bomb.png")  # reads the header, and refuses it at its own (global) limit
    script = textwrap.dedent("""
        import resource, sys, time
        from vladsearch.io.images import ImageError, load_image
        started = time.perf_counter()
        try:
            load_image(sys.argv[1])
            print("decoded")
        except ImageError as exc:
            print(exc)
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
        try:  # Linux: ru_maxrss keeps the *parent's* peak across fork and exec; VmHWM is this process's own
            status = open("/proc/self/status").read()
            peak_kb = int(status.split("VmHWM:")[1].split()[0])
        except (OSError, IndexError):
            pass
        print(time.perf_counter() - started, peak_kb)
    """)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "bomb.png")], check=False,
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    message, figures = result.stdout.strip().splitlines()
    seconds, peak_kb = float(figures.split()[0]), int(figures.split()[1])
    assert "too large (30000×30000 pixels" in message
    assert seconds < 5
    assert peak_kb < 500 * 1024  # the old code decoded it: 1.8 GB


def test_jpeg_header_claiming_65000_squared_is_refused_as_too_large(tmp_path):
    _, encoded = cv2.imencode(".jpg", photo("camera"))
    data = bytearray(encoded.tobytes())
    sof = data.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    data[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)
    (tmp_path / "liar.jpg").write_bytes(bytes(data[: len(data) // 2]))  # and cut short
    with pytest.raises(ImageError, match="too large \\(65000×65000"):
        load_image(tmp_path / "liar.jpg")


def test_pillow_global_limit_and_warning_filters_are_left_alone(tmp_path):
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    png_bomb(tmp_path / "bomb.png", 30000)
    png_bomb(tmp_path / "warns.png", 10000)  # 100 MP: past Pillow's warning limit, under ours
    _, encoded = cv2.imencode(".jpg", photo("astronaut"))
    (tmp_path / "a.jpg").write_bytes(encoded.tobytes())
    (tmp_path / "cut.jpg").write_bytes(encoded.tobytes()[:5000])
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # none may escape
        filters = list(warnings.filters)
        assert load_image(tmp_path / "warns.png", max_side=500).size == (10000, 10000)
        for name in ["bomb.png", "cut.jpg"]:
            with pytest.raises(ImageError):
                load_image(tmp_path / name)
        load_image(tmp_path / "a.jpg")
        assert warnings.filters == filters
    assert Image.MAX_IMAGE_PIXELS == limit


# --- 16-bit and float files -------------------------------------------------------------

def assert_like(gray, original, mask=None):
    mask = np.ones(original.shape, bool) if mask is None else mask
    assert gray.dtype == np.uint8 and gray.shape == original.shape
    assert gray[mask].std() > 20
    assert np.corrcoef(gray[mask].astype(float), original[mask].astype(float))[0, 1] > 0.9


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_twelve_bit_data_in_sixteen_bit_file_is_stretched_not_black(tmp_path, suffix):
    camera = photo("camera")
    twelve = (camera.astype(np.uint32) * 4095 // 255).astype(np.uint16)  # 0..4095
    assert cv2.imwrite(str(tmp_path / f"c{suffix}"), twelve)
    assert_like(load_image(tmp_path / f"c{suffix}", max_side=None).gray, camera)


def test_sixteen_bit_colour_png_becomes_gray(tmp_path):
    chelsea = photo("chelsea")
    cv2.imwrite(str(tmp_path / "c.png"), chelsea.astype(np.uint16) * 16)
    assert_like(load_image(tmp_path / "c.png", max_side=None).gray, cv2.cvtColor(chelsea, cv2.COLOR_BGR2GRAY))


def test_float_tiff_in_unit_range_is_stretched(tmp_path):
    camera = photo("camera")
    assert cv2.imwrite(str(tmp_path / "f.tif"), camera.astype(np.float32) / 255)
    assert_like(load_image(tmp_path / "f.tif", max_side=None).gray, camera)


def test_float_tiff_with_nan_inf_and_no_data_sentinels(tmp_path):
    camera = photo("camera")
    values = camera.astype(np.float32) / 255
    values[:40, :40] = np.nan
    values[100, :50] = np.inf
    values[200, :50] = -np.inf
    values[300, :20] = -3.4e38  # a GeoTIFF-style no-data value
    assert cv2.imwrite(str(tmp_path / "f.tif"), values)
    gray = load_image(tmp_path / "f.tif", max_side=None).gray
    assert_like(gray, camera, mask=np.isfinite(values) & (values > -1))


@pytest.mark.parametrize("array", [np.full((64, 64), 1000, np.uint16), np.full((64, 64), 0.5, np.float32),
                                   np.full((64, 64), np.nan, np.float32)])
def test_constant_deep_images_do_not_divide_by_zero(tmp_path, array):
    assert cv2.imwrite(str(tmp_path / "k.tif"), array)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from a division by zero
        gray = load_image(tmp_path / "k.tif").gray
    assert gray.dtype == np.uint8 and gray.shape == (64, 64) and gray.std() == 0
