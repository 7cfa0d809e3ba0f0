"""DISK (Tyszkiewicz, Fua & Trulls, NeurIPS 2020) through kornia, with the "depth" weights.

kornia's `DISK` holds the U-Net; we load cvlab-epfl/disk's ``depth-save.pth`` into it
(the state dict sits under the key "extractor") and keep kornia's post-processing:
strict heatmap maxima in a `window_size` window, L2-normalised 128-d descriptors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vladsearch.features.torch_base import TorchExtractor, import_torch


class DISK(TorchExtractor):
    """DISK keypoints and 128-d descriptors (needs torch and kornia)."""

    name = "disk"
    dim = 128
    wrapper_key = "extractor"

    def __init__(self, max_keypoints: int | None = 2048, weights: str | Path | None = None,
                 device: str = "auto", window_size: int = 5, detection_threshold: float = 0.0,
                 batch_size: int = 4) -> None:
        super().__init__(max_keypoints=max_keypoints, weights=weights, device=device, batch_size=batch_size)
        if window_size < 1 or window_size % 2 == 0:
            raise ValueError(f"window_size must be a positive odd number, got {window_size}")
        self.window_size = window_size
        self.detection_threshold = detection_threshold

    def config(self) -> dict[str, Any]:
        return {**super().config(), "model": "disk-depth", "window_size": self.window_size,
                "detection_threshold": self.detection_threshold}

    def _build(self):
        import_torch()
        try:
            from kornia.feature import DISK as KorniaDISK
        except ImportError as error:
            raise ImportError('DISK needs kornia: pip install "vladsearch[torch]"') from error
        return KorniaDISK(desc_dim=self.dim)

    def _forward(self, batch):
        """batch B×1×H×W float in [0, 1] -> per image (keypoints N×2, descriptors N×128, scores N)."""
        features = self._net(
            batch.expand(-1, 3, -1, -1), n=self.max_keypoints, window_size=self.window_size,
            score_threshold=self.detection_threshold, pad_if_not_divisible=True,
        )
        return [self._top_k(f.keypoints, f.descriptors, f.detection_scores) for f in features]
