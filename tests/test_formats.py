"""Camera formats: HEIC, AVIF, WebP, 16-bit PNG/TIFF and RAW (DNG) are indexed and searched like JPEG.

The photographs are scikit-image's, written in each format by the test. RAW: no camera's file
can be made here, so the DNGs are written with tifffile (a Bayer mosaic, with and without an
embedded RGB preview); a camera's JPEG preview is not covered.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import photo
from live_helpers import PROJECT

from vladsearch.cli import main
from vladsearch.io.images import decode_gray, load_image, scan_folder

pytest.importorskip("skimage")
pillow_heif = pytest.importorskip("pillow_heif", reason='HEIC needs the extra: pip install ".[formats]"')
pytest.importorskip("rawpy", reason='RAW needs the extra: pip install ".[formats]"')
from PIL import Image, features  # noqa: E402

if not features.check("avif"):
    pytest.skip("this Pillow cannot write AVIF (Pillow ≥ 11.3 wheels can)", allow_module_level=True)
pillow_heif.register_heif_opener()  # to write HEIC here; vladsearch registers it by itself when reading

ORIENTATION = 0x0112


def rgb(name: str) -> np.ndarray:
    image = photo(name)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write(path, image: np.ndarray, **options) -> None:
    """Write an RGB uint8 array in the format of path's extension (16-bit PNG/TIFF for .png16/.tif16)."""
    if path.suffix in (".png", ".tif") and options.pop("sixteen_bits", False):
        # 16-bit samples with the full range used: 8-bit × 257
        data = image.astype(np.uint16) * 257
        cv2.imwrite(str(path), cv2.cvtColor(data, cv2.COLOR_RGB2BGR))
        return
    Image.fromarray(image).save(path, **options)


def bayer(image: np.ndarray) -> np.ndarray:
    """An RGGB mosaic (12-bit samples in uint16) of an RGB uint8 image: what a sensor records."""
    data = image.astype(np.uint16) * 16
    mosaic = np.empty(image.shape[:2], np.uint16)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = data[0::2, 0::2, 0], data[0::2, 1::2, 1]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = data[1::2, 0::2, 1], data[1::2, 1::2, 2]
    return mosaic


def write_dng(path, image: np.ndarray, preview: np.ndarray | None, orientation: int = 1) -> None:
    """A minimal DNG 1.4 of `image` (tifffile): the mosaic alone, or an RGB preview with the mosaic in a SubIFD."""
    tifffile = pytest.importorskip("tifffile")
    identity = [x for row in range(3) for col in range(3) for x in (10000 if row == col else 0, 10000)]
    dng = [(50706, "B", 4, (1, 4, 0, 0), True), (50708, "s", 0, "vladsearch test camera", True),
           (274, "H", 1, orientation, True)]
    raw = [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True), (50721, "2i", 9, identity, True),
           (50778, "H", 1, 21, True), (50717, "I", 1, 4095, True)]
    with tifffile.TiffWriter(path) as tiff:
        if preview is not None:
            tiff.write(preview, photometric="rgb", subfiletype=1, subifds=1, extratags=dng)
            tiff.write(bayer(image), photometric=32803, subfiletype=0, extratags=raw)
        else:
            tiff.write(bayer(image), photometric=32803, subfiletype=0, extratags=dng + raw)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def gray_of(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


# One photograph per format in the library; each is searched with a copy in another format.
LIBRARY = {"astronaut.jpg": "astronaut", "coffee.heic": "coffee", "chelsea.avif": "chelsea",
           "rocket.webp": "rocket", "camera.png": "camera", "clock.tif": "clock", "coins.dng": "coins",
           "brick.tif": "brick"}
SIXTEEN_BITS = {"camera.png", "clock.tif"}
QUERIES = {"astronaut.heic": "astronaut.jpg", "coffee.jpg": "coffee.heic", "chelsea.jpg": "chelsea.avif",
           "rocket.avif": "rocket.webp", "camera.heic": "camera.png", "clock.jpg": "clock.tif",
           "coins.jpg": "coins.dng"}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    photos, queries = root / "library", root / "queries"
    photos.mkdir()
    queries.mkdir()
    for name, source in LIBRARY.items():
        path = photos / name
        if path.suffix == ".dng":
            write_dng(path, rgb(source), preview=rgb(source))
        else:
            write(path, rgb(source), sixteen_bits=name in SIXTEEN_BITS, **({"quality": 90} if name[-4:] in (
                "heic", "avif", ".jpg", "webp") else {}))
    (photos / "notes.txt").write_text("not a photo\n")
    (photos / "letter.docx").write_bytes(b"PK\x03\x04 not a photo either")
    (photos / ".DS_Store").write_bytes(b"hidden: never walked")
    for name, _ in QUERIES.items():
        write(queries / name, rgb(name.split(".")[0]), quality=85)
    index = root / "library.vlad"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["build", str(photos), "--index", str(index), "-k", "16", "-q", "--workers", "1", "--json"]) == 0
    return {"photos": photos, "queries": queries, "index": index, "report": json.loads(printed.getvalue())}


