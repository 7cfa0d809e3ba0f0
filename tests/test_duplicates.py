"""`vladsearch duplicates`: edited copies grouped, unrelated photos with one caption kept apart."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import photo, shared_path
from live_helpers import cli

from vladsearch.collection.duplicates import connected_components, keep_order, split_around_keep
from vladsearch.query.pair_verification import band_occupancy, verify_pair


def _caption(image: np.ndarray, text: str = "BREAKING NEWS") -> np.ndarray:
    out = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h, w = out.shape[:2]
    band = h // 7
    cv2.rectangle(out, (0, h - band), (w, h), (20, 20, 20), -1)
    cv2.putText(out, text, (w // 20, h - band // 3), cv2.FONT_HERSHEY_SIMPLEX, band / 45, (255, 255, 255), 2,
                cv2.LINE_AA)
    return out


def _write(folder: Path, name: str, image: np.ndarray) -> None:
    cv2.imwrite(str(folder / name), image, [cv2.IMWRITE_JPEG_QUALITY, 92])


def _with_edits(tmp_path: Path, sources: list[Path], edits: dict) -> Path:
    """A folder with each source as NAME.jpg and, per edit, NAME_EDIT.jpg."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for source in sources:
        image = cv2.imread(str(source))
        _write(photos, f"{source.stem}.jpg", image)
        for edit, make in edits.items():
            _write(photos, f"{source.stem}_{edit}.jpg", make(image))
    return photos


