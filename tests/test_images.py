"""Odd inputs: every one is decoded sensibly or refused with a reason (never a crash)."""

import cv2
import numpy as np
import pytest
from conftest import photo
from PIL import Image

from vladsearch.io.images import ImageError, list_images, load_image


@pytest.fixture
def jpeg_bytes():
    _, encoded = cv2.imencode(".jpg", photo("astronaut"))
    return encoded.tobytes()


def test_color_jpeg_becomes_bounded_grayscale(tmp_path, jpeg_bytes):
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg_bytes)
    image = load_image(path, max_side=200)
    assert image.gray.dtype == np.uint8 and image.gray.ndim == 2
    assert max(image.gray.shape) == 200 and image.size == (512, 512)
    assert image.scale == pytest.approx(512 / 200, rel=0.01)
    assert len(image.sha1) == 40 and image.file_size == len(jpeg_bytes)


def test_reduced_jpeg_decode_matches_full_decode(tmp_path):
    big = cv2.resize(photo("astronaut"), (2048, 2048))
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), big)
    fast = load_image(path, max_side=512).gray.astype(np.float32)
    slow = cv2.resize(cv2.cvtColor(big, cv2.COLOR_BGR2GRAY), (512, 512), interpolation=cv2.INTER_AREA)
    assert fast.shape == (512, 512)
    assert np.abs(fast - slow).mean() < 4  # same picture; DCT scaling differs by a few grey levels


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"this is not an image at all", "not an image"),
])
def test_unusable_files_are_refused_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "x.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        load_image(path)


def test_truncated_jpeg_is_refused(tmp_path, jpeg_bytes):
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg_bytes[: len(jpeg_bytes) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "nope.jpg")


def test_sixteen_bit_rgba_gray_cmyk_and_tiny(tmp_path):
    camera = photo("camera")
    cv2.imwrite(str(tmp_path / "16.png"), camera.astype(np.uint16) * 257)
    rgba = np.dstack([photo("chelsea"), np.full(photo("chelsea").shape[:2], 255, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    Image.fromarray(camera).save(tmp_path / "gray.jpg")
    Image.fromarray(cv2.cvtColor(photo("rocket"), cv2.COLOR_BGR2RGB)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "one.png")
    sixteen = load_image(tmp_path / "16.png").gray
    assert sixteen.dtype == np.uint8 and np.abs(sixteen.astype(int) - camera).max() <= 1
    assert load_image(tmp_path / "rgba.png").gray.shape == (300, 451)
    assert load_image(tmp_path / "gray.jpg").gray.shape == (512, 512)
    assert load_image(tmp_path / "cmyk.jpg").gray.shape == (427, 640)
    assert load_image(tmp_path / "one.png").gray.shape == (1, 1)


def test_exif_orientation_is_applied(tmp_path):
    coffee = Image.fromarray(cv2.cvtColor(photo("coffee"), cv2.COLOR_BGR2RGB))  # 600 wide, 400 high
    exif = coffee.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    coffee.save(tmp_path / "rot.jpg", exif=exif)
    image = load_image(tmp_path / "rot.jpg", max_side=None)
    assert image.gray.shape == (600, 400) and image.size == (400, 600)
    reduced = load_image(tmp_path / "rot.jpg", max_side=300)
    assert reduced.gray.shape == (300, 200)


def test_huge_image_is_decoded_downscaled(tmp_path):
    # 400 MP: over our default limit and over Pillow's own error threshold (2 × MAX_IMAGE_PIXELS).
    huge = np.zeros((20000, 20000), np.uint8)
    huge[::100] = 255
    cv2.imwrite(str(tmp_path / "huge.png"), huge)
    with pytest.raises(ImageError, match="20000×20000"):
        load_image(tmp_path / "huge.png", max_side=1000)
    image = load_image(tmp_path / "huge.png", max_side=1000, max_pixels=None)
    assert image.gray.shape == (1000, 1000) and image.size == (20000, 20000) and image.scale == 20.0


def test_list_images_finds_unicode_and_spaces_and_skips_hidden(tmp_path):
    (tmp_path / "sub dir").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ["sub dir/фото 1.JPG", "b.png", ".hidden/c.jpg", "notes.txt", ".d.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["b.png", "sub dir/фото 1.JPG"]
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")