def test_every_format_is_indexed_and_other_files_are_reported(library):
    report = library["report"]
    assert report["indexed"] == len(LIBRARY) and report["skipped"] == [] and report["no_keypoints"] == []
    assert sorted(row["path"] for row in report["not_images"]) == ["letter.docx", "notes.txt"]
    assert all(row["reason"].startswith("not an image") for row in report["not_images"])


@pytest.mark.parametrize("query", sorted(QUERIES))
def test_a_copy_in_another_format_finds_the_original_first(library, query, capsys):
    assert main(["search", str(library["index"]), str(library["queries"] / query), "--top", "3", "--rerank", "0",
                 "--json", "-q"]) == 0
    matches = json.loads(capsys.readouterr().out)[0]["matches"]
    assert matches and matches[0]["image"] == QUERIES[query]


def test_add_counts_files_that_are_not_images_and_verbose_lists_them(library, capsys):
    folder = library["photos"].parent / "more"
    folder.mkdir()
    write(folder / "chelsea_copy.heic", rgb("chelsea"), quality=80)
    (folder / "readme").write_text("no extension\n")
    (folder / "list.csv").write_text("a,b\n")
    assert main(["add", str(library["index"]), str(folder), "-q", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "indexed 1 images" in out and "2 files are not images (.csv, no extension); --verbose lists them" in out
    assert "readme" not in out
    assert main(["add", str(library["index"]), str(folder), "-q", "--workers", "1", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "more/readme: not an image (no file extension)" in out and "more/list.csv: not an image (.csv" in out


def test_scan_leaves_hidden_files_out_and_lists_the_rest(tmp_path):
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "a.txt").write_text("x")
    (tmp_path / ".thumbs.db").write_text("x")
    (tmp_path / "b.txt").write_text("x")
    cv2.imwrite(str(tmp_path / "c.jpg"), photo("coins"))
    scan = scan_folder(tmp_path)
    assert [p.name for p in scan.images] == ["c.jpg"]
    assert [(p.name, why) for p, why in scan.not_images] == [("b.txt", "not an image (.txt files are not read)")]


@pytest.mark.parametrize("suffix, options", [(".gif", {}), (".tif", {}), (".webp", {"lossless": True}),
                                             (".heic", {"quality": -1}), (".avif", {"quality": 100}),
                                             (".png", {})])
def test_files_of_frames_give_their_first_frame(tmp_path, suffix, options):
    first, second = rgb("astronaut")[:256, :256], rgb("coffee")[:256, :256]
    path = tmp_path / f"frames{suffix}"
    Image.fromarray(first).save(path, save_all=True, append_images=[Image.fromarray(second)], **options)
    with Image.open(path) as written:
        assert getattr(written, "n_frames", 1) == 2
    gray = load_image(path, None).gray
    assert correlation(gray, gray_of(first)) > 0.98 and correlation(gray, gray_of(second)) < 0.5


@pytest.mark.parametrize("suffix", [".jpg", ".heic", ".avif", ".webp", ".png", ".tif"])
def test_exif_orientation_is_applied_in_every_format(tmp_path, suffix):
    """Stored upright-turned (orientation 6: rotate 90° clockwise to show); HEIC keeps it as its rotation box."""
    tall = rgb("astronaut")[:, :400]
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path = tmp_path / f"turned{suffix}"
    Image.fromarray(tall).save(path, exif=exif.tobytes())
    loaded = load_image(path, None)
    shown = cv2.rotate(gray_of(tall), cv2.ROTATE_90_CLOCKWISE)
    assert loaded.gray.shape == shown.shape and loaded.size == (512, 400)
    assert correlation(loaded.gray, shown) > 0.98


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_files_keep_their_picture(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    write(path, rgb("coffee"), sixteen_bits=True)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert correlation(load_image(path, None).gray, gray_of(rgb("coffee"))) > 0.99


@pytest.mark.parametrize("with_preview", [True, False], ids=["embedded-preview", "half-size-demosaic"])
def test_dng_is_read_upright_from_its_preview_or_its_mosaic(tmp_path, with_preview):
    tall = rgb("astronaut")[:, :400]
    path = tmp_path / "turned.dng"
    write_dng(path, tall, preview=tall if with_preview else None, orientation=6)
    loaded = load_image(path, 1024)
    shown = cv2.rotate(gray_of(tall), cv2.ROTATE_90_CLOCKWISE)
    assert loaded.size == (512, 400)
    # The preview is used whole (512 ≥ half the sensor); without it LibRaw demosaics at half size.
    assert loaded.gray.shape == ((400, 512) if with_preview else (200, 256))
    assert loaded.scale == pytest.approx(1.0 if with_preview else 2.0)
    assert correlation(loaded.gray, shown) > (0.99 if with_preview else 0.9)


def test_a_preview_smaller_than_needed_gives_way_to_the_mosaic(tmp_path):
    image = rgb("coins")  # 384×303
    small = cv2.resize(image, (96, 76), interpolation=cv2.INTER_AREA)
    path = tmp_path / "small_preview.dng"
    write_dng(path, image, preview=small)
    gray, scale, size = decode_gray(path.read_bytes(), 1024, name=path.name)
    assert size == (384, 303) and gray.shape == (152, 192) and scale == pytest.approx(2.0)
    gray, _, _ = decode_gray(path.read_bytes(), 90, name=path.name)  # 90 px needed: the preview will do
    assert gray.shape == (71, 90)
    assert correlation(gray, gray_of(small)) > 0.99


MISSING = """
import sys
sys.modules["pillow_heif"] = None  # as if the extra were not installed
sys.modules["rawpy"] = None
from vladsearch.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_the_extra_each_file_names_the_install_line(tmp_path):
    folder = tmp_path / "phone"
    folder.mkdir()
    write(folder / "rocket.heic", rgb("rocket"), quality=90)
    write_dng(folder / "coins.dng", rgb("coins"), preview=None)
    write(folder / "coffee.jpg", rgb("coffee"), quality=90)
    write(folder / "chelsea.jpg", rgb("chelsea"), quality=90)
    result = subprocess.run([sys.executable, "-c", MISSING, "build", str(folder), "--index", str(tmp_path / "x.vlad"),
                             "-k", "4", "-q", "--workers", "1"], capture_output=True, text=True, cwd=PROJECT,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'rocket.heic: HEIC needs pillow-heif: pip install "vladsearch[formats]"' in result.stdout
    assert 'coins.dng: DNG needs rawpy: pip install "vladsearch[formats]"' in result.stdout
    assert "indexed 2 images" in result.stdout


def test_without_an_avif_reader_the_reason_says_what_to_install(monkeypatch):
    from vladsearch.io import image_formats

    avif = bytes.fromhex("0000001c66747970") + b"avif" + bytes(4) + b"avifmif1miaf"
    monkeypatch.setattr(features, "check", lambda name: False)
    assert "AVIF needs Pillow ≥ 11.3" in image_formats.missing_reader_reason(avif)
    assert image_formats.missing_reader_reason(b"\xff\xd8\xff\xe0" + bytes(20)) is None


@pytest.mark.parametrize("suffix", [".dng", ".heic", ".avif"])
def test_thumbnails_of_camera_formats_are_upright_jpegs(tmp_path, suffix):
    """The server's thumbnails read these formats as indexing does (the web page shows them)."""
    from vladsearch.server.files import make_thumbnail

    tall = rgb("astronaut")[:, :400]
    path = tmp_path / f"turned{suffix}"
    if suffix == ".dng":
        write_dng(path, tall, preview=None, orientation=6)
    else:
        exif = Image.Exif()
        exif[ORIENTATION] = 6
        Image.fromarray(tall).save(path, exif=exif.tobytes())
    thumbnail = Image.open(io.BytesIO(make_thumbnail(path, 128, None)))
    assert thumbnail.format == "JPEG" and thumbnail.size == (128, 100)
    shown = cv2.rotate(gray_of(tall), cv2.ROTATE_90_CLOCKWISE)
    assert correlation(np.asarray(thumbnail.convert("L")), shown) > 0.9