def _groups_of(photos: Path) -> list[list[str]]:
    """Index the folder (with a feature cache) beside it and return `duplicates`' groups, sorted."""
    index = photos.parent / f"{photos.name}.vlad"
    cli("build", str(photos), "--index", str(index), "--keep-features", "--quiet", "--workers", "2")
    data = json.loads(cli("duplicates", str(index), "--json", "--quiet", "--workers", "2").stdout)
    return sorted(sorted(g["images"]) for g in data["groups"])


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Copies of astronaut and coffee (crop, rescale, 90° turn, mirror, caption, exact) + captioned strangers."""
    pytest.importorskip("skimage")
    root = tmp_path_factory.mktemp("dupes")
    photos = root / "photos"
    photos.mkdir()
    truth = {}
    for name in ("astronaut", "coffee"):
        image = photo(name)
        h, w = image.shape[:2]
        edits = {"orig": image, "crop": image[h // 8:h - h // 6, w // 10:w - w // 8],
                 "small": cv2.resize(image, (w * 2 // 5, h * 2 // 5), interpolation=cv2.INTER_AREA),
                 "rot90": cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE), "mirror": cv2.flip(image, 1),
                 "caption": _caption(image)}
        for edit, edited in edits.items():
            _write(photos, f"{name}_{edit}.jpg", edited)
            truth[f"{name}_{edit}.jpg"] = name
        shutil.copyfile(photos / f"{name}_orig.jpg", photos / f"{name}_exact.jpg")
        truth[f"{name}_exact.jpg"] = name
    for name in ("chelsea", "rocket", "camera", "coins"):  # unrelated photos, one caption
        _write(photos, f"{name}_caption.jpg", _caption(photo(name)))
    index = root / "photos.vlad"
    cli("build", str(photos), "--index", str(index), "--keep-features", "--quiet", "--workers", "2")
    return index, photos, truth


def test_copies_are_grouped_and_captioned_strangers_are_not(collection):
    index, _, truth = collection
    data = json.loads(cli("duplicates", str(index), "--json", "--quiet", "--workers", "2").stdout)
    groups = [sorted(g["images"]) for g in data["groups"]]
    expected = sorted(sorted(n for n, t in truth.items() if t == name) for name in ("astronaut", "coffee"))
    assert sorted(groups) == expected
    for group in data["groups"]:
        assert not group["keep"].endswith(("_small.jpg", "_crop.jpg"))  # the most pixels (then the biggest file)
        assert group["keep"] in group["images"]
        for pair in group["pairs"]:
            assert {"a", "b", "inliers", "score"} <= set(pair) and pair["a"] in group["images"]
        flipped = [p for p in group["pairs"] if "_mirror" in p["a"] + p["b"]]
        assert any(p.get("mirrored") for p in flipped)
        exact = [p for p in group["pairs"] if p.get("exact")]
        assert len(exact) == 1


def test_csv_and_html_outputs(collection, tmp_path):
    index, _, _ = collection
    csv_text = cli("duplicates", str(index), "--csv", "--quiet", "--workers", "2").stdout.splitlines()
    assert csv_text[0] == "group,image,keep,width,height,file_size"
    assert sum(line.split(",")[2] == "1" for line in csv_text[1:]) == 2  # one keep per group
    report = tmp_path / "report.html"
    out = cli("duplicates", str(index), "--html", str(report), "--quiet", "--workers", "2").stdout
    assert "Nothing was deleted" in out
    page = report.read_text()
    assert page.count("data:image/jpeg;base64,") == 14 and page.count("KEEP</span>") == 2


def test_html_report_renders_in_chromium(collection, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (apt-get install chromium): cannot render the report")
    index, _, _ = collection
    report = tmp_path / "report.html"
    cli("duplicates", str(index), "--html", str(report), "--quiet", "--workers", "2")
    shot = tmp_path / "shot.png"
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--no-first-run", "--dump-dom", report.as_uri()], capture_output=True, text=True,
                         timeout=120, check=False).stdout
    assert dom.count("<figure") == 14 and "Group 2" in dom
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--no-first-run", f"--screenshot={shot}", "--window-size=1200,900", report.as_uri()],
                   capture_output=True, timeout=120, check=False)
    image = cv2.imread(str(shot))
    assert image is not None and image.std() > 10  # thumbnails drawn, not a blank page


def test_other_views_of_one_place_are_not_grouped_with_copies(tmp_path):
    """graf frames 1 and 4 (40° apart) show one wall; each frame's copies group with it alone.

    "Must not be grouped": a photograph from another viewpoint needs a perspective map that no
    crop, rescale, turn or mirror makes, so its pair with the copies fails the affine test.
    Frames from one tripod position (Oxford bikes, leuven) are grouped: see docs/DUPLICATES.md.
    """
    images = shared_path("data", "oxford_affine_subset", "images")
    photos = _with_edits(tmp_path, [images / f"{frame}.ppm" for frame in ("graf_img1", "graf_img4")], {
        "small": lambda image: cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA),
        "rot": lambda image: cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)})
    assert _groups_of(photos) == [[f"{f}.jpg", f"{f}_rot.jpg", f"{f}_small.jpg"] for f in ("graf_img1", "graf_img4")]


def test_one_object_seen_square_on_and_from_above_is_not_a_copy(tmp_path):
    """homogr's LePoint1B and LePoint2B show one magazine cover, upright and lying flat: an
    affine map explains their ~420 inliers, but it foreshortens (anisotropy ≈ 1.2) along a
    direction that is not an image axis, which no crop, resize, turn or mirror does. Each photo
    groups with its own copies only, including one resized to another aspect ratio."""
    images = shared_path("data", "homogr_pairs", "images")
    photos = _with_edits(tmp_path, [images / f"{view}.png" for view in ("LePoint1B", "LePoint2B")], {
        "small": lambda image: cv2.resize(image, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA),
        "mirror": lambda image: cv2.flip(image, 1),
        "squashed": lambda image: cv2.rotate(cv2.resize(image, None, fx=0.75, fy=1.0), cv2.ROTATE_90_CLOCKWISE)})
    assert _groups_of(photos) == [[f"{v}.jpg", f"{v}_mirror.jpg", f"{v}_small.jpg", f"{v}_squashed.jpg"]
                                  for v in ("LePoint1B", "LePoint2B")]


def _meme(image: np.ndarray, top: str = "WHEN YOU SEE IT", bottom: str = "YOU CANNOT UNSEE IT") -> np.ndarray:
    """Meme text: a banner at the top and one at the bottom, each 14 % of the height."""
    out = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h, w = out.shape[:2]
    band = int(h * 0.14)
    for text, y in ((top, 0), (bottom, h - band)):
        cv2.rectangle(out, (0, y), (w, y + band), (30, 30, 30), -1)
        cv2.putText(out, text, (w // 20, y + band * 3 // 4), cv2.FONT_HERSHEY_DUPLEX, band / 40, (255, 255, 255), 2,
                    cv2.LINE_AA)
    return out


def test_caption_and_meme_text_verify_only_in_bands_and_real_overlap_does_not():
    """Shared letters verify (dozens of inliers) but reach few of the image's rows; one banner or
    two (meme text top and bottom: the 5-95 % width of those inliers spans the whole image)."""
    pytest.importorskip("skimage")
    from vladsearch.features import get_extractor

    extractor = get_extractor("sift")

    def features(image):
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        found = extractor.extract(grey)
        return found.keypoints, found.descriptors

    for edit in (_caption, _meme):
        inliers, _, occupancy, *_ = verify_pair(features(edit(photo("chelsea"))), features(edit(photo("rocket"))))
        assert inliers >= 15 and occupancy < 0.3, edit.__name__  # the letters verify, but only in bands
    image = photo("astronaut")
    inliers, mirrored, occupancy, affine, anisotropy, skew = verify_pair(features(cv2.flip(_meme(image), 1)),
                                                                         features(image), mirror=True)
    assert inliers >= 15 and mirrored and occupancy > 0.5 and affine > 0.9 and anisotropy < 1.03 and skew < 0.01
    h, w = image.shape[:2]
    squashed = verify_pair(features(cv2.resize(image, (w, h * 3 // 4))), features(image))
    assert squashed[0] >= 15 and squashed[4] == pytest.approx(4 / 3, abs=0.01) and squashed[5] < 0.01


def test_band_occupancy_oracle():
    rng = np.random.default_rng(0)
    box = np.array([[0, 0], [1000, 0], [0, 800], [1000, 800]], float)
    content = np.r_[box, np.c_[rng.uniform(0, 1000, 400), rng.uniform(0, 800, 400)]]
    band = np.c_[rng.uniform(100, 900, 200), rng.uniform(700, 740, 200)]  # rows 17-18 of 20
    assert band_occupancy(band, content) == pytest.approx(2 / 20)
    two_bands = np.r_[band, np.c_[rng.uniform(100, 900, 200), rng.uniform(20, 60, 200)]]
    assert band_occupancy(two_bands, content) == pytest.approx(4 / 20)  # rows 0-1 and 17-18
    assert band_occupancy(content[4:], content) == 1.0
    # only slices that hold keypoints count: inliers over all of a half-empty image reach all of it
    half = content[content[:, 1] < 400]
    assert band_occupancy(half[half[:, 0] > 10], half) == 1.0


def test_meme_text_on_unrelated_photos_does_not_group_them(tmp_path):
    """Six unrelated photos with the same meme text top and bottom, and two real copies."""
    pytest.importorskip("skimage")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins"):
        _write(photos, f"{name}_meme.jpg", _meme(photo(name)))
    _write(photos, "astronaut.jpg", photo("astronaut"))
    assert _groups_of(photos) == [["astronaut.jpg", "astronaut_meme.jpg"]]


def test_grouping_splits_a_bridge_around_the_keep_image():
    # 1 and 2 are copies of 0 (the keep); 3 resembles 2 only: a chain 0-2-3 is cut at 2-3.
    edges = {(0, 1), (0, 2), (1, 2), (2, 3)}
    [component] = connected_components([0, 1, 2, 3], list(edges))
    assert component == [0, 1, 2, 3]
    order = {i: (i,) for i in range(4)}
    assert split_around_keep(component, edges, order) == [[0, 1, 2]]


def test_a_member_joins_through_several_links_but_not_through_one_bridge():
    # 0 keeps; 1, 2, 3 are its copies; 4 failed against 0 but is a copy of 1, 2 and 3;
    # 5 is a collage of 3 and another photograph whose copies are 6 and 7.
    edges = {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (1, 4), (2, 4), (3, 4), (3, 5), (0, 5),
             (5, 6), (5, 7), (6, 7)}
    [component] = connected_components(list(range(8)), list(edges))
    order = {i: (i,) for i in range(8)}
    assert split_around_keep(component, edges, order, min_links=3) == [[0, 1, 2, 3, 5, 4], [6, 7]]
    assert split_around_keep(component, edges, order, min_links=0) == [[0, 1, 2, 3, 5], [6, 7]]


def test_keep_is_largest_then_oldest_then_biggest_file():
    rows = [{"path": "a", "width": 10, "height": 10, "file_size": 5, "mtime": 3.0},
            {"path": "b", "width": 20, "height": 10, "file_size": 1, "mtime": 9.0},
            {"path": "c", "width": 20, "height": 10, "file_size": 1, "mtime": 2.0},
            {"path": "d", "width": 20, "height": 10, "file_size": 2, "mtime": 9.0}]
    assert [r["path"] for r in sorted(rows, key=keep_order)] == ["c", "d", "b", "a"]  # a copy is younger


def test_screening_rejects_unrelated_pairs_and_keeps_copies():
    """The 256-strongest-feature first pass drops an unrelated pair and keeps a mirrored, cropped copy."""
    pytest.importorskip("skimage")
    from vladsearch.features import get_extractor

    extractor = get_extractor("sift")

    def features(image):
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        found = extractor.extract(grey)
        order = np.argsort(-found.scores, kind="stable")  # stored strongest first, as the cache keeps them
        return found.keypoints[order], found.descriptors[order]

    image = photo("astronaut")
    h, w = image.shape[:2]
    copy = features(cv2.flip(image[h // 8:, : w - w // 6], 1))
    full = verify_pair(copy, features(image), mirror=True)
    screened = verify_pair(copy, features(image), mirror=True, screen=256, screen_inliers=8)
    assert screened[0] >= 15 and screened[1] and screened == full  # passes the screen, then the full match
    unrelated = verify_pair(features(photo("coffee")), features(photo("chelsea")), mirror=True, screen=256,
                            screen_inliers=8)
    assert unrelated[0] < 8 and unrelated[2:] == (0.0, 0.0, 1.0, 0.0)  # rejected by the first pass
    # a pair only a mirrored VLAD proposed, whose plain VLAD similarity is far lower, is matched mirrored only
    assert verify_pair(copy, features(image), mirror="mirrored only") == full
    plain_copy = features(image[h // 8:, : w - w // 6])
    assert verify_pair(plain_copy, features(image), mirror="mirrored only")[0] < 15
    assert verify_pair(plain_copy, features(image), mirror="mirrored")[0] >= 15  # mirrored, then as is


# SimHash with CODE_BITS = 2,048 bits estimates a cosine as cos(π·hamming/bits); the angle's
# standard error is at most π·sqrt(0.25/2048) ≈ 0.035 (and a cosine's error is at most its
# angle's). ESTIMATE_TOLERANCE is about 6 of those for one pair; RANK_MARGIN about 5 for the
# difference of two estimates, so an order that ties or near-ties could flip is never asserted.
ESTIMATE_TOLERANCE = 0.2
RANK_MARGIN = 0.25


def _guaranteed_neighbours(similarity: np.ndarray, k: int, margin: float) -> list[tuple[int, int]]:
    """(query, neighbour) positions an approximate top-k must hold when every estimate errs by
    less than margin / 2: fewer than k other images (the query itself included) come within
    `margin` of the neighbour's exact similarity."""
    pairs = []
    for q, row in enumerate(similarity):
        for n in range(len(row)):
            if n != q and np.count_nonzero(np.delete(row, n) > row[n] - margin) <= k - 1:
                pairs.append((q, n))
    return pairs


