"""SIFT (Lowe 2004) from OpenCV, with the RootSIFT option (Arandjelović & Zisserman 2012)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from vladsearch.features.base import Extractor


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT: L1-normalise each descriptor, then take the element-wise square root.

    Comparing RootSIFT vectors with Euclidean distance equals comparing SIFT with the
    Hellinger kernel, which retrieves better (Arandjelović & Zisserman, CVPR 2012).
    descriptors: N×128 float32 (non-negative) -> N×128 float32, unit L2 norm.
    """
    descriptors = np.asarray(descriptors, np.float32)
    l1 = np.abs(descriptors).sum(axis=1, keepdims=True)
    return np.sqrt(descriptors / np.maximum(l1, 1e-12))


class SIFT(Extractor):
    """OpenCV SIFT; `root=True` gives RootSIFT descriptors. Needs no weights."""

    dim = 128

    def __init__(self, max_keypoints: int | None = 4096, root: bool = False,
                 contrast_threshold: float = 0.04) -> None:
        super().__init__(max_keypoints=max_keypoints)
        self.root = root
        self.contrast_threshold = contrast_threshold
        self._sift = None  # built on first use: cv2 objects do not cross process boundaries

    @property
    def name(self) -> str:  # type: ignore[override]
        return "rootsift" if self.root else "sift"

    def config(self) -> dict[str, Any]:
        return {**super().config(), "root": self.root, "contrast_threshold": self.contrast_threshold}

    def __getstate__(self):
        return {**self.__dict__, "_sift": None}

    def _detect_and_describe(self, image):
        if self._sift is None:
            # nfeatures=0: keep all; the base class caps by response, the same for every model.
            self._sift = cv2.SIFT_create(contrastThreshold=self.contrast_threshold)
        if min(image.shape[:2]) < 16:  # too small for any octave; OpenCV may misbehave
            return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), np.zeros(0, np.float32)
        keypoints, descriptors = self._sift.detectAndCompute(image, None)
        if descriptors is None or len(keypoints) == 0:
            return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), np.zeros(0, np.float32)
        xy = np.array([kp.pt for kp in keypoints], np.float32)
        scores = np.array([kp.response for kp in keypoints], np.float32)
        descriptors = descriptors.astype(np.float32)
        if self.root:
            descriptors = root_sift(descriptors)
        return xy, descriptors, scores
