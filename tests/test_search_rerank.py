"""Reranking, verification, query expansion and the feature cache, end to end."""

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
    plain = Index.build(photo_dir, clusters=16, progress=False)
    plain.save(root / "plain.vlad")
    queries = root / "queries"
    queries.mkdir()
    h, w = photo("rocket").shape[:2]
    cv2.imwrite(str(queries / "crop_rocket.jpg"), photo("rocket")[h // 4: 3 * h // 4, w // 4: 3 * w // 4])
    cv2.imwrite(str(queries / "rot_coffee.jpg"), cv2.rotate(photo("coffee"), cv2.ROTATE_90_COUNTERCLOCKWISE))
    cv2.imwrite(str(queries / "absent_grass.jpg"), photo("grass"))
    return root, queries


def test_reranked_matches_carry_inliers_and_verified_ones_lead(indexes):
    root, queries = indexes
    index = Index.open(root / "cached.vlad")
    results = index.search([queries], top=5, rerank=10)
    by_name = {r.query.rsplit("/", 1)[-1]: r for r in results}
    for name, source in [("crop_rocket.jpg", "rocket.jpg"), ("rot_coffee.jpg", "coffee.jpg")]:
        best = by_name[name].matches[0]
        assert best.image == source and best.verified and best.inliers >= 15
        scores = [m.score for m in by_name[name].matches]
        assert scores == sorted(scores, reverse=True)
        assert all(m.inliers is not None for m in by_name[name].matches)
    assert not any(m.verified for m in by_name["absent_grass.jpg"].matches)


def test_verified_only_answers_not_in_collection(indexes, capsys):
    root, queries = indexes
    code = main(["search", str(root / "cached.vlad"), str(queries / "absent_grass.jpg"),
                 str(queries / "crop_rocket.jpg"), "--rerank", "10", "--verified-only", "--json", "-q"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["matches"] == []
    assert out[1]["matches"][0]["image"] == "rocket.jpg" and out[1]["matches"][0]["verified"] is True
    assert isinstance(out[1]["matches"][0]["inliers"], int)


def test_cache_and_re_extraction_agree(indexes):
    root, queries = indexes
    query = [queries / "crop_rocket.jpg"]
    cached = Index.open(root / "cached.vlad").search(query, top=3, rerank=5)[0].matches
    plain = Index.open(root / "plain.vlad").search(query, top=3, rerank=5)[0].matches
    assert cached[0].image == plain[0].image == "rocket.jpg"
    # the cache keeps 512 keypoints per image, re-extraction 1024: counts differ, verdicts agree
    assert cached[0].verified and plain[0].verified


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


def test_rerank_arguments_are_checked(indexes):
    root, queries = indexes
    index = Index.open(root / "plain.vlad")
    with pytest.raises(ValueError, match="needs --rerank"):
        index.search([queries / "rot_coffee.jpg"], verified_only=True)


def test_mirror_permutation_matches_sift_on_a_flipped_photo():
    from vladsearch.features import get_extractor
    from vladsearch.rerank import match_descriptors, mirror_sift_descriptors

    gray = cv2.cvtColor(photo("astronaut"), cv2.COLOR_BGR2GRAY)
    sift = get_extractor("sift", max_keypoints=1000)
    original, flipped = sift.extract(gray), sift.extract(gray[:, ::-1].copy())
    plain = match_descriptors(original.descriptors, flipped.descriptors)
    mirrored = match_descriptors(mirror_sift_descriptors(original.descriptors), flipped.descriptors)
    assert len(mirrored) > 3 * max(len(plain), 20)
    # mirrored matches land on mirrored positions
    xs = gray.shape[1] - 1 - original.keypoints[mirrored[:, 0], 0]
    assert np.median(np.abs(xs - flipped.keypoints[mirrored[:, 1], 0])) < 1.0


def test_flipped_copy_verifies_only_with_mirrored(indexes, tmp_path):
    root, _ = indexes
    index = Index.open(root / "cached.vlad")
    query = tmp_path / "flipped_coffee.jpg"
    cv2.imwrite(str(query), cv2.flip(photo("coffee"), 1))
    plain = index.search([query], top=3, rerank=10)[0].matches
    flipped = index.search([query], top=3, rerank=10, mirrored=True)[0].matches
    assert not any(m.verified for m in plain)
    assert flipped[0].image == "coffee.jpg" and flipped[0].verified