def test_binary_code_search_finds_what_the_exact_index_finds(collection):
    """Above `exact_limit` images an exact index is searched through 2,048-bit SimHash codes;
    forced here on a small collection, its cosines are the exact ones within a stated
    tolerance, every neighbour that beats the rest by a stated margin is found, and the
    groups are the same. Nothing about the order of near-ties (byte-identical copies tie
    exactly, and float rounding differs between CPUs)."""
    from vladsearch.collection.duplicates import find_duplicates
    from vladsearch.collection.knn import CollectionSearch
    from vladsearch.index import Index

    index = Index.open(collection[0])
    ids = np.array(sorted(int(i) for i in index.snapshot.loaded_ids), np.int64)
    exact, approximate = CollectionSearch(index), CollectionSearch(index, exact_limit=0)
    assert not exact.approximate and approximate.approximate
    k = 5
    D, I = approximate.search(approximate.vectors(ids), k)
    D_reused, I_reused = approximate.search_indexed(ids, k)  # stored codes instead of re-encoding
    assert np.array_equal(I_reused, I) and np.array_equal(D_reused, D)
    x = exact.vectors(ids)
    similarity = x @ x.T  # the exact cosines (stored vectors are L2-normalised)
    # each image finds itself among the images byte-identical to it (which tie with it)
    assert all(i in found[:2] for i, found in zip(ids, I)) and np.allclose(D[:, 0], 1.0, atol=0.01)
    # every cosine the codes report is the exact one within the tolerance
    position = {int(i): p for p, i in enumerate(ids)}
    for q, (found, scores) in enumerate(zip(I, D)):
        exact_scores = similarity[q, [position[int(i)] for i in found]]
        assert np.all(np.abs(scores - exact_scores) <= ESTIMATE_TOLERANCE), (ids[q], found, scores, exact_scores)
    # every neighbour that no other image comes near is in the approximate top k
    guaranteed = _guaranteed_neighbours(similarity, k, RANK_MARGIN)
    distinct = [(q, n) for q, n in guaranteed if similarity[q, n] < 0.999]  # not byte-identical copies
    assert len(distinct) >= 15, "too few well-separated neighbours for the test to mean anything"
    missed = [(int(ids[q]), int(ids[n])) for q, n in guaranteed if ids[n] not in I[q]]
    assert not missed, f"(query, neighbour) pairs the code search missed: {missed}"
    assert np.all(np.abs(D - np.clip(D, -1, 1)) == 0)  # cosines estimated from Hamming distances
    # pair similarities are on the scale the search reports: exact cosines, or the codes' estimate
    assert np.allclose(approximate.similarities(ids, I[:, 1]), D[:, 1], atol=1e-5)
    D_exact, I_exact = exact.search(x, 3)
    assert np.allclose(exact.similarities(ids, I_exact[:, 1]), D_exact[:, 1], atol=1e-4)
    groups = {tuple(g.ids) for g in find_duplicates(index, workers=2).groups}
    assert {tuple(g.ids) for g in find_duplicates(index, workers=2, exact_limit=0).groups} == groups
    assert {tuple(g.ids) for g in find_duplicates(index, workers=2, knn="codes").groups} == groups
    assert not CollectionSearch(index, exact_limit=0, knn="index").approximate


