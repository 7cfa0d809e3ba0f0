"""Re-ranking: matching against a loop oracle, verification on real photographs, ordering,
αQE / DBA against straightforward loops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vladsearch.features import Features, get_extractor
from vladsearch.query.rerank import (
    DEFAULT_MIN_INLIERS,
    RerankedMatch,
    average_query_expansion,
    database_augmentation,
    match_descriptors,
    rerank_candidates,
    verify_matches,
)


def match_oracle(desc_q, desc_db, ratio):
    """Mutual nearest neighbours + Lowe's ratio test, one pair at a time."""
    desc_q, desc_db = desc_q.astype(np.float64), desc_db.astype(np.float64)
    out = []
    for i, a in enumerate(desc_q):
        dists = [np.linalg.norm(a - b) for b in desc_db]
        order = np.argsort(dists, kind="stable")
        j = order[0]
        if len(order) > 1 and not dists[j] < ratio * dists[order[1]]:
            continue
        back = [np.linalg.norm(q - desc_db[j]) for q in desc_q]
        if int(np.argmin(back)) == i:
            out.append((i, int(j)))
    return np.array(out, np.int64).reshape(-1, 2)


@pytest.mark.parametrize("ratio", [0.8, 0.95])
def test_match_descriptors_equals_loop_oracle(ratio):
    rng = np.random.default_rng(0)
    desc_db = rng.uniform(0, 100, (120, 32)).astype(np.float32)  # raw, unnormalised like SIFT
    # Half the queries are noisy copies of database descriptors, half unrelated.
    desc_q = np.concatenate([desc_db[rng.permutation(120)[:50]] + rng.normal(0, 3, (50, 32)),
                             rng.uniform(0, 100, (50, 32))]).astype(np.float32)
    got = match_descriptors(desc_q, desc_db, ratio=ratio)
    expected = match_oracle(desc_q, desc_db, ratio)
    np.testing.assert_array_equal(got, expected)
    assert len(got) >= 45  # the noisy copies are found
    assert got.dtype == np.int64 and got.shape[1] == 2


def test_match_descriptors_odd_inputs():
    rng = np.random.default_rng(1)
    d = rng.random((5, 8), dtype=np.float32)
    assert match_descriptors(d[:0], d).shape == (0, 2)
    assert match_descriptors(d, d[:0]).shape == (0, 2)
    # One database descriptor: no second neighbour, the ratio test passes; mutual NN holds.
    np.testing.assert_array_equal(match_descriptors(d, d[2:3]), [[2, 0]])
    np.testing.assert_array_equal(match_descriptors(d, d), np.stack([np.arange(5)] * 2, axis=1))
    with pytest.raises(ValueError, match="same D"):
        match_descriptors(d, rng.random((5, 9)))
    before = d.copy()
    match_descriptors(d, d)
    np.testing.assert_array_equal(d, before)


@pytest.fixture(scope="module")
def sift():
    return get_extractor("sift", max_keypoints=1024)


def gray(name: str) -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    image = getattr(skimage_data, name)()
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


H_TRUE = np.array([[0.85, 0.12, 30.0], [-0.10, 0.92, 40.0], [2e-4, -1e-4, 1.0]])


@pytest.fixture(scope="module")
def warped_pair(sift):
    image = gray("astronaut")
    warped = cv2.warpPerspective(image, H_TRUE, (image.shape[1], image.shape[0]))
    return sift.extract(image), sift.extract(warped)


def test_verify_finds_known_homography(warped_pair):
    original, warped = warped_pair
    matches = match_descriptors(original.descriptors, warped.descriptors)
    inliers, mask = verify_matches(original.keypoints, warped.keypoints, matches)
    assert inliers >= 200 and inliers == mask.sum() and mask.shape == (len(matches),)
    # The inliers agree with the true homography.
    src = original.keypoints[matches[mask, 0]].astype(np.float64)
    projected = cv2.perspectiveTransform(src[None], H_TRUE)[0]
    error = np.linalg.norm(projected - warped.keypoints[matches[mask, 1]], axis=1)
    assert np.median(error) < 1.5 and np.mean(error < 5) > 0.95
    # Deterministic: the same seed gives the same mask.
    np.testing.assert_array_equal(verify_matches(original.keypoints, warped.keypoints, matches)[1], mask)
    fundamental, _ = verify_matches(original.keypoints, warped.keypoints, matches, model="fundamental")
    assert fundamental >= 200


def test_verify_threshold_follows_image_size(warped_pair):
    """The threshold is in pixels of a 1024-px image, so 4× and 8× enlargements of the same
    keypoints verify alike; in raw pixels (reference_side=None) 8× is far stricter."""
    original, warped = warped_pair
    matches = match_descriptors(original.descriptors, warped.descriptors)
    counts = [verify_matches(original.keypoints * f, warped.keypoints * f, matches)[0] for f in (4, 8)]
    raw = verify_matches(original.keypoints * 8, warped.keypoints * 8, matches, reference_side=None)[0]
    assert abs(counts[0] - counts[1]) <= 3 and min(counts) >= 200
    assert raw < 0.9 * counts[1]


