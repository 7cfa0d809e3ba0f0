"""XFeat (Potje et al., CVPR 2024): a fast CPU-friendly detector-descriptor, 64-d, through kornia.

`kornia.feature.XFeat` holds the network and its sparse post-processing (5×5 strict maxima of
the keypoint heatmap, scores times reliability, bicubic descriptor sampling); we load the
official ``xfeat.pt`` (Apache-2.0) into it strictly. Its keypoints match with LighterGlue
(`vladsearch.query.matching`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vladsearch.features.torch_base import TorchExtractor, import_torch


class XFeat(TorchExtractor):
    """XFeat keypoints and 64-d descriptors (needs torch and kornia)."""

    name = "xfeat"
    dim = 64
    min_side = 32  # XFeat rounds each side down to a multiple of 32

    def __init__(self, max_keypoints: int | None = 2048, weights: str | Path | None = None,
                 device: str = "auto", detection_threshold: float = 0.05, batch_size: int = 8) -> None:
        super().__init__(max_keypoints=max_keypoints, weights=weights, device=device, batch_size=batch_size)
        self.detection_threshold = detection_threshold

    def config(self) -> dict[str, Any]:
        return {**super().config(), "model": "xfeat", "detection_threshold": self.detection_threshold}

    def _build(self):
        import_torch()
        try:
            from kornia.feature import XFeat as KorniaXFeat
        except ImportError as error:
            raise ImportError('XFeat needs kornia >= 0.8: pip install "vladsearch[torch]"') from error
        model = KorniaXFeat(top_k=self.max_keypoints or 4096, detection_threshold=self.detection_threshold)
        return _inner_net_loader(model)

    def _forward(self, batch):
        """batch B×1×H×W float in [0, 1] -> per image (keypoints N×2, descriptors N×64, scores N)."""
        outputs = self._net.model.detectAndCompute(batch, top_k=self.max_keypoints or 4096)
        return [self._top_k(o["keypoints"], o["descriptors"], o["scores"]) for o in outputs]


def _inner_net_loader(model):
    """Wrap kornia's XFeat so that the state dict of ``xfeat.pt`` (the inner `net`) loads strictly."""
    torch = import_torch()

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def load_state_dict(self, state_dict, strict: bool = True):
            return self.model.net.load_state_dict(state_dict, strict=strict)

    return Wrapper()