def test_skipping_hopeless_fits_keeps_every_verdict(collection):
    """counts=False (duplicates) fits no model to a side with fewer tentative matches than the
    inliers it needs: the verdict (copy or not) is the same as with every fit done."""
    from vladsearch.index import Index
    from vladsearch.query.pair_verification import verify_pairs
    from vladsearch.store import catalog

    index = Index.open(collection[0])
    rows = {r["id"]: r for r in catalog.image_rows(index.snapshot.table)}
    ids = sorted(rows)
    pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]

    def features(image_id):
        return index.snapshot.cached_features(rows[image_id])

    full = verify_pairs(pairs, features, workers=1, mirror=True, screen=256, screen_inliers=8)
    quick = verify_pairs(pairs, features, workers=1, mirror=True, screen=256, screen_inliers=8, counts=False)
    assert [v.inliers >= 15 for v in full] == [v.inliers >= 15 for v in quick]
    assert sum(v.inliers >= 15 for v in full) >= 20
    assert [v for v in full if v.inliers >= 15] == [v for v in quick if v.inliers >= 15]


def test_cached_features_read_only_the_screened_head_until_all_are_needed(collection):
    from vladsearch.index import Index
    from vladsearch.query.verification import CachedFeatures, FeatureSource
    from vladsearch.store import catalog

    index = Index.open(collection[0])
    rows = {r["id"]: r for r in catalog.image_rows(index.snapshot.table)}
    image_id = max(rows, key=lambda i: rows[i]["feat_count"] or 0)
    lazy = FeatureSource.of_index(index, rows, 1)(image_id)
    assert isinstance(lazy, CachedFeatures) and lazy.feature_count > 256
    keypoints, descriptors = lazy.head(256)
    assert len(keypoints) == len(descriptors) == 256 and lazy._all is None  # nothing else read yet
    full = index.snapshot.cached_features(rows[image_id])
    assert np.array_equal(keypoints, full[0][:256]) and np.array_equal(descriptors, full[1][:256])
    assert np.array_equal(lazy[1], full[1]) and len(lazy[0]) == lazy.feature_count


