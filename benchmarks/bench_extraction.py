"""Images/s of the whole extraction pipeline (decode in workers + model) against the model alone.

    python benchmarks/bench_extraction.py --features superpoint --images 2000 [--workers N]

Writes N textured 640×480 JPEGs to a temporary folder, then measures
  1. model only: the extractor on images already decoded in memory, batched as the pipeline does;
  2. pipeline: `extract_images` (decoding in worker processes, model in this process).
If (2) is close to (1), decoding keeps the model (the GPU, when there is one) busy.
The notebook reported 186 images/s for SuperPoint on its small images.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from vladsearch.features import get_extractor
from vladsearch.features.extraction import default_workers, extract_images
from vladsearch.io.images import load_image


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Textured synthetic photos: smoothed noise, shapes and lines, different per image."""
    rng = np.random.default_rng(seed)
    paths = []
    for number in range(count):
        base = cv2.GaussianBlur(rng.integers(0, 255, (480, 640), np.uint8), (0, 0), 3)
        image = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR)
        for _ in range(30):
            centre = tuple(int(v) for v in rng.integers(0, (640, 480)))
            colour = tuple(int(v) for v in rng.integers(0, 255, 3))
            cv2.circle(image, centre, int(rng.integers(5, 60)), colour, int(rng.integers(-1, 4)))
        path = folder / f"img_{number:05d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default="superpoint")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    extractor = get_extractor(args.features, weights=args.weights)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_images(Path(folder), args.images)
        loaded = [load_image(p, 1024) for p in paths[:256]]
        extractor.extract_batch([im.gray for im in loaded[:8]])  # warm-up (weights, CUDA context)
        start = time.perf_counter()
        for i in range(0, len(loaded), args.batch_size):
            chunk = loaded[i:i + args.batch_size]
            extractor.extract_batch([im.gray for im in chunk], [im.scale for im in chunk], [im.size for im in chunk])
        model_rate = len(loaded) / (time.perf_counter() - start)
        workers = args.workers or default_workers()
        start = time.perf_counter()
        done = sum(1 for item in extract_images(paths, extractor, 1024, workers, args.batch_size)
                   if item.features is not None)
        pipeline_rate = done / (time.perf_counter() - start)
    device = getattr(extractor, "device", "cpu")
    print(f"{args.features} on {device}, {workers} decoding workers, batch {args.batch_size}, 640×480 JPEGs")
    print(f"model only (decoded in memory): {model_rate:8.1f} images/s")
    print(f"pipeline (decode + model):      {pipeline_rate:8.1f} images/s  ({pipeline_rate / model_rate:.2f} of model only)")
    print("notebook (reported):               186.0 images/s")


if __name__ == "__main__":
    main()
