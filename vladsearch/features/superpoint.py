"""SuperPoint (DeTone, Malisiewicz & Rabinovich, CVPRW 2018) in the Magic Leap layout.

The network's module names and shapes are those of Magic Leap's `SuperPointNet`, so the
official ``superpoint_v1.pth`` loads with strict key matching. Post-processing follows
the reference demo: softmax over the 65 cell channels, dust-bin dropped, pixel shuffle to
full resolution, greedy NMS, threshold, border removal, bilinear descriptor sampling and
L2 normalisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vladsearch.features.torch_base import TorchExtractor, greedy_nms, import_torch

CELL = 8  # the encoder downsamples by 8; each coarse cell holds 8×8 pixels + a dust-bin


def build_superpoint_net():
    """Magic Leap's SuperPointNet: image B×1×H×W -> (logits B×65×H/8×W/8, descriptors B×256×H/8×W/8)."""
    torch = import_torch()
    nn = torch.nn

    class SuperPointNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c1, c2, c3, c4, c5, d1 = 64, 64, 128, 128, 256, 256
            self.conv1a = nn.Conv2d(1, c1, 3, padding=1)
            self.conv1b = nn.Conv2d(c1, c1, 3, padding=1)
            self.conv2a = nn.Conv2d(c1, c2, 3, padding=1)
            self.conv2b = nn.Conv2d(c2, c2, 3, padding=1)
            self.conv3a = nn.Conv2d(c2, c3, 3, padding=1)
            self.conv3b = nn.Conv2d(c3, c3, 3, padding=1)
            self.conv4a = nn.Conv2d(c3, c4, 3, padding=1)
            self.conv4b = nn.Conv2d(c4, c4, 3, padding=1)
            self.convPa = nn.Conv2d(c4, c5, 3, padding=1)
            self.convPb = nn.Conv2d(c5, 65, 1)
            self.convDa = nn.Conv2d(c4, c5, 3, padding=1)
            self.convDb = nn.Conv2d(c5, d1, 1)

        def forward(self, x):
            relu, pool = torch.relu, torch.nn.functional.max_pool2d
            x = relu(self.conv1b(relu(self.conv1a(x))))
            x = relu(self.conv2b(relu(self.conv2a(pool(x, 2)))))
            x = relu(self.conv3b(relu(self.conv3a(pool(x, 2)))))
            x = relu(self.conv4b(relu(self.conv4a(pool(x, 2)))))
            logits = self.convPb(relu(self.convPa(x)))
            descriptors = self.convDb(relu(self.convDa(x)))
            return logits, torch.nn.functional.normalize(descriptors, dim=1)

    return SuperPointNet()


def scores_from_logits(logits):
    """Cell logits B×65×Hc×Wc -> keypoint probabilities B×1×8Hc×8Wc (softmax, no dust-bin, pixel shuffle)."""
    torch = import_torch()
    probabilities = torch.softmax(logits, dim=1)[:, :-1]
    return torch.nn.functional.pixel_shuffle(probabilities, CELL)


def sample_descriptors(keypoints, descriptors, image_size: tuple[int, int]):
    """Bilinear descriptors at keypoints, unit L2 norm, sampled as the Magic Leap demo does.

    keypoints: N×2 float (x, y) pixels; descriptors: D×Hc×Wc coarse map; image_size: (W, H)
    -> N×D. The demo maps pixel x to x / (W/2) - 1 with ``align_corners=True``; a
    pixel-centre-exact map ((2x + 1) / W - 1, ``align_corners=False``) differs by up to half
    a cell near the edges (mean cosine 0.95 to the reference), so we keep the reference's.
    """
    torch = import_torch()
    half_size = keypoints.new_tensor(image_size) / 2
    grid = keypoints / half_size - 1
    sampled = torch.nn.functional.grid_sample(
        descriptors[None], grid[None, None], mode="bilinear", align_corners=True
    )[0, :, 0]  # D×N
    return torch.nn.functional.normalize(sampled.t(), dim=1)


class SuperPoint(TorchExtractor):
    """SuperPoint v1 keypoints with 256-d descriptors; weights from `weights` or the usual places.

    nms_radius, detection_threshold and remove_borders are the reference values (4, 0.005, 4).
    """

    name = "superpoint"
    dim = 256

    def __init__(self, max_keypoints: int | None = 2048, weights: str | Path | None = None,
                 device: str = "auto", nms_radius: int = 4, detection_threshold: float = 0.005,
                 remove_borders: int = 4, batch_size: int = 8) -> None:
        super().__init__(max_keypoints=max_keypoints, weights=weights, device=device, batch_size=batch_size)
        if nms_radius < 0 or remove_borders < 0:
            raise ValueError("nms_radius and remove_borders must be >= 0")
        self.nms_radius = nms_radius
        self.detection_threshold = detection_threshold
        self.remove_borders = remove_borders

    def config(self) -> dict[str, Any]:
        return {**super().config(), "model": "superpoint_v1", "nms_radius": self.nms_radius,
                "detection_threshold": self.detection_threshold, "remove_borders": self.remove_borders}

    def _build(self):
        return build_superpoint_net()

    def _forward(self, batch):
        """batch B×1×H×W float in [0, 1] -> per image (keypoints N×2, descriptors N×256, scores N)."""
        logits, coarse = self._net(batch)
        scores = scores_from_logits(logits)  # B×1×H'×W', H' = 8·floor(H/8)
        candidates = scores >= self.detection_threshold
        if self.nms_radius > 0:
            candidates = greedy_nms(scores, self.nms_radius, candidates)
        height, width = scores.shape[-2:]
        image_size = (batch.shape[-1], batch.shape[-2])
        b = self.remove_borders
        outputs = []
        for score_map, mask, descriptor_map in zip(scores[:, 0], candidates[:, 0], coarse):
            ys, xs = mask[b:height - b, b:width - b].nonzero(as_tuple=True)
            kept = score_map[ys + b, xs + b]
            keypoints = import_torch().stack([xs + b, ys + b], dim=1).to(score_map.dtype)
            keypoints, _, kept = self._top_k(keypoints, None, kept)
            outputs.append((keypoints, sample_descriptors(keypoints, descriptor_map, image_size), kept))
        return outputs
