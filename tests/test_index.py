"""End to end: build an index from real photographs, find copies, update, persist safely."""

import shutil

import cv2
import numpy as np
import pytest
from conftest import PHOTO_NAMES, photo, shared_path

from vladsearch import Index
from vladsearch.store import catalog
from vladsearch.store.catalog import IndexFormatError


@pytest.fixture(scope="module")
def built(photo_dir, tmp_path_factory):
    index = Index.build(photo_dir, clusters=16, progress=False, workers=2)
    path = tmp_path_factory.mktemp("idx") / "photos.vlad"
    index.save(path)
    return index, path


def _source(name):
    return "sub dir/фото astronaut.png" if name == "astronaut" else f"{name}.jpg"


def test_build_indexes_every_photo(built):
    index, _ = built
    assert index.report.indexed == len(PHOTO_NAMES) and not index.report.skipped
    assert index.backend.ntotal == len(PHOTO_NAMES)
    assert sorted(index.image_paths()) == sorted(_source(n) for n in PHOTO_NAMES)


def test_exact_copies_are_found_at_rank_one(built, photo_dir):
    index, _ = built
    files = sorted(p for p in photo_dir.rglob("*") if p.is_file())
    results = index.search(files, top=3, rerank=0)  # the VLAD ranking itself
    for file, result in zip(files, results):
        assert result.matches[0].image == file.relative_to(photo_dir).as_posix()
        assert result.matches[0].score == pytest.approx(1.0, abs=1e-4)
        assert result.matches[0].score >= result.matches[1].score >= result.matches[2].score


def _transform(image, kind):
    h, w = image.shape[:2]
    if kind == "resized":
        return cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA), 40
    if kind == "reencoded":
        return image, 25
    if kind == "cropped":
        return image[h // 10: h - h // 10, w // 10: w - w // 10], 90
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["resized", "reencoded", "cropped"])
def test_modified_copies_are_found_at_rank_one(built, tmp_path, kind):
    index, _ = built
    queries = []
    for name in PHOTO_NAMES:
        image, quality = _transform(photo(name), kind)
        path = tmp_path / f"{name}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        queries.append(path)
    results = index.search(queries, top=1, rerank=0)  # VLAD alone; clock.jpg has 2 keypoints: nothing to verify
    hits = [r.matches[0].image == _source(n) for n, r in zip(PHOTO_NAMES, results)]
    assert all(hits), [n for n, hit in zip(PHOTO_NAMES, hits) if not hit]


def test_saved_index_answers_like_the_built_one(built, photo_dir):
    index, path = built
    reopened = Index.open(path)
    query = photo_dir / "coffee.jpg"
    a, b = index.search([query], top=5, rerank=0)[0], reopened.search([query], top=5, rerank=0)[0]
    assert [m.image for m in a.matches] == [m.image for m in b.matches]
    np.testing.assert_allclose([m.score for m in a.matches], [m.score for m in b.matches], rtol=1e-5)
    info = reopened.info()
    assert info["format_version"] == catalog.FORMAT_VERSION
    assert info["params"]["clusters"] == 16 and info["features"]["name"] == "sift"
    assert info["counts"]["indexed"] == len(PHOTO_NAMES) and info["counts"]["segments"] == 1


def test_no_pickle_in_the_index(built):
    _, path = built
    for file in path.rglob("*"):
        if file.is_file():
            assert not file.read_bytes().startswith(b"\x80"), f"{file} looks like a pickle"


