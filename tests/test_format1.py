"""Indexes written by vladsearch 0.1 (format 1) keep opening, and migrate on their first write."""

import shutil
from pathlib import Path

import cv2
import pytest
from conftest import photo

from vladsearch import Index
from vladsearch.store import catalog
from vladsearch.store.check import check_index

FIXTURE = Path(__file__).parent / "data" / "format1.vlad"
NAMES = ["coffee", "rocket", "chelsea", "astronaut", "camera"]


def make_photos(folder: Path) -> Path:
    """The photographs the fixture was built from (see tests/data/README.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        image = photo(name)
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2))
        cv2.imwrite(str(folder / f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return folder


@pytest.fixture
def old_index(tmp_path):
    pytest.importorskip("skimage")
    photos = make_photos(tmp_path / "photos")
    work = tmp_path / "old.vlad"
    shutil.copytree(FIXTURE, work)
    return work, photos


def test_format1_index_opens_and_answers_as_it_is(old_index):
    work, photos = old_index
    index = Index.open(work, root=photos)
    info = index.info()
    assert info["format_version"] == 1 and info["counts"]["vectors"] == 4
    result = index.search([photos / "rocket.jpg"], top=2, rerank=2)[0]
    assert result.matches[0].image == "rocket.jpg" and result.matches[0].verified
    assert (work / "manifest.json").exists() and not (work / catalog.CATALOG).exists()  # reading changes nothing


def test_first_write_migrates_to_format2(old_index, tmp_path):
    work, photos = old_index
    new = tmp_path / "new"
    new.mkdir()
    cv2.imwrite(str(new / "grass.jpg"), photo("grass"))
    index = Index.open(work, root=photos)
    assert index.add([new], progress=False).indexed == 1
    assert not (work / "manifest.json").exists() and not list(work.glob("gen-*"))
    reopened = Index.open(work, root=photos)
    info = reopened.info()
    assert info["format_version"] == catalog.FORMAT_VERSION and info["counts"]["vectors"] == 5
    assert "camera.jpg" not in reopened.image_paths()  # what 0.1 removed stays removed
    # the cached local features came along: verification needs no photo on disk
    query = tmp_path / "q.jpg"
    shutil.copy(photos / "chelsea.jpg", query)
    shutil.rmtree(photos)
    match = reopened.search([query], top=1, rerank=3)[0].matches[0]
    assert match.image == "chelsea.jpg" and match.verified
    assert check_index(work)[0] == []


def test_compact_migrates_too(old_index):
    work, photos = old_index
    Index.open(work, root=photos).compact()
    assert (work / catalog.CATALOG).exists() and not (work / "manifest.json").exists()
    assert Index.open(work).info()["counts"]["vectors"] == 4
