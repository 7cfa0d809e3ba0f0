"""Answers: verification by default, verdicts, confidence, query expansion and the feature cache, end to end."""

import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import photo

from vladsearch import Index
from vladsearch.cli import main


@pytest.fixture(scope="module")
def indexes(photo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("rr")
    cached = Index.build(photo_dir, clusters=16, keep_features=512, progress=False)
    cached.save(root / "cached.vlad")
    plain = Index.build(photo_dir, clusters=16, keep_features=0, progress=False)
    plain.save(root / "plain.vlad")
    queries = root / "queries"
    queries.mkdir()
    h, w = photo("rocket").shape[:2]
    cv2.imwrite(str(queries / "crop_rocket.jpg"), photo("rocket")[h // 4: 3 * h // 4, w // 4: 3 * w // 4])
    cv2.imwrite(str(queries / "rot_coffee.jpg"), cv2.rotate(photo("coffee"), cv2.ROTATE_90_COUNTERCLOCKWISE))
    cv2.imwrite(str(queries / "absent_grass.jpg"), photo("grass"))
    return root, queries


def test_default_search_answers_with_verdicts(indexes):
    root, queries = indexes
    results = Index.open(root / "cached.vlad").search([queries])  # no options: verified, confirmed only
    by_name = {r.query.rsplit("/", 1)[-1]: r for r in results}
    for name, source in [("crop_rocket.jpg", "rocket.jpg"), ("rot_coffee.jpg", "coffee.jpg")]:
        result = by_name[name]
        best = result.matches[0]
        assert result.answer == "copy" and best.image == source and best.verdict == "copy"
        assert best.verified and best.inliers >= 15 and 0.5 < best.confidence <= 1.0
        assert all(m.verified for m in result.matches)
        assert best.to_dict()["verdict"] == "copy" and "vlad_score" in best.to_dict()
    grass = by_name["absent_grass.jpg"]
    assert grass.matches == [] and grass.answer == "not in the collection"
    assert grass.to_dict() == {"query": grass.query, "answer": "not in the collection", "matches": []}


def test_unverified_candidates_follow_the_confirmed_ones(indexes):
    root, queries = indexes
    index = Index.open(root / "cached.vlad")
    result = index.search([queries / "crop_rocket.jpg"], top=6, unverified=True)[0]
    flags = [m.verified for m in result.matches]
    assert flags[0] is True and False in flags and flags == sorted(flags, reverse=True)
    assert all(m.verdict is None and m.confidence == 0.0 for m in result.matches if not m.verified)
    grass = index.search([queries / "absent_grass.jpg"], top=4, unverified=True)[0]
    assert grass.answer == "not in the collection" and len(grass.matches) == 4


def test_rerank_0_is_the_plain_vlad_list(indexes):
    root, queries = indexes
    result = Index.open(root / "cached.vlad").search([queries / "absent_grass.jpg"], top=5, rerank=0)[0]
    scores = [m.score for m in result.matches]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert result.answer is None and all(m.verified is None for m in result.matches)
    assert set(result.to_dict()["matches"][0]) == {"image", "score"}


def test_identical_file_and_min_confidence(indexes, photo_dir, tmp_path):
    root, queries = indexes
    index = Index.open(root / "cached.vlad")
    exact = tmp_path / "same_bytes.png"
    shutil.copyfile(next(p for p in photo_dir.iterdir() if p.stem == "coffee"), exact)
    both = index.search([exact, queries / "rot_coffee.jpg"])
    assert both[0].answer == "identical" and both[0].matches[0].confidence == 1.0
    assert both[1].answer == "copy"
    strict = index.search([exact, queries / "rot_coffee.jpg"], min_confidence=1.0)
    assert strict[0].answer == "identical" and strict[1].answer == "not in the collection"


def test_cli_table_json_and_csv(indexes, capsys):
    root, queries = indexes
    args = ["search", str(root / "cached.vlad"), str(queries / "absent_grass.jpg"), str(queries / "crop_rocket.jpg"), "-q"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "absent_grass.jpg: not in the collection" in table
    assert "crop_rocket.jpg: a copy of rocket.jpg" in table and "confidence" in table.splitlines()[2]
    assert main(args + ["--json", "--verified-only"]) == 0  # the old flag is still accepted
    out = json.loads(capsys.readouterr().out)
    assert out[0]["answer"] == "not in the collection" and out[0]["matches"] == []
    first = out[1]["matches"][0]
    assert out[1]["answer"] == "copy" and first["image"] == "rocket.jpg" and first["verified"] is True
    assert set(first) == {"image", "score", "verdict", "confidence", "verified", "inliers", "vlad_score", "mirrored"}
    assert main(args + ["--csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("query,answer,rank,image,verdict,confidence")
    assert rows[1].split(",")[1] == "not in the collection" and ",copy," in rows[2]


def test_cache_and_re_extraction_agree(indexes, capsys):
    root, queries = indexes
    query = [queries / "crop_rocket.jpg"]
    cached = Index.open(root / "cached.vlad").search(query, top=3, rerank=5)[0].matches
    plain = Index.open(root / "plain.vlad").search(query, top=3, rerank=5)[0].matches
    assert cached[0].image == plain[0].image == "rocket.jpg"
    # the cache keeps 512 keypoints per image, re-extraction 1024: counts differ, verdicts agree
    assert cached[0].verdict == plain[0].verdict == "copy"
    # an index without the cache still verifies, and the CLI says how to add the cache
    assert main(["search", str(root / "plain.vlad"), str(query[0]), "-q"]) == 0
    captured = capsys.readouterr()
    assert "a copy of rocket.jpg" in captured.out
    assert "keeps no local features" in captured.err and "vladsearch build" in captured.err


def test_feature_cache_follows_add_and_compact(indexes, photo_dir, tmp_path):
    root, _queries = indexes
    work = tmp_path / "w.vlad"
    shutil.copytree(root / "cached.vlad", work)
    extra = tmp_path / "extra"
    extra.mkdir()
    cv2.imwrite(str(extra / "grass.jpg"), photo("grass"))
    query = tmp_path / "query_grass.jpg"
    shutil.copy(extra / "grass.jpg", query)
    Index.open(work).add([extra], progress=False, merge=False)
    shutil.rmtree(extra)  # from now on only the cache can verify the added image
    for step in ("added", "compacted"):
        index = Index.open(work)
        assert len(index.info()["segments"]) == (2 if step == "added" else 1)
        match = index.search([query], top=1, rerank=3, verified_only=True)[0].matches[0]
        assert match.image.endswith("extra/grass.jpg") and match.verified, step
        if step == "added":
            index.compact()


def test_query_expansion_keeps_the_copy_first(indexes):
    root, queries = indexes
    index = Index.open(root / "cached.vlad")
    for kwargs in ({"query_expansion": 2}, {"query_expansion": 2, "rerank": 5}):
        matches = index.search([queries / "rot_coffee.jpg"], top=5, **kwargs)[0].matches
        assert matches[0].image == "coffee.jpg" and len(matches) == 5
        assert len({m.image for m in matches}) == 5


def test_search_arguments_are_checked(indexes, capsys):
    root, queries = indexes
    index = Index.open(root / "plain.vlad")
    with pytest.raises(ValueError, match="min-confidence"):
        index.search([queries / "rot_coffee.jpg"], min_confidence=1.5)
    with pytest.raises(ValueError, match="drop --rerank 0"):
        index.search([queries / "rot_coffee.jpg"], rerank=0, min_confidence=0.5)
    with pytest.raises(SystemExit):
        main(["search", str(root / "plain.vlad"), str(queries / "rot_coffee.jpg"), "--rerank", "-1"])
    assert "--rerank" in capsys.readouterr().err


def test_mirror_permutation_matches_sift_on_a_flipped_photo():
    from vladsearch.features import get_extractor
    from vladsearch.query.rerank import match_descriptors, mirror_sift_descriptors

    gray = cv2.cvtColor(photo("astronaut"), cv2.COLOR_BGR2GRAY)
    sift = get_extractor("sift", max_keypoints=1000)
    original, flipped = sift.extract(gray), sift.extract(gray[:, ::-1].copy())
    plain = match_descriptors(original.descriptors, flipped.descriptors)
    mirrored = match_descriptors(mirror_sift_descriptors(original.descriptors), flipped.descriptors)
    assert len(mirrored) > 3 * max(len(plain), 20)
    # mirrored matches land on mirrored positions
    xs = gray.shape[1] - 1 - original.keypoints[mirrored[:, 0], 0]
    assert np.median(np.abs(xs - flipped.keypoints[mirrored[:, 1], 0])) < 1.0


def test_flipped_copy_is_found_by_default(indexes, tmp_path):
    root, _ = indexes
    index = Index.open(root / "cached.vlad")
    query = tmp_path / "flipped_coffee.jpg"
    cv2.imwrite(str(query), cv2.flip(photo("coffee"), 1)[10:-10, 20:])
    flipped = index.search([query], top=3)[0]
    assert flipped.answer == "copy" and flipped.matches[0].image == "coffee.jpg" and flipped.matches[0].mirrored
    without = index.search([query], top=3, mirrored=False)[0]  # SIFT itself is not mirror-invariant
    assert without.answer == "not in the collection"
