"""Peak memory of a build as the collection grows (it must stay flat: ≤ 1.3× from 10k to 100k).

    python benchmarks/build_memory.py --sizes 10000 100000 [--preset large] [--cache DIR]

Images: synthetic 160×120 JPEGs (tests/live_helpers.make_images: textured shapes, a few
hundred SIFT keypoints each), generated once into --cache and reused; size N takes the
first N. Each build is `vladsearch build` in its own process (default settings, K=64 SIFT,
plus --preset); this script samples every 0.2 s the resident memory of the main process and
the proportional set size (PSS) of the whole process tree (main + extraction workers) from
/proc, and reports the peaks (the main process's RSS also split out as its anonymous part,
which excludes file pages it has mapped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import process_tree
from live_helpers import make_images


def ensure_images(cache: Path, count: int) -> None:
    have = len(list(cache.glob("*.jpg"))) if cache.exists() else 0
    for start in range(have - have % 1000, count, 1000):
        make_images(cache, min(1000, count - start), seed=start // 1000, size=(160, 120), prefix=f"b{start // 1000:04d}")


def _kib(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(images: Path, preset: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="vladsearch-mem-") as tmp:
        command = [sys.executable, "-m", "vladsearch.cli", "build", str(images), "--index", f"{tmp}/i.vlad",
                   "-q", "--preset", preset]
        start = time.perf_counter()
        process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(PROJECT)})
        peaks = {"main_rss_mib": 0.0, "main_anon_mib": 0.0, "tree_pss_mib": 0.0}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                tree = process_tree(process.pid)
                main = _kib(Path(f"/proc/{process.pid}/status"), "VmRSS:")
                anon = _kib(Path(f"/proc/{process.pid}/status"), "RssAnon:")
                peaks["main_anon_mib"] = max(peaks["main_anon_mib"], anon / 1024)
                pss = sum(_kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss:") for pid in tree)
                peaks["main_rss_mib"] = max(peaks["main_rss_mib"], main / 1024)
                peaks["tree_pss_mib"] = max(peaks["tree_pss_mib"], pss / 1024)
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        done.set()
        sampler.join()
        if code != 0:
            raise RuntimeError(f"build failed with exit code {code}")
        return {**{k: round(v, 1) for k, v in peaks.items()}, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--preset", default="large", choices=["exact", "large"])
    parser.add_argument("--cache", default="/tmp/vladsearch-bench-memory")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    cache = Path(args.cache)
    ensure_images(cache, max(args.sizes))
    files = sorted(cache.glob("*.jpg"))
    results = {}
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="vladsearch-mem-set-") as folder:
            for file in files[:size]:
                os.link(file, Path(folder) / file.name)
            results[size] = measure(Path(folder), args.preset)
        print(f"{size:>7} images, --preset {args.preset}: peak main RSS {results[size]['main_rss_mib']} MiB "
              f"(anonymous {results[size]['main_anon_mib']} MiB), "
              f"process tree PSS {results[size]['tree_pss_mib']} MiB, {results[size]['seconds']} s", flush=True)
    first, last = results[args.sizes[0]], results[args.sizes[-1]]
    print(f"growth {args.sizes[0]} -> {args.sizes[-1]}: main {last['main_rss_mib'] / first['main_rss_mib']:.2f}x, "
          f"tree {last['tree_pss_mib'] / first['tree_pss_mib']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
