import numpy as np
import pytest

from vladsearch.store.index_backend import FaissBackend


def _unit(rows, dim, seed):
    x = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_search_equals_brute_force_inner_product():
    xb, xq = _unit(500, 64, 0), _unit(20, 64, 1)
    ids = np.arange(1000, 1500)
    backend = FaissBackend.create(64, "Flat")
    backend.add(xb, ids)
    D, I = backend.search(xq, 10)
    brute = xq @ xb.T
    order = np.argsort(-brute, axis=1)[:, :10]
    np.testing.assert_array_equal(I, ids[order])
    np.testing.assert_allclose(D, np.take_along_axis(brute, order, axis=1), rtol=1e-5)


def test_ivf_with_all_lists_probed_equals_brute_force():
    import faiss

    xb, xq = _unit(2000, 32, 2), _unit(10, 32, 3)
    backend = FaissBackend.create(32, "IVF16,Flat")
    backend.train(xb)
    backend.add(xb, np.arange(2000))
    faiss.extract_index_ivf(backend.index).nprobe = 16
    _, I = backend.search(xq, 5)
    np.testing.assert_array_equal(I, np.argsort(-(xq @ xb.T), axis=1)[:, :5])


def test_remove_drops_ids(tmp_path):
    xb = _unit(50, 16, 4)
    backend = FaissBackend.create(16, "Flat")
    backend.add(xb, np.arange(50))
    assert backend.remove(np.array([3, 7])) == 2
    backend.save(tmp_path / "i.faiss")
    loaded = FaissBackend.load(tmp_path / "i.faiss")
    _, I = loaded.search(xb[[3, 7, 8]], 1)
    assert I[0, 0] != 3 and I[1, 0] != 7 and I[2, 0] == 8
    assert loaded.ntotal == 48


def test_bad_factory_string_is_explained():
    with pytest.raises(ValueError, match="factory string"):
        FaissBackend.create(16, "NotAnIndex")


def test_ivf_without_enough_training_vectors_is_explained():
    backend = FaissBackend.create(16, "IVF64,Flat")
    with pytest.raises(ValueError, match="codebook-images"):
        backend.train(_unit(10, 16, 5))
