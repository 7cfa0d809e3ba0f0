"""Helpers for the server tests: a small index with hostile neighbours, and the real `vladsearch serve` process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from live_helpers import PROJECT, cli, make_images

SECRET = b"top secret, outside the index's root\n"


def make_project(folder: Path, count: int = 12, seed: int = 5) -> dict[str, Path]:
    """photos/ (`count` synthetic images, plus symlinks leading out of it), outside/ (never to be served),
    an index photos.vlad built with the CLI (16 words, cached features for rerank)."""
    photos, outside = folder / "photos", folder / "outside"
    images = make_images(photos, count, seed)
    outside_images = make_images(outside, 2, seed + 1000, prefix="outside")
    (outside / "secret.txt").write_bytes(SECRET)
    os.symlink(outside_images[0], photos / "link_out.jpg")  # a file symlink leading out of the root
    os.symlink(outside, photos / "dir_out")  # a folder symlink leading out of the root
    (photos / "notes.txt").write_text("not an image\n")
    index = folder / "photos.vlad"
    cli("build", str(photos), "--index", str(index), "-k", "16", "-q", "--workers", "1", "--keep-features")
    return {"photos": photos, "outside": outside, "index": index, "images": images, "outside_images": outside_images}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve(index: Path, *extra: str, ready_timeout: float = 120.0):
    """Start `vladsearch serve INDEX` on a free loopback port; yield its base URL; stop it at the end."""
    port = free_port()
    log = open(index.parent / f"serve-{port}.log", "w+")  # noqa: SIM115 - closed below
    process = subprocess.Popen([sys.executable, "-m", "vladsearch.cli", "serve", str(index), "--port", str(port),
                                "--refresh-interval", "0.5", *extra], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": str(PROJECT)})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise AssertionError(f"vladsearch serve exited {process.returncode}:\n{log.read()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/api/info", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"vladsearch serve not ready after {ready_timeout} s")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_for(condition, timeout: float, what: str, interval: float = 0.25):
    """Poll `condition()` until it returns a true value (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)
