"""Helpers shared by the benchmark scripts (run them from anywhere: `python benchmarks/X.py`)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import cv2
import numpy as np


def source_photos(names: tuple[str, ...]) -> list[np.ndarray]:
    """The scikit-image sample photographs that ship with the package, as BGR uint8."""
    from skimage import data

    photos = []
    for name in names:
        try:
            image = np.asarray(getattr(data, name)())
        except Exception as exc:  # noqa: BLE001 - some need an optional download; use what is there
            print(f"(skipping skimage.data.{name}: {type(exc).__name__})", file=sys.stderr)
            continue
        if image.dtype != np.uint8:
            image = image.astype(np.float64)
            image = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-9)).astype(np.uint8)
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGR)
        else:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        photos.append(image)
    if not photos:
        raise RuntimeError("no scikit-image sample photographs available; pass IMAGES_DIR instead of --generate")
    return photos


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Linux /proc), including forkserver-made workers."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in children.read_text().split())
            except OSError:
                continue
    return tree


def cpu_description() -> str:
    """'N-core CPU (model name)' of this machine, for the tables' captions."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cores}-core CPU ({model})"