def test_add_and_remove(built, photo_dir, tmp_path):
    _, path = built
    work = tmp_path / "copy.vlad"
    shutil.copytree(path, work)
    index = Index.open(work)
    new = tmp_path / "new"
    new.mkdir()
    cv2.imwrite(str(new / "horse.png"), cv2.cvtColor(photo("horse").astype(np.uint8) * 255, cv2.COLOR_GRAY2BGR)
                if photo("horse").dtype == bool else photo("horse"))
    cv2.imwrite(str(new / "grass.jpg"), photo("grass"))
    report = index.add([new])
    assert report.indexed == 2
    index.save(work)
    again = Index.open(work)
    assert again.backend.ntotal == len(PHOTO_NAMES) + 2
    assert again.search([new / "grass.jpg"], top=1)[0].matches[0].image.endswith("new/grass.jpg")
    # re-adding unchanged files does nothing
    assert again.add([new]).unchanged == 2 and again.backend.ntotal == len(PHOTO_NAMES) + 2
    missing = again.remove(["coffee.jpg", "not/there.jpg"])
    assert missing == ["not/there.jpg"]
    again.save(work)
    final = Index.open(work)
    assert final.backend.ntotal == len(PHOTO_NAMES) + 1
    assert all(m.image != "coffee.jpg" for m in final.search([photo_dir / "coffee.jpg"], top=20)[0].matches)


def test_crash_during_a_commit_leaves_the_last_commit(built, photo_dir, tmp_path, monkeypatch):
    _, path = built
    work = tmp_path / "crash.vlad"
    shutil.copytree(path, work)
    new = tmp_path / "new"
    new.mkdir()
    cv2.imwrite(str(new / "grass.jpg"), photo("grass"))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # dies inside the commit transaction, after moving its segment in

    monkeypatch.setattr(catalog, "record_commit", killed)
    with pytest.raises(KeyboardInterrupt):
        Index.open(work).add([new], progress=False)
    monkeypatch.undo()
    reopened = Index.open(work)
    assert reopened.backend.ntotal == len(PHOTO_NAMES)
    assert len(list((work / "segments").iterdir())) == 1  # the uncommitted segment is gone
    assert reopened.add([new], progress=False).indexed == 1  # and nothing blocks the next writer


def test_a_dead_writers_leftovers_are_ignored_then_removed(built, photo_dir, tmp_path):
    _, path = built
    work = tmp_path / "half.vlad"
    shutil.copytree(path, work)
    (work / "staging" / "deadbeef").mkdir(parents=True)  # what a kill -9 during extraction leaves
    (work / "staging" / "deadbeef" / "seg-x").mkdir()
    (work / "staging" / "deadbeef.lock").write_text("")
    (work / "segments" / "seg-uncommitted").mkdir()      # killed between moving in and COMMIT
    (work / "segments" / "seg-uncommitted" / "vectors.f32").write_bytes(b"partial")
    index = Index.open(work)
    assert index.backend.ntotal == len(PHOTO_NAMES)
    index.remove(["coffee.jpg"])  # any commit cleans up
    assert not (work / "staging" / "deadbeef").exists() and not (work / "segments" / "seg-uncommitted").exists()


def test_incompatible_or_foreign_directory_fails_clearly(built, tmp_path):
    _, path = built
    work = tmp_path / "old.vlad"
    shutil.copytree(path, work)
    db = catalog.connect(work)
    catalog.write_meta(db, {"format_version": 99})
    db.close()
    with pytest.raises(IndexFormatError, match="format version 99.*rebuild"):
        Index.open(work)
    with pytest.raises(IndexFormatError, match="not a vladsearch index"):
        Index.open(tmp_path)
    with pytest.raises(FileNotFoundError, match="vladsearch build"):
        Index.open(tmp_path / "missing.vlad")
    with pytest.raises(FileExistsError):
        (tmp_path / "occupied").mkdir()
        (tmp_path / "occupied" / "file.txt").write_text("mine")
        Index.open(path).save(tmp_path / "occupied")


