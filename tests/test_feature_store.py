"""The on-disk local-feature cache: round trip, keypoint cap, truncation, reopening."""

from __future__ import annotations

import numpy as np
import pytest

from vladsearch.features import Features
from vladsearch.store.feature_store import FeatureStore, bytes_per_image


def random_features(n: int, dim: int = 16, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    return Features(
        keypoints=(rng.random((n, 2)) * [6000, 4000]).astype(np.float32),  # beyond float16's exact range
        descriptors=np.floor(rng.random((n, dim)) * 256).astype(np.float32),  # SIFT-like integers
        scores=rng.random(n).astype(np.float32),
        image_size=(6000, 4000),
    )


def test_round_trip_and_reopen(tmp_path):
    images = [random_features(n, seed=n) for n in (30, 0, 7)]
    with FeatureStore(tmp_path / "features", dim=16, mode="a") as store:
        rows = [store.append(f, max_keypoints=None) for f in images]
        assert rows == [(0, 30), (30, 0), (30, 7)]
        assert store.committed_rows == len(store) == 37
        # Readable before close, and again after a later append (the map is refreshed).
        np.testing.assert_array_equal(np.sort(store.get(*rows[0])[0], axis=0), np.sort(images[0].keypoints, axis=0))
        store.append(random_features(5, seed=99), max_keypoints=None)
        keypoints2, _ = store.get(*rows[2])
        assert store.get(37, 5)[0].shape == (5, 2)
    reopened = FeatureStore(tmp_path / "features", dim=16)
    assert reopened.committed_rows == 42
    for features, (offset, count) in zip(images, rows):
        keypoints, descriptors = reopened.get(offset, count)
        assert keypoints.dtype == descriptors.dtype == np.float32
        assert keypoints.shape == (count, 2) and descriptors.shape == (count, 16)
        order = np.argsort(-features.scores, kind="stable")  # stored strongest first
        np.testing.assert_array_equal(keypoints, features.keypoints[order])  # float32: exact
        np.testing.assert_array_equal(descriptors, features.descriptors[order])  # integers ≤ 255: exact in float16
    np.testing.assert_array_equal(keypoints2, reopened.get(*rows[2])[0])


def test_float16_descriptors_keep_unit_vectors_close(tmp_path):
    features = random_features(50, dim=128)
    features.descriptors /= np.linalg.norm(features.descriptors, axis=1, keepdims=True)
    with FeatureStore(tmp_path, dim=128, mode="a") as store:
        offset, count = store.append(features, max_keypoints=None)
        _, descriptors = store.get(offset, count)
    order = np.argsort(-features.scores, kind="stable")
    np.testing.assert_allclose(descriptors, features.descriptors[order], atol=5e-4)


def test_append_keeps_strongest(tmp_path):
    features = random_features(100)
    with FeatureStore(tmp_path, dim=16, mode="a") as store:
        offset, count = store.append(features, max_keypoints=10)
        keypoints, _ = store.get(offset, count)
    assert count == 10
    strongest = np.argsort(-features.scores)[:10]
    np.testing.assert_array_equal(keypoints, features.keypoints[strongest])
    # A prefix of the rows is the k strongest.
    np.testing.assert_array_equal(keypoints[:3], features.keypoints[strongest[:3]])


def test_truncate_drops_uncommitted_rows(tmp_path):
    store = FeatureStore(tmp_path, dim=16, mode="a")
    store.append(random_features(20), max_keypoints=None)
    store.flush()
    committed = store.committed_rows
    store.append(random_features(30, seed=1), max_keypoints=None)  # "crash" before the manifest commit
    store.close()

    store = FeatureStore(tmp_path, dim=16, mode="a")
    assert store.committed_rows == 50
    store.truncate(committed)
    assert store.committed_rows == 20
    with pytest.raises(ValueError, match="outside"):
        store.get(15, 10)
    offset, count = store.append(random_features(4, seed=2), max_keypoints=None)
    assert (offset, count) == (20, 4)
    store.close()
    assert (tmp_path / "keypoints.bin").stat().st_size == 24 * 8
    assert (tmp_path / "descriptors.bin").stat().st_size == 24 * 16 * 2
    with pytest.raises(ValueError, match="holds 24"):
        FeatureStore(tmp_path, dim=16, mode="a").truncate(30)


def test_half_written_row_is_dropped_on_open(tmp_path):
    with FeatureStore(tmp_path, dim=16, mode="a") as store:
        store.append(random_features(5), max_keypoints=None)
    with open(tmp_path / "keypoints.bin", "ab") as handle:  # a crash mid-append
        handle.write(b"\x00" * 12)
    assert FeatureStore(tmp_path, dim=16).committed_rows == 5
    with FeatureStore(tmp_path, dim=16, mode="a") as store:
        assert store.append(random_features(2, seed=3), max_keypoints=None) == (5, 2)
    appended = random_features(2, seed=3)
    keypoints, _ = FeatureStore(tmp_path, dim=16).get(5, 2)
    np.testing.assert_array_equal(keypoints, appended.keypoints[np.argsort(-appended.scores)])


def test_errors_a_person_can_act_on(tmp_path):
    with pytest.raises(FileNotFoundError, match="store.json"):
        FeatureStore(tmp_path / "missing", dim=16)
    with FeatureStore(tmp_path, dim=16, mode="a") as store:
        with pytest.raises(ValueError, match="16"):
            store.append(random_features(3, dim=8))
        bad = random_features(3)
        bad.descriptors[0, 0] = 1e6
        with pytest.raises(ValueError, match="float16"):
            store.append(bad)
    with pytest.raises(ValueError, match="dim 16"):
        FeatureStore(tmp_path, dim=128)
    reader = FeatureStore(tmp_path, dim=16)
    with pytest.raises(ValueError, match="read-only"):
        reader.append(random_features(3))
    with pytest.raises(ValueError, match="mode"):
        FeatureStore(tmp_path, dim=16, mode="w")


def test_bytes_per_image():
    assert bytes_per_image(1024, 128) == 1024 * (8 + 256) == 270_336
    assert FeatureStore.bytes_per_image.__doc__
