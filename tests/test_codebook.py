import numpy as np
import pytest

from vladsearch.encoding.codebook import Codebook, DescriptorSample


def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10, size=(8, 16)).astype(np.float32)
    labels = rng.integers(0, 8, size=4000)
    points = centres[labels] + rng.normal(scale=0.1, size=(4000, 16)).astype(np.float32)
    def error(codebook):
        return np.linalg.norm(points - codebook.centroids_[codebook.assign(points)], axis=1).mean()

    single = Codebook(8, restarts=1, seed=0).fit(points)
    best = Codebook(8, restarts=5, seed=0).fit(points)
    assert error(best) <= error(single) + 1e-6  # restarts keep the best run
    # most true centres have a learned centroid next to them (random init can merge a pair)
    distances = np.linalg.norm(centres[:, None] - best.centroids_[None], axis=-1).min(axis=1)
    assert (distances < 0.5).sum() >= 6


def test_assign_equals_brute_force_nearest_centroid():
    rng = np.random.default_rng(1)
    codebook = Codebook.from_centroids(rng.normal(size=(32, 24)).astype(np.float32))
    descriptors = rng.normal(size=(1000, 24)).astype(np.float32)
    brute = np.linalg.norm(descriptors[:, None] - codebook.centroids_[None], axis=-1).argmin(axis=1)
    np.testing.assert_array_equal(codebook.assign(descriptors), brute)
    assert codebook.assign(np.zeros((0, 24), np.float32)).shape == (0,)


def test_codebook_is_seeded():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(3000, 8)).astype(np.float32)
    a = Codebook(16, seed=5).fit(points).centroids_
    b = Codebook(16, seed=5).fit(points).centroids_
    np.testing.assert_array_equal(a, b)


def test_too_many_clusters_says_what_to_do():
    with pytest.raises(ValueError, match="fewer --clusters"):
        Codebook(100).fit(np.ones((50, 4), np.float32))


def test_reservoir_sample_is_bounded_and_uniform():
    sample = DescriptorSample(capacity=1000, seed=0)
    for start in range(0, 100_000, 700):  # a stream of batches of row numbers
        rows = np.arange(start, min(start + 700, 100_000), dtype=np.float32)[:, None]
        sample.add(rows)
    drawn = sample.sample()[:, 0]
    assert drawn.shape == (1000,) and sample.seen == 100_000
    assert len(np.unique(drawn)) == 1000
    # uniform over the stream: each tenth of the stream holds about a tenth of the sample
    counts = np.histogram(drawn, bins=10, range=(0, 100_000))[0]
    assert counts.min() > 60 and counts.max() < 140


def test_reservoir_keeps_everything_when_small():
    sample = DescriptorSample(capacity=100, seed=0)
    sample.add(np.ones((30, 4), np.float32))
    sample.add(np.zeros((0, 4), np.float32))
    assert sample.sample().shape == (30, 4)
