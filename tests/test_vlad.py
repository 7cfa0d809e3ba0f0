import numpy as np
import pytest

from vladsearch.encoding.vlad import PCAWhitening, intra_normalize, normalize_vlad, power_normalize, vlad


def notebook_vlad(descriptors, centroids, labels):
    """The notebook's formula, one cluster at a time: residual sums, signed sqrt, L2."""
    k, d = centroids.shape
    v = np.zeros((k, d))
    for i in range(k):
        if np.sum(labels == i) > 0:
            v[i] = np.sum(descriptors[labels == i, :] - centroids[i], axis=0)
    v = v.flatten()
    v = np.sign(v) * np.sqrt(np.abs(v))
    return v / np.sqrt(np.dot(v, v))


@pytest.mark.parametrize("k", [1, 4, 16, 64])
def test_vlad_matches_notebook_loop(k):
    rng = np.random.default_rng(k)
    descriptors = rng.normal(size=(500, 32)).astype(np.float32)
    centroids = rng.normal(size=(k, 32)).astype(np.float32)
    labels = rng.integers(0, max(1, k - 1), size=500)  # leave one cluster empty
    ours = normalize_vlad(vlad(descriptors, centroids, labels), k, power=0.5, intra=False)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, notebook_vlad(descriptors, centroids, labels), atol=1e-5)


def test_empty_image_gives_zero_vector_not_nan():
    centroids = np.ones((8, 16), np.float32)
    raw = vlad(np.zeros((0, 16), np.float32), centroids, np.zeros(0, np.int64))
    out = normalize_vlad(raw, 8, power=0.5, intra=True)
    assert out.shape == (128,) and not np.isnan(out).any() and not out.any()


def test_intra_normalisation_gives_unit_blocks():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3, 4 * 8)).astype(np.float32)
    blocks = intra_normalize(vectors, 4).reshape(3, 4, 8)
    np.testing.assert_allclose(np.linalg.norm(blocks, axis=-1), 1.0, rtol=1e-5)
    out = normalize_vlad(vectors, 4, power=0.5, intra=True)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)


def test_functions_do_not_mutate_inputs():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(2, 12)).astype(np.float32)
    before = vectors.copy()
    power_normalize(vectors)
    intra_normalize(vectors, 3)
    normalize_vlad(vectors, 3, intra=True)
    np.testing.assert_array_equal(vectors, before)


def test_pca_whitening_decorrelates_and_normalises():
    rng = np.random.default_rng(2)
    mixing = rng.normal(size=(20, 20))
    vectors = (rng.normal(size=(400, 20)) @ mixing).astype(np.float32)
    pca = PCAWhitening(dim=5, whiten=True).fit(vectors)
    projected = (vectors - pca.mean_) @ pca.components_.T * pca.scale_
    covariance = np.cov(projected.T)
    np.testing.assert_allclose(covariance, np.eye(5), atol=1e-2)
    out = pca.transform(vectors)
    assert out.shape == (400, 5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    again = PCAWhitening.from_state(pca.state(), whiten=True)
    np.testing.assert_allclose(again.transform(vectors), out)


def test_pca_rejects_too_few_images():
    with pytest.raises(ValueError, match="at least 2"):
        PCAWhitening(4).fit(np.ones((1, 10), np.float32))