def test_verify_rejects_unrelated_photographs(sift):
    features = [sift.extract(gray(name)) for name in ("astronaut", "coffee", "rocket", "brick", "camera")]
    for i in range(len(features)):
        for j in range(i + 1, len(features)):
            matches = match_descriptors(features[i].descriptors, features[j].descriptors)
            inliers, _ = verify_matches(features[i].keypoints, features[j].keypoints, matches)
            assert inliers < DEFAULT_MIN_INLIERS


def test_verify_degenerate_inputs_never_raise():
    kps = np.zeros((10, 2), np.float32)
    identity = np.stack([np.arange(10)] * 2, axis=1)
    assert verify_matches(kps, kps, identity)[0] == 0  # all points coincide
    line = np.stack([np.arange(10.0), np.arange(10.0)], axis=1).astype(np.float32)
    assert verify_matches(line, line, identity)[0] == 0  # collinear
    assert verify_matches(line, line, identity[:3])[0] == 0  # below the minimal sample
    assert verify_matches(line, line, identity[:7], model="fundamental")[0] == 0
    inliers, mask = verify_matches(kps, kps, np.zeros((0, 2), int))
    assert inliers == 0 and mask.shape == (0,)
    nan = np.full((10, 2), np.nan, np.float32)
    assert verify_matches(nan, nan, identity)[0] == 0
    with pytest.raises(ValueError, match="homography"):
        verify_matches(kps, kps, identity, model="affine")


def test_rerank_candidates_orders_verified_first(sift, warped_pair):
    original, warped = warped_pair
    coffee = sift.extract(gray("coffee"))
    cropped = sift.extract(gray("astronaut")[100:400, 50:450])
    empty = Features.empty(128, (10, 10))
    candidates = [(7, coffee.keypoints, coffee.descriptors),
                  (3, empty.keypoints, empty.descriptors),
                  (5, cropped.keypoints, cropped.descriptors),
                  (9, warped.keypoints, warped.descriptors)]
    ranked = rerank_candidates(original, candidates, [0.9, 0.8, 0.3, 0.2])
    assert all(isinstance(r, RerankedMatch) for r in ranked)
    assert {r.id for r in ranked[:2]} == {5, 9}  # the two views of the query, despite low VLAD scores
    assert all(r.verified for r in ranked[:2]) and not any(r.verified for r in ranked[2:])
    assert [r.id for r in ranked[2:]] == [7, 3]  # unverified keep their VLAD order
    assert ranked[0].inliers >= ranked[1].inliers >= DEFAULT_MIN_INLIERS
    assert next(r for r in ranked if r.id == 3).inliers == 0
    assert next(r for r in ranked if r.id == 9).vlad_score == pytest.approx(0.2)
    with pytest.raises(ValueError, match="VLAD scores"):
        rerank_candidates(original, candidates, [0.1])


def test_rerank_ties_broken_by_vlad_score():
    features = Features.empty(128, (10, 10))
    candidates = [(i, features.keypoints, features.descriptors) for i in range(3)]
    ranked = rerank_candidates(features, candidates, [0.1, 0.7, 0.4], min_inliers=0)
    assert [r.id for r in ranked] == [1, 2, 0]  # all verified with 0 inliers: VLAD order


def normalised(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_average_query_expansion_equals_loop():
    rng = np.random.default_rng(2)
    xq = normalised(rng.normal(size=(4, 16))).astype(np.float32)
    xn = normalised(rng.normal(size=(4, 6, 16)) + xq[:, None]).astype(np.float32)
    xq_before, xn_before = xq.copy(), xn.copy()
    for alpha, n in ((3.0, None), (0.0, 2), (1.0, 4)):
        got = average_query_expansion(xq, xn, alpha=alpha, n=n)
        for q in range(4):
            total = xq[q].astype(np.float64).copy()
            for neighbour in xn[q][:n]:
                total += max(float(xq[q] @ neighbour), 0.0) ** alpha * neighbour
            np.testing.assert_allclose(got[q], total / np.linalg.norm(total), atol=1e-5)
        assert got.dtype == np.float32
    np.testing.assert_array_equal(xq, xq_before)
    np.testing.assert_array_equal(xn, xn_before)
    # Negative similarities get no weight: a query far from its neighbours stays put.
    opposite = -xq[:, None, :].repeat(3, axis=1)
    np.testing.assert_allclose(average_query_expansion(xq, opposite), xq, atol=1e-6)


def test_database_augmentation_equals_loop():
    rng = np.random.default_rng(3)
    xb = normalised(rng.normal(size=(20, 8))).astype(np.float32)
    sims_all = xb @ xb.T
    idx = np.argsort(-sims_all, axis=1)[:, :4]  # column 0 is the vector itself
    sims = np.take_along_axis(sims_all, idx, axis=1)
    idx[0, 3] = -1  # faiss padding
    xb_before, idx_before = xb.copy(), idx.copy()
    got = database_augmentation(xb, idx, sims, alpha=3.0)
    for i in range(20):
        total = xb[i].astype(np.float64).copy()
        for j, s in zip(idx[i], sims[i]):
            if j >= 0 and j != i:
                total += max(float(s), 0.0) ** 3 * xb[j]
        np.testing.assert_allclose(got[i], total / np.linalg.norm(total), atol=1e-5)
    np.testing.assert_array_equal(xb, xb_before)
    np.testing.assert_array_equal(idx, idx_before)
    with pytest.raises(ValueError, match="beyond xb"):
        database_augmentation(xb, idx + 100, sims)
