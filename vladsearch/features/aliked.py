"""ALIKED (Zhao et al., IEEE TIM 2023): a light detector-descriptor with deformable convolutions.

Architecture and weights are those of Shiaoming/ALIKED (BSD-3-Clause) so its checkpoints
load strictly. Its deformable convolution (torchvision's `deform_conv2d`) is written here
in plain PyTorch with `grid_sample`, because torchvision is not always importable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vladsearch.features.torch_base import TorchExtractor, greedy_nms, import_torch

# variant -> (c1, c2, c3, c4, descriptor dim, offset-patch size K, sample positions M)
VARIANTS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "n16": (16, 32, 64, 128, 128, 3, 16),
    "t16": (8, 16, 32, 64, 64, 3, 16),
    "n16rot": (16, 32, 64, 128, 128, 3, 16),
    "n32": (16, 32, 64, 128, 128, 3, 32),
}


def deform_conv2d(x, offset, weight, bias=None, padding: int = 1, mask=None):
    """Deformable convolution v1/v2 (Dai et al. 2017; Zhu et al. 2019), stride 1, one offset group.

    x: B×C×H×W; offset: B×2K×H'×W' with K = kh·kw, channel 2k the row (y) offset and
    2k+1 the column (x) offset of kernel tap k (row-major), as in torchvision; weight:
    O×C×kh×kw; mask: B×K×H'×W' or None -> B×O×H'×W'. Samples outside the image read 0.
    """
    torch = import_torch()
    b, c, h, w = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = offset.shape[-2:]
    taps = kh * kw
    rows = torch.arange(out_h, device=x.device, dtype=x.dtype) - padding
    cols = torch.arange(out_w, device=x.device, dtype=x.dtype) - padding
    tap_y = torch.arange(kh, device=x.device, dtype=x.dtype).repeat_interleave(kw)
    tap_x = torch.arange(kw, device=x.device, dtype=x.dtype).repeat(kh)
    offset = offset.reshape(b, taps, 2, out_h, out_w)
    y = rows[None, None, :, None] + tap_y[None, :, None, None] + offset[:, :, 0]  # B×K×H'×W'
    x_pos = cols[None, None, None, :] + tap_x[None, :, None, None] + offset[:, :, 1]
    # align_corners=False with (2p + 1)/size - 1 maps pixel p exactly, even when size is 1.
    grid = torch.stack([(2 * x_pos + 1) / w - 1, (2 * y + 1) / h - 1], dim=-1)
    sampled = torch.nn.functional.grid_sample(
        x, grid.reshape(b, taps * out_h, out_w, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    ).reshape(b, c, taps, out_h, out_w)
    if mask is not None:
        sampled = sampled * mask[:, None]
    out = torch.einsum("bckhw,ock->bohw", sampled, weight.reshape(out_channels, c, taps))
    return out if bias is None else out + bias[None, :, None, None]


def build_aliked_net(variant: str):
    """ALIKED network of `variant`: RGB B×3×H×W -> (features B×dim×H×W unit-norm, scores B×1×H×W)."""
    torch = import_torch()
    nn, F = torch.nn, torch.nn.functional
    c1, c2, c3, c4, dim, patch, n_pos = VARIANTS[variant]

    class DeformableConv(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.offset_conv = nn.Conv2d(cin, 18, 3, padding=1, bias=True)
            self.regular_conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)

        def forward(self, x):
            limit = max(x.shape[-2:]) / 4.0  # ALIKED clamps offsets to a quarter of the map
            offset = self.offset_conv(x).clamp(-limit, limit)
            return deform_conv2d(x, offset, self.regular_conv.weight, None, padding=1)

    def conv3x3(cin: int, cout: int, deformable: bool):
        return DeformableConv(cin, cout) if deformable else nn.Conv2d(cin, cout, 3, padding=1, bias=False)

    class ConvBlock(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.conv1, self.bn1 = conv3x3(cin, cout, False), nn.BatchNorm2d(cout)
            self.conv2, self.bn2 = conv3x3(cout, cout, False), nn.BatchNorm2d(cout)

        def forward(self, x):
            return F.selu(self.bn2(self.conv2(F.selu(self.bn1(self.conv1(x))))))

    class ResBlock(nn.Module):
        def __init__(self, cin: int, cout: int, deformable: bool) -> None:
            super().__init__()
            self.conv1, self.bn1 = conv3x3(cin, cout, deformable), nn.BatchNorm2d(cout)
            self.conv2, self.bn2 = conv3x3(cout, cout, deformable), nn.BatchNorm2d(cout)
            self.downsample = nn.Conv2d(cin, cout, 1)

        def forward(self, x):
            out = self.bn2(self.conv2(F.selu(self.bn1(self.conv1(x)))))
            return F.selu(out + self.downsample(x))

    class SDDH(nn.Module):
        """Sparse deformable descriptor head: M learned sample offsets around each keypoint."""

        def __init__(self) -> None:
            super().__init__()
            self.offset_conv = nn.Sequential(
                nn.Conv2d(dim, 2 * n_pos, patch, bias=True), nn.SELU(), nn.Conv2d(2 * n_pos, 2 * n_pos, 1, bias=True)
            )
            self.sf_conv = nn.Conv2d(dim, dim, 1, bias=False)
            self.agg_weights = nn.Parameter(torch.zeros(n_pos, dim, dim))

        def forward(self, features, keypoints):
            """features C×H×W, keypoints N×2 (x, y) pixels -> descriptors N×C unit-norm."""
            c, h, w = features.shape
            corner = (keypoints.long() - patch // 2).clone()  # the K×K patch's top-left pixel
            corner[:, 0] = corner[:, 0].clamp(0, w - 1 - patch)
            corner[:, 1] = corner[:, 1].clamp(0, h - 1 - patch)
            steps = torch.arange(patch, device=features.device)
            ys = (corner[:, 1, None, None] + steps[None, :, None]).expand(-1, patch, patch)
            xs = (corner[:, 0, None, None] + steps[None, None, :]).expand(-1, patch, patch)
            patches = features[:, ys, xs].permute(1, 0, 2, 3)  # N×C×K×K
            limit = max(h, w) / 4.0
            offset = self.offset_conv(patches).clamp(-limit, limit)[:, :, 0, 0]  # N×2M: M x-offsets, M y-offsets
            positions = keypoints[:, None, :] + offset.reshape(-1, 2, n_pos).transpose(1, 2)  # N×M×2
            size = keypoints.new_tensor([w - 1, h - 1])
            grid = (2 * positions / size - 1).reshape(1, -1, 1, 2)
            sampled = F.grid_sample(features[None], grid, mode="bilinear", align_corners=True)  # 1×C×(N·M)×1
            sampled = sampled.reshape(c, -1, n_pos, 1).permute(1, 0, 2, 3)  # N×C×M×1
            sampled = F.selu(self.sf_conv(sampled))[..., 0]  # N×C×M
            return F.normalize(torch.einsum("ncm,mcd->nd", sampled, self.agg_weights), dim=1)

    class ALIKEDNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block1 = ConvBlock(3, c1)
            self.block2 = ResBlock(c1, c2, False)
            self.block3 = ResBlock(c2, c3, True)
            self.block4 = ResBlock(c3, c4, True)
            self.conv1 = nn.Conv2d(c1, dim // 4, 1, bias=False)
            self.conv2 = nn.Conv2d(c2, dim // 4, 1, bias=False)
            self.conv3 = nn.Conv2d(c3, dim // 4, 1, bias=False)
            self.conv4 = nn.Conv2d(dim, dim // 4, 1, bias=False)
            self.score_head = nn.Sequential(
                nn.Conv2d(dim, 8, 1, bias=False), nn.SELU(),
                nn.Conv2d(8, 4, 3, padding=1, bias=False), nn.SELU(),
                nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.SELU(),
                nn.Conv2d(4, 1, 3, padding=1, bias=False),
            )
            self.desc_head = SDDH()

        def forward(self, image):
            h, w = image.shape[-2:]
            pad_h, pad_w = -h % 32, -w % 32  # four poolings: 2, 4, 4 -> sides divisible by 32
            pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
            x1 = self.block1(F.pad(image, pads, mode="replicate"))
            x2 = self.block2(F.avg_pool2d(x1, 2))
            x3 = self.block3(F.avg_pool2d(x2, 4))
            x4 = self.block4(F.avg_pool2d(x3, 4))
            full = x1.shape[-2:]
            levels = [F.selu(self.conv1(x1))] + [
                F.interpolate(F.selu(conv(x)), size=full, mode="bilinear", align_corners=True)
                for conv, x in ((self.conv2, x2), (self.conv3, x3), (self.conv4, x4))
            ]
            x1234 = torch.cat(levels, dim=1)
            scores = torch.sigmoid(self.score_head(x1234))
            features = F.normalize(x1234, dim=1)
            crop = (..., slice(pads[2], pads[2] + h), slice(pads[0], pads[0] + w))
            return features[crop], scores[crop]

    return ALIKEDNet()


def soft_keypoints(score_map, indices, radius: int, temperature: float = 0.1):
    """Sub-pixel keypoints by a soft-argmax over each NMS maximum's window (ALIKED's DKD).

    score_map: H×W; indices: N flat positions of the maxima -> (keypoints N×2 (x, y) pixels,
    scores N bilinearly sampled there).
    """
    torch = import_torch()
    h, w = score_map.shape
    size = 2 * radius + 1
    steps = torch.arange(-radius, radius + 1, device=score_map.device)
    dx, dy = steps.repeat(size), steps.repeat_interleave(size)  # size² window taps, row-major
    xs, ys = indices % w, indices // w
    # Maxima lie at least `radius` from the border, so every window is inside the map.
    window = score_map[ys[:, None] + dy[None], xs[:, None] + dx[None]]  # N×size²
    weights = torch.softmax((window - window.max(dim=1, keepdim=True).values) / temperature, dim=1)
    offsets = weights @ torch.stack([dx, dy], dim=1).to(score_map.dtype)
    keypoints = torch.stack([xs, ys], dim=1).to(score_map.dtype) + offsets
    norm = (2 * keypoints / keypoints.new_tensor([w - 1, h - 1]) - 1).reshape(1, 1, -1, 2)
    scores = torch.nn.functional.grid_sample(score_map[None, None], norm, mode="bilinear", align_corners=True)
    return keypoints, scores.reshape(-1)


class ALIKED(TorchExtractor):
    """ALIKED keypoints and descriptors (128-d; 64-d for t16); `model` is n16, t16, n32 or n16rot."""

    name = "aliked"
    dim = 128

    def __init__(self, max_keypoints: int | None = 2048, weights: str | Path | None = None,
                 device: str = "auto", model: str = "n16", detection_threshold: float = 0.2,
                 nms_radius: int = 2, batch_size: int = 8) -> None:
        super().__init__(max_keypoints=max_keypoints, weights=weights, device=device, batch_size=batch_size)
        model = model.removeprefix("aliked-")
        if model not in VARIANTS:
            raise ValueError(f"unknown ALIKED model {model!r}; choose one of: {', '.join(VARIANTS)}")
        if nms_radius < 1:
            raise ValueError(f"nms_radius must be >= 1, got {nms_radius}")
        self.model = model
        self.dim = VARIANTS[model][4]
        self.detection_threshold = detection_threshold
        self.nms_radius = nms_radius

    @property
    def weights_name(self) -> str:
        return f"aliked-{self.model}"

    def config(self) -> dict[str, Any]:
        return {**super().config(), "model": self.weights_name,
                "detection_threshold": self.detection_threshold, "nms_radius": self.nms_radius}

    def _build(self):
        return build_aliked_net(self.model)

    def _forward(self, batch):
        """batch B×1×H×W float in [0, 1] -> per image (keypoints N×2, descriptors N×dim, scores N)."""
        features, scores = self._net(batch.expand(-1, 3, -1, -1))
        r = self.nms_radius
        maxima = greedy_nms(scores, r, max_iterations=2)  # ALIKED's simple_nms
        maxima[..., :r, :] = False
        maxima[..., -r:, :] = False
        maxima[..., :r] = False
        maxima[..., -r:] = False
        outputs = []
        for feature_map, score_map, mask in zip(features, scores[:, 0], maxima[:, 0]):
            candidates = mask & (score_map > self.detection_threshold)
            if not bool(candidates.any()):  # as ALIKED: fall back to the image's mean score
                candidates = mask & (score_map > score_map.mean())
            indices = candidates.flatten().nonzero()[:, 0]
            if self.max_keypoints is not None and len(indices) > self.max_keypoints:
                indices = indices[score_map.flatten()[indices].topk(self.max_keypoints).indices]
            keypoints, kept = soft_keypoints(score_map, indices, r)
            if len(indices) == 0:
                descriptors = keypoints.new_zeros((0, self.dim))
            else:
                descriptors = self._net.desc_head(feature_map, keypoints)
            outputs.append(self._top_k(keypoints, descriptors, kept))
        return outputs
