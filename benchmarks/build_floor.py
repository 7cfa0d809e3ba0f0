"""The independent floor of a SIFT build: decode + SIFT every image once, one process per core.

    python benchmarks/build_floor.py IMAGES_DIR [--processes N] [--cv2-threads-default]

Deliberately written without any vladsearch code: a `multiprocessing.Pool(processes=cores)`
whose workers run `cv2.imread(path, cv2.IMREAD_GRAYSCALE)` and
`cv2.SIFT_create().detectAndCompute(gray, None)` (default SIFT parameters) on each image
and return only the keypoint count. Each worker calls `cv2.setNumThreads(1)` in its
initializer (one image per process, as in vladsearch; `--cv2-threads-default` keeps
OpenCV's own thread pool). The clock covers the pool's start, every image and its
shutdown. Images are handed out with `imap_unordered` in chunks of 4 (idle time at
the end is at most a few images per worker).

`bench_build.py --floor` runs this in a fresh interpreter next to the build and prints
the ratio build / floor.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

import cv2

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_sift = None


def _init(threads: int | None) -> None:
    global _sift
    if threads is not None:
        cv2.setNumThreads(threads)
    _sift = cv2.SIFT_create()


def _one(path: str) -> int:
    gray = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if gray is None:
        return -1
    keypoints, _descriptors = _sift.detectAndCompute(gray, None)
    return len(keypoints)


def list_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def floor(paths: list[str], processes: int | None = None, cv2_threads: int | None = 1,
          chunksize: int = 4) -> dict:
    """Decode + SIFT every path once on `processes` processes (default: every core).

    Returns {"wall": seconds, "cpu_workers_s": CPU seconds of the workers, "images", "keypoints", "failed", "processes", "cv2_threads"}.
    """
    processes = processes or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with context.Pool(processes=processes, initializer=_init, initargs=(cv2_threads,)) as pool:
        counts = list(pool.imap_unordered(_one, paths, chunksize=chunksize))
        pool.close()
        pool.join()  # workers reaped, so that their CPU time is counted below
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall": wall, "cpu_workers_s": cpu, "images": len(paths), "keypoints": sum(c for c in counts if c > 0),
            "failed": sum(c < 0 for c in counts), "processes": processes,
            "cv2_threads": "default" if cv2_threads is None else cv2_threads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images_dir", type=Path)
    parser.add_argument("--processes", type=int, default=None, help="default: every core")
    parser.add_argument("--cv2-threads-default", action="store_true",
                        help="keep OpenCV's thread pool in the workers (default: cv2.setNumThreads(1))")
    args = parser.parse_args(argv)
    paths = list_files(args.images_dir)
    result = floor(paths, args.processes, None if args.cv2_threads_default else 1)
    print(f"floor: {result['images']} images, {result['processes']} processes, cv2 threads "
          f"{result['cv2_threads']}: {result['wall']:.2f} s, workers' CPU {result['cpu_workers_s']:.1f} s ({result['keypoints'] / max(len(paths), 1):.0f} "
          f"keypoints/image, {result['failed']} unreadable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
