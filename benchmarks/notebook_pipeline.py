"""The research notebook's retrieval pipeline, re-implemented faithfully as a baseline.

What the notebook did, kept on purpose (these are the costs vladsearch removes):

1. extract descriptors of every database image into one Python list;
2. scikit-learn KMeans(k=16, k-means++, one run) on *all* descriptors stacked, float64;
3. a second pass that decodes and extracts every image again, then builds its VLAD
   with `KMeans.predict` and a Python loop over clusters (residual sums, signed square
   root, L2 normalisation);
4. a scikit-learn BallTree(leaf_size=60) over the VLAD vectors;
5. queries answered one at a time with `tree.query`.

Two departures, both only so that a run can finish: an image with no descriptors gets a
zero VLAD (the notebook produced NaN there, which BallTree rejects), and an unreadable
image raises a clear error (the notebook's reader returned the wrong number of values).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


def read_gray(path: str | Path) -> np.ndarray:
    """The notebook's reader: cv2.imread, then grayscale. H×W uint8."""
    image = cv2.imread(str(path))
    if image is None:
        raise ValueError(f"cv2.imread could not read {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


class NotebookFeatures:
    """Descriptors of one image, N×D: OpenCV SIFT on grayscale, or a vladsearch extractor by name."""

    def __init__(self, feature: str = "sift", **params) -> None:
        self.feature = feature
        if feature == "sift":
            self._sift = cv2.SIFT_create()
        else:
            from vladsearch.features import get_extractor

            self._extractor = get_extractor(feature, **params)

    def __call__(self, path: str | Path) -> np.ndarray | None:
        gray = read_gray(path)
        if self.feature == "sift":
            _, descriptors = self._sift.detectAndCompute(gray, None)
            return descriptors
        descriptors = self._extractor.extract(gray).descriptors
        return descriptors if len(descriptors) else None


def notebook_vlad(descriptors: np.ndarray | None, kmeans) -> np.ndarray:
    """VLAD as the notebook computed it: predict, then one Python iteration per cluster.

    descriptors: N×D (any float dtype) -> k·D float64, signed-sqrt and L2-normalised.
    """
    centers = kmeans.cluster_centers_
    k, d = centers.shape
    if descriptors is None or len(descriptors) == 0:
        return np.zeros(k * d)  # the notebook divided 0 by 0 here
    descriptors = descriptors.astype(np.float64)  # as in the notebook (and KMeans was fit on float64)
    predicted = kmeans.predict(descriptors)
    vector = np.zeros([k, d])
    for i in range(k):
        if np.sum(predicted == i) > 0:
            vector[i] = np.sum(descriptors[predicted == i, :] - centers[i], axis=0)
    vector = vector.flatten()
    vector = np.sign(vector) * np.sqrt(np.abs(vector))
    return vector / np.sqrt(np.dot(vector, vector))


def run_notebook_pipeline(image_paths: Sequence[str | Path], query_paths: Sequence[str | Path],
                          feature: str = "sift", k: int = 16, top: int = 10, seed: int = 0,
                          weights: str | None = None) -> dict:
    """Run the whole notebook pipeline; returns timings and rankings.

    feature: "sift" (OpenCV, as the notebook's SIFT variant) or a vladsearch extractor
    name such as "superpoint" (the notebook's choice; `weights` is its weights file).

    returns {"timings": {"extract", "codebook", "encode", "index", "search": seconds},
             "rankings": one list of database indices (into image_paths) per query, best first,
             "descriptors": number of descriptors clustered}
    """
    from sklearn.cluster import KMeans
    from sklearn.neighbors import BallTree

    describe = NotebookFeatures(feature) if feature == "sift" else NotebookFeatures(feature, weights=weights)
    timings = {}

    start = time.perf_counter()
    all_descriptors = []
    for path in image_paths:
        descriptors = describe(path)
        if descriptors is not None:
            all_descriptors.append(descriptors)
    timings["extract"] = time.perf_counter() - start

    start = time.perf_counter()
    stacked = np.vstack(all_descriptors).astype(np.float64)  # the notebook's arrays were float64
    kmeans = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed).fit(stacked)
    timings["codebook"] = time.perf_counter() - start
    count = len(stacked)
    del stacked, all_descriptors

    start = time.perf_counter()
    vlads = [notebook_vlad(describe(path), kmeans) for path in image_paths]  # second decode + extract
    timings["encode"] = time.perf_counter() - start

    start = time.perf_counter()
    tree = BallTree(np.array(vlads), leaf_size=60)
    timings["index"] = time.perf_counter() - start

    start = time.perf_counter()
    rankings = []
    top = min(top, len(vlads))
    for path in query_paths:
        vector = notebook_vlad(describe(path), kmeans)
        _, indices = tree.query(vector.reshape(1, -1), k=top)
        rankings.append([int(i) for i in indices[0]])
    timings["search"] = time.perf_counter() - start
    return {"timings": timings, "rankings": rankings, "descriptors": count}
