"""What the PyTorch extractors share: lazy torch import, device choice, batching by shape.

A `TorchExtractor` resolves and loads its weights on first use (or on `load()`), runs
images of equal shape as one batch under `torch.inference_mode()`, and drops the network
when pickled, so an instance can cross process boundaries cheaply.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vladsearch.features.base import Extractor
from vladsearch.features.weights import is_official, load_into, load_state_dict, resolve_weights, sha256_file

logger = logging.getLogger(__name__)


def import_torch():
    """The torch module, or ImportError with the exact line to install it."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            'the learned feature extractors need PyTorch and kornia: pip install "vladsearch[torch]"'
        ) from error
    return torch


def choose_device(device: str | Any = "auto"):
    """A torch.device: "auto" means CUDA when available, else CPU; anything else is passed to torch."""
    torch = import_torch()
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def group_by_shape(images: list[np.ndarray]) -> dict[tuple[int, ...], list[int]]:
    """Indices of `images` grouped by array shape, in first-seen order (each group is one batch)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    return groups


def gray_to_tensor(images: list[np.ndarray], device: Any):
    """Equal-shape grayscale uint8 images H×W -> float32 tensor B×1×H×W in [0, 1] on `device`."""
    torch = import_torch()
    batch = np.stack([_as_gray(image) for image in images])[:, None]
    return torch.from_numpy(batch).to(device=device, dtype=torch.float32).div_(255.0)


def greedy_nms(scores, radius: int, candidates=None, max_iterations: int = 64):
    """Mask of the points that greedy box NMS keeps: B×1×H×W float -> B×1×H×W bool.

    Greedy NMS (the Magic Leap demo's `nms_fast`) keeps the strongest candidate, suppresses
    the (2r+1)×(2r+1) box around it, and repeats. The max-pool form of SuperGlue's
    `simple_nms` reaches the same set when iterated to a fixed point: each round adds the
    candidates that are the maximum of their window once suppressed points are ignored.
    `candidates` (bool, like `scores`) limits who takes part, e.g. points above the
    detection threshold, which keeps the rounds few; `max_iterations=2` is `simple_nms`.
    """
    torch = import_torch()
    pool = torch.nn.functional.max_pool2d

    def window_max(x):  # a box max is separable: a row pass then a column pass, ~r times cheaper
        x = pool(x, kernel_size=(1, 2 * radius + 1), stride=1, padding=(0, radius))
        return pool(x, kernel_size=(2 * radius + 1, 1), stride=1, padding=(radius, 0))

    lowest = torch.full_like(scores, float("-inf"))
    if candidates is not None:
        scores = torch.where(candidates, scores, lowest)
    keep = scores == window_max(scores)
    if candidates is not None:
        keep &= candidates
    for _ in range(max_iterations):
        suppressed = window_max(keep.to(scores.dtype)) > 0
        remaining = torch.where(suppressed, lowest, scores)
        new = (remaining == window_max(remaining)) & ~suppressed
        if candidates is not None:
            new &= candidates
        if not bool(new.any()):
            break
        keep |= new
    return keep


class TorchExtractor(Extractor):
    """Base of the learned extractors: weights lookup, lazy loading, batching by image shape.

    Subclasses set `weights_name` (a key of `weights.WEIGHTS`), implement `_build()` (the
    network without weights) and `_forward(batch)` (B×1×H×W float in [0, 1] -> per image
    keypoints N×2 (x, y) pixels, descriptors N×D unit-norm, scores N, as tensors).
    """

    runs_in_main_process: ClassVar[bool] = True
    wrapper_key: ClassVar[str | None] = None  # key nesting the state dict in the file, if any
    min_side: ClassVar[int] = 16  # smaller images yield no features

    def __init__(self, max_keypoints: int | None = 2048, weights: str | Path | None = None,
                 device: str = "auto", batch_size: int = 8) -> None:
        super().__init__(max_keypoints=max_keypoints)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.weights = weights
        self.device = device
        self.batch_size = batch_size
        self._net = None
        self._device = None
        self._weights_path: Path | None = None
        self._weights_sha256: str | None = None

    @property
    def weights_name(self) -> str:
        """Key of this model's weights in `weights.WEIGHTS`."""
        return self.name

    # --- weights ------------------------------------------------------------------
    @property
    def weights_path(self) -> Path:
        """The weights file this extractor uses (explicit path, env dir, cache or download)."""
        if self._weights_path is None:
            self._weights_path = resolve_weights(self.weights_name, self.weights)
        return self._weights_path

    @property
    def weights_sha256(self) -> str:
        """sha256 of the weights file, recorded in the index manifest and checked at query time."""
        if self._weights_sha256 is None:
            self._weights_sha256 = sha256_file(self.weights_path)
        return self._weights_sha256

    def load(self) -> TorchExtractor:
        """Find, read and strictly load the weights, then move the network to the device."""
        if self._net is None:
            device = choose_device(self.device)
            state = load_state_dict(self.weights_path, self.weights_name, "cpu", self.wrapper_key)
            net = self._build()
            load_into(net, state, self.weights_path, self.weights_name)
            if not is_official(self.weights_name, self.weights_path):
                logger.info("%s: %s is not the official file (sha256 %s); using it as given",
                            self.name, self.weights_path, self.weights_sha256)
            self._device = device
            self._net = net.eval().to(device)
        return self

    def config(self) -> dict[str, Any]:
        return {**super().config(), "weights": self.weights_name, "weights_sha256": self.weights_sha256}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_net": None}

    # --- what a model implements ----------------------------------------------------
    def _build(self):
        """The network with freshly initialised parameters (weights are loaded by `load`)."""
        raise NotImplementedError

    def _forward(self, batch) -> list[tuple[Any, Any, Any]]:
        raise NotImplementedError

    # --- batching ------------------------------------------------------------------
    def _detect_and_describe(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._detect_and_describe_batch([image])[0]

    def _detect_and_describe_batch(
        self, images: list[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        torch = import_torch()
        self.load()
        empty = (np.zeros((0, 2), np.float32), np.zeros((0, self.dim), np.float32), np.zeros(0, np.float32))
        results: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [empty] * len(images)
        with torch.inference_mode():
            for shape, indices in group_by_shape(images).items():
                if min(shape[:2]) < self.min_side:
                    continue
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start:start + self.batch_size]
                    batch = gray_to_tensor([images[i] for i in chunk], self._device)
                    for i, outputs in zip(chunk, self._forward(batch)):
                        results[i] = tuple(t.detach().float().cpu().numpy() for t in outputs)
        return results

    def _top_k(self, keypoints, descriptors, scores):
        """The `max_keypoints` strongest, strongest first (all of them, sorted, when uncapped)."""
        order = scores.argsort(descending=True)
        if self.max_keypoints is not None:
            order = order[: self.max_keypoints]
        return keypoints[order], descriptors[order] if descriptors is not None else None, scores[order]


def _as_gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2:
        raise ValueError(f"expected a grayscale image H×W, got an array of shape {image.shape}")
    return image