def test_an_image_that_cannot_be_read_again_is_named_and_bad_arguments_fail_first(tmp_path):
    """Without a feature cache, photos are decoded again: one damaged since the build is
    reported (not silently unverified); an output folder that does not exist, or a negative
    count, is refused before any work."""
    pytest.importorskip("skimage")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        _write(photos, f"{name}.jpg", photo(name))
    image = photo("astronaut")
    _write(photos, "astronaut_small.jpg", cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2)))
    index = tmp_path / "photos.vlad"
    cli("build", str(photos), "--index", str(index), "--quiet", "--workers", "2", "--no-keep-features")
    (photos / "chelsea.jpg").write_bytes(b"not a jpeg any more")
    data = json.loads(cli("duplicates", str(index), "--json", "--quiet", "--workers", "2").stdout)
    assert data["unreadable"] == ["chelsea.jpg"]
    assert [sorted(g["images"]) for g in data["groups"]] == [["astronaut.jpg", "astronaut_small.jpg"]]
    table = cli("duplicates", str(index), "--quiet", "--workers", "2").stdout
    assert "1 images were not verified" in table and "chelsea.jpg" in table

    for args in (("--html", str(tmp_path / "missing" / "report.html")), ("--screen", "-1"), ("--neighbors", "0")):
        done = cli("duplicates", str(index), *args, check=False)
        assert done.returncode == 2 and "duplicates" not in done.stdout
        assert "does not exist" in done.stderr or "must be" in done.stderr
    done = cli("pairs", str(index), "--top", "2", "--output", str(tmp_path / "missing" / "pairs.txt"), check=False)
    assert done.returncode == 2 and "folder" in done.stderr and not (tmp_path / "missing").exists()


def test_search_and_duplicates_agree(collection):
    """One verifier: `search A` confirms B as identical or a copy exactly when `duplicates` groups A and B."""
    index, photos, truth = collection
    data = json.loads(cli("duplicates", str(index), "--json", "--quiet", "--workers", "2").stdout)
    group_of = {name: frozenset(g["images"]) for g in data["groups"] for name in g["images"]}
    names = sorted(p.name for p in photos.iterdir())
    answers = json.loads(cli("search", str(index), *[str(photos / n) for n in names], "--json", "--top", "20",
                             "--quiet", "--workers", "2").stdout)
    for name, answer in zip(names, answers):
        confirmed = {m["image"] for m in answer["matches"] if m["verdict"] in ("identical", "copy")} - {name}
        assert confirmed == set(group_of.get(name, {name})) - {name}, name
        if name not in truth:  # a captioned stranger: the caption's letters alone confirm nothing
            assert [m["image"] for m in answer["matches"]] == [name], name
