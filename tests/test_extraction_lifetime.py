"""Extraction workers must not outlive their parent, even when it is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="needs Linux: /proc to find the workers, prctl(PR_SET_PDEATHSIG)")

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    from vladsearch.features.extraction import extract_images
    from vladsearch.features import get_extractor

    if sys.argv[2] == "poll":  # the fallback of platforms without prctl: a thread polling getppid()
        sys.platform = "unknown"

    paths = sorted(Path(sys.argv[1]).glob("*.png")) * 50  # enough work to still be running when killed
    for number, item in enumerate(extract_images(paths, get_extractor("sift"), workers=2)):
        if number == 0:
            print("running", flush=True)
""")


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for entry in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.update(int(child) for child in entry.read_text().split())
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _textured_pngs(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for number in range(count):
        noise = rng.integers(0, 256, (480, 640), dtype=np.uint8)
        image = cv2.GaussianBlur(noise, (0, 0), float(rng.uniform(1.0, 3.0)))
        cv2.imwrite(str(folder / f"texture_{number:03d}.png"), image)


@pytest.mark.parametrize("mechanism", ["prctl", "poll"])
def test_workers_die_when_parent_is_killed(tmp_path, mechanism):
    _textured_pngs(tmp_path, 40)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    parent = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path), mechanism], stdout=subprocess.PIPE, text=True,
                              env=env)
    workers: set[int] = set()
    try:
        assert parent.stdout.readline().strip() == "running", "the extraction script did not start"
        deadline = time.monotonic() + 10
        while len(workers) < 2 and time.monotonic() < deadline:
            workers |= _children(parent.pid)
            time.sleep(0.05)
        assert len(workers) >= 2, f"expected 2 worker processes, found {sorted(workers)}"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [pid for pid in workers if _alive(pid)]
        assert not survivors, f"worker processes {survivors} outlived their killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in workers:  # never leave orphans behind, even when the test fails
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
