"""Helpers for the live-index tests: synthetic photos and the real CLI in a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

PROJECT = Path(__file__).resolve().parents[1]


def make_images(folder: Path, count: int, seed: int, size: tuple[int, int] = (320, 240), prefix: str = "img") -> list[Path]:
    """`count` distinct textured images (shapes + noise): SIFT finds a few hundred keypoints in each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        width, height = size
        image = cv2.GaussianBlur(rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8), (3, 3), 0)
        image = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)
        for _ in range(25):
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            if rng.random() < 0.5:
                cv2.circle(image, (x, y), int(rng.integers(5, 40)), color, -1)
            else:
                cv2.rectangle(image, (x, y), (x + int(rng.integers(5, 60)), y + int(rng.integers(5, 60))), color, -1)
        path = folder / f"{prefix}_{seed}_{i:03d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def cli(*args: str, check: bool = True, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `vladsearch ARGS…` in a new process (as a user would)."""
    result = subprocess.run([sys.executable, "-m", "vladsearch.cli", *args], capture_output=True, text=True, check=False,
                            timeout=timeout, cwd=kwargs.pop("cwd", None), env={**os.environ, "PYTHONPATH": str(PROJECT)},
                            **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"vladsearch {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def popen_cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vladsearch.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(PROJECT)},
                            **kwargs)


def info(index: Path) -> dict:
    return json.loads(cli("info", str(index), "--json").stdout)


def children_of(pid: int) -> list[int]:
    """Direct child processes of `pid` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def descendants_of(pid: int) -> list[int]:
    """Children, grandchildren, … of `pid` (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        children = children_of(todo.pop())
        found += children
        todo += children
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
