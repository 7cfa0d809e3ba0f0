"""extract_images: input order, bad files, worker crashes, and encoding in the workers."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from vladsearch.encoding.codebook import Codebook
from vladsearch.encoding.vlad import RawVLAD, vlad
from vladsearch.features import get_extractor
from vladsearch.features.extraction import WorkerEncoding, extract_images
from vladsearch.features.sift import SIFT

CRASH_SIZE = (57, 61)  # (height, width) of the image that kills the process extracting it


class CrashingSIFT(SIFT):
    """SIFT that kills its process on one image size, as a crashing decoder would."""

    def _detect_and_describe(self, image):
        if image.shape[:2] == CRASH_SIZE:
            os._exit(3)
        return super()._detect_and_describe(image)


def _images(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(1)
    paths = []
    for number in range(count):
        noise = rng.integers(0, 256, (120 + number, 160), dtype=np.uint8)
        path = folder / f"img_{number:03d}.png"
        cv2.imwrite(str(path), cv2.GaussianBlur(noise, (0, 0), 1.5))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("extraction")
    _images(root, 40)
    (root / "broken.png").write_bytes(b"not an image at all")
    cv2.imwrite(str(root / "crash.png"), np.full(CRASH_SIZE, 128, np.uint8))
    return root


def test_results_in_input_order_with_a_bad_file(folder):
    paths = sorted(folder.glob("img_*.png"))
    paths.insert(17, folder / "broken.png")
    results = list(extract_images(paths, get_extractor("sift"), workers=2))
    assert [r.path for r in results] == paths
    assert results[17].features is None and results[17].error
    assert all(r.features is not None for i, r in enumerate(results) if i != 17)
    single = list(extract_images(paths, get_extractor("sift"), workers=1))
    for a, b in zip(results, single):
        assert (a.features is None) == (b.features is None)
        if a.features is not None:
            np.testing.assert_array_equal(a.features.descriptors, b.features.descriptors)


def test_a_worker_crash_is_reported_for_that_file_only(folder):
    paths = sorted(folder.glob("img_*.png"))
    paths.insert(9, folder / "crash.png")
    results = list(extract_images(paths, CrashingSIFT(), workers=2))
    assert [r.path for r in results] == paths
    assert results[9].features is None and "crashed" in results[9].error
    assert all(r.features is not None and len(r.features) for i, r in enumerate(results) if i != 9)


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_encode_once_the_function_is_set(folder, workers):
    paths = sorted(folder.glob("img_*.png")) * 3
    extractor = get_extractor("sift")
    sample = np.concatenate([r.features.descriptors for r in extract_images(paths[:5], extractor, workers=1)])
    codebook = Codebook(8, restarts=1, seed=0).fit(sample)
    encoding = WorkerEncoding()
    results = []
    for number, item in enumerate(extract_images(paths, extractor, workers=workers, encode=encoding)):
        results.append(item)
        if number == 0:
            encoding.set(RawVLAD(codebook))
    assert results[0].raw_vlad is None and results[0].features.descriptors is not None
    encoded = [r for r in results if r.raw_vlad is not None]
    handed_out_before = 1 if workers == 1 else 16 * workers + 4  # the window (+ one chunk)
    assert all(r.raw_vlad is not None for r in results[handed_out_before:])
    reference = {r.path: r.features for r in extract_images(paths, extractor, workers=1)}
    for item in encoded:
        assert item.features.descriptors is None and len(item.features) == len(reference[item.path])
        descriptors = reference[item.path].descriptors
        expected = vlad(descriptors, codebook.centroids_, codebook.assign(descriptors))
        assert item.raw_vlad.dtype == np.float32 and item.raw_vlad.shape == (8 * 128,)
        np.testing.assert_allclose(item.raw_vlad, expected, rtol=1e-5, atol=1e-3)


def test_keep_descriptors_when_asked(folder):
    paths = sorted(folder.glob("img_*.png"))[:6]
    extractor = get_extractor("sift")
    sample = np.concatenate([r.features.descriptors for r in extract_images(paths[:2], extractor, workers=1)])
    encoding = WorkerEncoding(RawVLAD(Codebook(4, restarts=1).fit(sample)), keep_descriptors=True)
    for item in extract_images(paths, extractor, workers=2, encode=encoding):
        assert item.raw_vlad is not None and item.features.descriptors.shape == (len(item.features), 128)