def test_bad_files_are_skipped_and_reported(photo_dir, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(photo_dir, folder)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    data = (folder / "coffee.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 3])
    cv2.imwrite(str(folder / "flat.png"), np.full((200, 200), 90, np.uint8))
    index = Index.build(folder, clusters=16, progress=False)
    skipped = dict(index.report.skipped)
    assert set(skipped) == {"empty.jpg", "text.png", "cut.jpg"}
    assert index.report.no_keypoints == ["flat.png"]
    index.save(tmp_path / "mixed.vlad")
    info = Index.open(tmp_path / "mixed.vlad").info()
    assert {row["path"] for row in info["skipped_files"]} == set(skipped)
    assert info["no_keypoint_files"] == ["flat.png"]
    result = index.search([folder / "flat.png", folder / "cut.jpg"], top=3)
    assert not np.isnan([m.score for m in result[0].matches]).any()
    assert result[1].error and "truncated" in result[1].error


def test_options_pca_and_ivf(photo_dir):
    index = Index.build(photo_dir, clusters=16, pca=8, factory="IVF2,Flat", progress=False)
    assert index.backend.dim == 8
    query = photo_dir / "rocket.jpg"
    assert index.search([query], top=1, nprobe=2)[0].matches[0].image == "rocket.jpg"


def test_wrong_arguments_say_what_to_do(photo_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown feature type 'orb'.*sift"):
        Index.build(photo_dir, features="orb")
    with pytest.raises(ValueError, match="no images found"):
        Index.build(tmp_path)
    with pytest.raises(ValueError, match="fewer --clusters"):
        Index.build(photo_dir, clusters=10**6, progress=False)


def test_oxford_affine_exact_copies(tmp_path):
    images = shared_path("data", "oxford_affine_subset", "images")
    index = Index.build(images, progress=False)
    files = sorted(images.iterdir())
    results = index.search(files, top=1)
    assert [r.matches[0].image for r in results] == [f.name for f in files]


def test_folder_reached_through_a_symlink_keeps_relative_paths(photo_dir, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(photo_dir, target_is_directory=True)
    index = Index.build(link, clusters=16, progress=False)
    assert "coffee.jpg" in index.image_paths()
    assert index.search([photo_dir / "coffee.jpg"], top=1)[0].matches[0].image == "coffee.jpg"
    assert index.remove([photo_dir / "coffee.jpg"]) == []  # the real path names the same image


def test_adding_the_same_files_twice_in_one_call_indexes_them_once(built, tmp_path):
    _, path = built
    shutil.copytree(path, tmp_path / "twice.vlad")
    index = Index.open(tmp_path / "twice.vlad")
    new = tmp_path / "new"
    new.mkdir()
    cv2.imwrite(str(new / "grass.jpg"), photo("grass"))
    report = index.add([new, new / "grass.jpg"])
    assert report.indexed == 1
    assert index.backend.ntotal == len(PHOTO_NAMES) + 1
    assert index.search([new / "grass.jpg"], top=30)[0].matches[0].image.endswith("new/grass.jpg")


def test_vectors_encoded_in_workers_equal_those_encoded_here(tmp_path):
    from live_helpers import make_images

    make_images(tmp_path / "many", 70, seed=3, size=(200, 150))
    # codebook_images=4 and 70 images: those handed out after training (beyond the
    # in-flight window) are reduced to their VLAD inside the worker processes
    pooled = Index.build(tmp_path / "many", clusters=8, codebook_images=4, progress=False, workers=2)
    serial = Index.build(tmp_path / "many", clusters=8, codebook_images=4, progress=False, workers=1)
    assert pooled.image_paths() == serial.image_paths()
    ids_p, ids_s = list(pooled.snapshot.loaded_ids), list(serial.snapshot.loaded_ids)
    np.testing.assert_allclose(pooled.vectors_of(ids_p), serial.vectors_of(ids_s), atol=1e-5)


def test_pca_with_a_feature_cache(photo_dir, tmp_path):
    index = Index.build(photo_dir, index=tmp_path / "p.vlad", clusters=16, pca=8, keep_features=256, progress=False)
    assert index.backend.dim == 8
    match = index.search([photo_dir / "rocket.jpg"], top=1, rerank=2)[0].matches[0]
    assert match.image == "rocket.jpg" and match.verified
