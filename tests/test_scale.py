"""Compact codes (--preset large): small codes in RAM, exact answers from the vectors on disk."""

import numpy as np
import pytest
from conftest import PHOTO_NAMES

from vladsearch import Index
from vladsearch.encoding.compact_codes import CoarseCodes, randomized_pca
from vladsearch.encoding.encoder import preset_params
from vladsearch.store.check import check_index


def test_randomized_pca_finds_the_principal_subspace():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((600, 20)) * np.linspace(10, 2, 20)) @ rng.standard_normal((20, 300))
    x = (x + 0.05 * rng.standard_normal(x.shape)).astype(np.float32)
    mean, components = randomized_pca(x, 20)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    np.testing.assert_allclose(mean, x.mean(0), atol=1e-4)
    np.testing.assert_allclose(components @ components.T, np.eye(20), atol=1e-4)
    assert np.linalg.norm(components @ vt[:20].T) ** 2 / 20 > 0.999  # the same subspace


def test_codes_with_refinement_find_what_exact_search_finds():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((300, 512)).astype(np.float32)
    xb = centres[rng.integers(0, 300, 6000)] + 0.6 * rng.standard_normal((6000, 512)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xb[:200] + 0.05 * rng.standard_normal((200, 512)).astype(np.float32)
    coder = CoarseCodes("PCA64,PQ16", seed=0).fit_array(xb)
    ivf = coder.empty_index()
    ivf.add_sa_codes(coder.encode(xb), np.arange(len(xb), dtype=np.int64))
    _, candidates = ivf.search(coder.project(xq), 64)
    exact = np.argmax(xq @ xb.T, axis=1)
    found = [exact[q] in candidates[q] for q in range(len(xq))]
    assert np.mean(found) >= 0.99
    again = CoarseCodes.from_bytes(coder.to_bytes())
    np.testing.assert_array_equal(again.encode(xb[:50]), coder.encode(xb[:50]))


@pytest.fixture(scope="module")
def large(photo_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("large") / "large.vlad"
    return Index.build(photo_dir, index=path, clusters=16, progress=False, workers=2, **preset_params("large"))


def test_large_preset_answers_like_exact(large, photo_dir):
    exact = Index.build(photo_dir, clusters=16, progress=False, workers=2)
    files = sorted(p for p in photo_dir.rglob("*") if p.is_file())
    a, b = exact.search(files, top=3), large.search(files, top=3)
    for ra, rb in zip(a, b):
        assert [m.image for m in ra.matches] == [m.image for m in rb.matches]
        np.testing.assert_allclose([m.score for m in ra.matches], [m.score for m in rb.matches], atol=2e-3)


def test_large_preset_keeps_ram_small_and_stays_live(large, photo_dir, tmp_path):
    import shutil

    work = tmp_path / "l.vlad"
    shutil.copytree(large.path, work)
    info = Index.open(work).info()
    assert info["bytes_per_image"]["ram"] <= 256 and info["params"]["vector_dtype"] == "float16"
    index = Index.open(work)
    index.remove(["coffee.jpg"])
    shutil.copy(photo_dir / "coffee.jpg", tmp_path / "coffee_again.jpg")
    index.add([tmp_path / "coffee_again.jpg"], progress=False, merge=False)
    top = index.search([photo_dir / "coffee.jpg"], top=1)[0].matches[0]
    assert top.image.endswith("coffee_again.jpg") and top.score == pytest.approx(1.0, abs=2e-3)
    index.compact()
    reopened = Index.open(work)
    assert reopened.backend.ntotal == len(PHOTO_NAMES)
    assert reopened.search([photo_dir / "rocket.jpg"], top=1)[0].matches[0].image == "rocket.jpg"
    assert check_index(work)[0] == []


def test_compact_feature_cache_verifies_like_the_float16_one(photo_dir, tmp_path):
    from vladsearch.store.feature_store import FeatureStore

    full = Index.build(photo_dir, index=tmp_path / "full.vlad", clusters=16, keep_features=1024, progress=False)
    compact = Index.build(photo_dir, index=tmp_path / "pq.vlad", clusters=16, keep_features=1024,
                          feature_codes="PQ32x7", progress=False)
    segment = next((tmp_path / "pq.vlad" / "segments").iterdir())
    store = FeatureStore(segment, 128, codec=compact.encoder.descriptor_codec)
    per_keypoint = ((segment / "keypoints.bin").stat().st_size + (segment / "descriptors.bin").stat().st_size) / len(store)
    assert per_keypoint == 4 + 28  # 32 KiB per image at 1,024 keypoints
    queries = sorted(p for p in photo_dir.rglob("*.jpg"))[:6]
    a = full.search(queries, top=3, rerank=3)
    b = compact.search(queries, top=3, rerank=3)
    for ra, rb in zip(a, b):  # the same verdicts (skimage's clock verifies with neither)
        assert ra.matches[0].image == rb.matches[0].image
        assert ra.matches[0].verified == rb.matches[0].verified
    assert sum(r.matches[0].verified for r in b) >= 5
    compact.compact()  # a merge copies the codes
    assert Index.open(tmp_path / "pq.vlad").search(queries[:1], top=1, rerank=3)[0].matches[0].verified


def test_whole_collection_knn_of_a_large_index_reads_its_float16_vectors(large, photo_dir):
    """`duplicates --knn codes` (and "auto" above 5,000 images) builds binary codes from the
    stored vectors of a large index (float16 on disk): those must be the image's vectors (as an
    exact build computes them), and its codes must find what the index finds."""
    from vladsearch.collection.knn import CollectionSearch

    ids = np.array(sorted(int(i) for i in large.snapshot.loaded_ids), np.int64)
    exact = Index.build(photo_dir, clusters=16, progress=False, workers=2)
    id_of = {r["path"]: r["id"] for r in exact.snapshot.rows_of(exact.snapshot.loaded_ids).values()}
    paths = [r["path"] for r in (large.snapshot.rows_of([i])[i] for i in ids)]
    stored = CollectionSearch(large, knn="codes").vectors(ids)
    np.testing.assert_allclose(stored, exact.vectors_of([id_of[p] for p in paths]), atol=1e-3)
    through_index = CollectionSearch(large, knn="index", exact_limit=0)
    through_codes = CollectionSearch(large, knn="codes")
    assert not through_index.approximate and through_codes.approximate
    scores, by_index = through_index.search_indexed(ids, 2)
    _, by_codes = through_codes.search_indexed(ids, 2)
    assert np.array_equal(by_codes[:, 0], ids)  # each image finds itself
    # the codes estimate the index's cosines (2,048 bits: σ ≈ 0.03) and find its closest pair
    np.testing.assert_allclose(through_codes.similarities(ids, by_index[:, 1]), scores[:, 1], atol=0.1)
    closest = int(np.argmax(scores[:, 1]))
    assert by_codes[closest, 1] == by_index[closest, 1]
    with pytest.raises(ValueError, match="choose one of: auto, index, codes"):
        CollectionSearch(large, knn="fast")
