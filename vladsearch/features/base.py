"""The extractor interface every local-feature model implements.

An extractor turns one grayscale image into keypoints and descriptors. The base class
owns what every model shares (keypoint capping, rescaling keypoints back to the
original image's pixel grid, batching), so a model file holds only its network.

Conventions (one everywhere in vladsearch):
    keypoints    N×2 float32, (x, y) in pixels of the *original* image
    descriptors  N×D float32
    scores       N   float32, higher is stronger
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass
class Features:
    """Local features of one image (see the module docstring for shapes)."""

    keypoints: np.ndarray
    descriptors: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]  # (width, height) of the original image

    def __len__(self) -> int:
        return len(self.keypoints)

    @classmethod
    def empty(cls, dim: int, image_size: tuple[int, int]) -> Features:
        return cls(
            keypoints=np.zeros((0, 2), np.float32),
            descriptors=np.zeros((0, dim), np.float32),
            scores=np.zeros((0,), np.float32),
            image_size=image_size,
        )


class Extractor:
    """Base class: subclasses set `name`, `dim` and implement `_detect_and_describe`.

    `image` arguments are uint8 grayscale arrays H×W, already resized by the image
    loader so that the longer side is at most `max_side`; `scale` maps their pixel
    grid back to the original image (original = resized * scale).

    Subclasses that run a neural network set `runs_in_main_process = True`: the
    pipeline then decodes images in worker processes and feeds the model batches in
    the main process (where the GPU is), instead of running the model in every worker.
    """

    name: ClassVar[str] = ""
    dim: ClassVar[int] = 0
    runs_in_main_process: ClassVar[bool] = False

    def __init__(self, max_keypoints: int | None = None) -> None:
        if max_keypoints is not None and max_keypoints <= 0:
            raise ValueError(f"max_keypoints must be positive or None, got {max_keypoints}")
        self.max_keypoints = max_keypoints

    # --- what a model implements ---------------------------------------------------
    def _detect_and_describe(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (keypoints N×2 float32 in `image` pixels, descriptors N×D float32, scores N)."""
        raise NotImplementedError

    def _detect_and_describe_batch(
        self, images: list[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Batched variant; networks override it to run several images at once."""
        return [self._detect_and_describe(image) for image in images]

    # --- what the pipeline calls ----------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Every parameter needed to extract identically later (saved in the index manifest)."""
        return {"name": self.name, "dim": self.dim, "max_keypoints": self.max_keypoints}

    def extract(self, image: np.ndarray, scale: float = 1.0, image_size: tuple[int, int] | None = None) -> Features:
        """Features of one image; see the class docstring for `image` and `scale`."""
        return self.extract_batch([image], [scale], [image_size])[0]

    def extract_batch(
        self,
        images: list[np.ndarray],
        scales: list[float] | None = None,
        image_sizes: list[tuple[int, int] | None] | None = None,
    ) -> list[Features]:
        scales = scales or [1.0] * len(images)
        image_sizes = image_sizes or [None] * len(images)
        raw = self._detect_and_describe_batch(images)
        return [
            self._finish(image, kps, descs, scores, scale, size)
            for image, (kps, descs, scores), scale, size in zip(images, raw, scales, image_sizes)
        ]

    def _finish(self, image, keypoints, descriptors, scores, scale, image_size) -> Features:
        if image_size is None:
            image_size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        keypoints = np.asarray(keypoints, np.float32).reshape(-1, 2)
        descriptors = np.asarray(descriptors, np.float32).reshape(-1, self.dim)
        scores = np.asarray(scores, np.float32).reshape(-1)
        if self.max_keypoints is not None and len(scores) > self.max_keypoints:
            keep = np.argsort(-scores, kind="stable")[: self.max_keypoints]
            keypoints, descriptors, scores = keypoints[keep], descriptors[keep], scores[keep]
        # Pixel centres: a keypoint at resized pixel x covers original [x*s, (x+1)*s).
        keypoints = (keypoints + 0.5) * scale - 0.5
        return Features(keypoints, descriptors, scores, image_size)
