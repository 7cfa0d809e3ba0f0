"""Milliseconds per 640×480 grayscale image for each local-feature extractor.

Usage:
    VLADSEARCH_WEIGHTS_DIR=../shared/models python benchmarks/bench_features.py \
        [--models sift superpoint aliked-n16 ...] [--device cpu] [--threads 2] [--batch 1] [--repeat 5]

The image is scikit-image's astronaut, gray, resized to 640×480. Each model runs once to
warm up (weights load, allocator), then `--repeat` timed calls of `extract_batch` on
`--batch` copies; the median per-image time is printed with the keypoint count.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np

from vladsearch.features import get_extractor

# label -> (registry name, extra parameters)
MODELS: dict[str, tuple[str, dict]] = {
    "sift": ("sift", {}),
    "superpoint": ("superpoint", {}),
    "aliked-n16": ("aliked", {"model": "n16"}),
    "aliked-t16": ("aliked", {"model": "t16"}),
    "aliked-n32": ("aliked", {"model": "n32"}),
    "aliked-n16rot": ("aliked", {"model": "n16rot"}),
    "disk": ("disk", {}),
}


def test_image(width: int = 640, height: int = 480) -> np.ndarray:
    """A real photograph as grayscale uint8 height×width."""
    from skimage import data

    gray = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA)


def time_model(label: str, image: np.ndarray, device: str, batch: int, repeat: int) -> tuple[float, int]:
    """Median ms per image and the keypoint count of the first image."""
    name, params = MODELS[label]
    if name != "sift":
        params = {**params, "device": device}
    extractor = get_extractor(name, max_keypoints=2048, **params)
    images = [image] * batch
    features = extractor.extract_batch(images)  # warm-up
    per_image = []
    for _ in range(repeat):
        start = time.perf_counter()
        extractor.extract_batch(images)
        per_image.append((time.perf_counter() - start) * 1000 / batch)
    return statistics.median(per_image), len(features[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--batch", type=int, default=1, help="images per extract_batch call")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    image = test_image()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"batch {args.batch}, 640x480")
    print(f"{'model':<15}{'ms/image':>10}{'keypoints':>11}")
    for label in args.models:
        ms, count = time_model(label, image, args.device, args.batch, args.repeat)
        print(f"{label:<15}{ms:>10.1f}{count:>11d}")


if __name__ == "__main__":
    main()
