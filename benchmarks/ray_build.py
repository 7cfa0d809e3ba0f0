"""`build --ray` against the local pool: Ray's overhead, and identical vectors.

    python benchmarks/ray_build.py [IMAGES_DIR] [--count 2000] [--repeat 1]      # this machine's CPUs
    python benchmarks/ray_build.py [IMAGES_DIR] --gpu-machine [--weights PATH]  # 16 cores + a GPU

Without IMAGES_DIR, the 640×480 JPEGs of `python benchmarks/bench_build.py --generate 2000`
(/tmp/vladsearch-bench-build/all) are used when they exist, else `count` textured images
are generated (tests/live_helpers.make_images). Every build is the real command line in a
fresh process (`vladsearch build … --json`), timed from start to exit, so Ray's instance
start and shutdown are counted; local and Ray builds alternate `--repeat` times.

Default mode: the local pool (all cores) vs `--ray` (a local instance, one actor per CPU),
ratio ray/local, and the largest difference between the two indexes' vectors.
--gpu-machine: images/s of SIFT with the local pool and with 1, 4 and 16 Ray CPU actors,
and of SuperPoint on the GPU locally and with Ray GPU actors (4 per GPU); weights from
--weights or VLADSEARCH_WEIGHTS_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
CACHE = Path("/tmp/vladsearch-bench-build/all")


def images(folder: str | None, count: int, scratch: Path) -> Path:
    """A folder of `count` images: IMAGES_DIR, bench_build's cache, or freshly generated ones."""
    source = Path(folder) if folder else CACHE
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
        target = scratch / "photos"
        target.mkdir()
        for f in files:
            os.symlink(f, target / f.name)
        return target
    sys.path.insert(0, str(PROJECT / "tests"))
    from live_helpers import make_images

    make_images(scratch / "photos", count, seed=0, size=(640, 480))
    return scratch / "photos"


def build(photos: Path, index: Path, *options: str) -> tuple[float, dict]:
    """Run `vladsearch build` in a fresh process; (wall seconds, its JSON report)."""
    command = [sys.executable, "-m", "vladsearch.cli", "build", str(photos), "--index", str(index), "--force",
               "--json", "--quiet", *options]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONPATH": str(PROJECT)})
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return wall, json.loads(result.stdout)


def max_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between the two indexes' vectors of the same image (inf: other images)."""
    from vladsearch import Index
    from vladsearch.store import catalog

    def vectors(path: Path) -> dict[str, np.ndarray]:
        index = Index.open(path)
        rows = [r for r in catalog.image_rows(index.snapshot.table) if r["segment"] is not None]
        return dict(zip([r["path"] for r in rows], index.vectors_of([r["id"] for r in rows])))

    va, vb = vectors(a), vectors(b)
    if sorted(va) != sorted(vb):
        return float("inf")
    return max(float(np.abs(va[p] - vb[p]).max()) for p in va)


def overhead(photos: Path, scratch: Path, repeat: int, options: list[str]) -> list[dict]:
    runs = []
    for _ in range(repeat):
        local, _ = build(photos, scratch / "local.vlad", *options)
        remote, report = build(photos, scratch / "ray.vlad", *options, "--ray")
        runs.append({"local_s": round(local, 1), "ray_s": round(remote, 1), "ratio": round(remote / local, 2),
                     "ray_timings": report["timings"], "ray": report["ray"],
                     "max_abs_difference": max_difference(scratch / "local.vlad", scratch / "ray.vlad")})
        print(json.dumps(runs[-1]), flush=True)
    return runs


def gpu_machine(photos: Path, scratch: Path, count: int, weights: str | None) -> list[dict]:
    rows = []

    def run(name: str, *options: str) -> None:
        wall, report = build(photos, scratch / f"{len(rows)}.vlad", *options)
        rows.append({"run": name, "seconds": round(wall, 1), "images_per_s": round(count / wall, 1),
                     "executor": report["executor"], "ray": report.get("ray")})
        print(json.dumps(rows[-1]), flush=True)

    run("sift, local pool (all cores)")
    for actors in (1, 4, 16):
        run(f"sift, ray, {actors} CPU actors", "--ray", "--workers", str(actors))
    learned = ["--features", "superpoint", *(["--weights", weights] if weights else [])]
    run("superpoint, local (GPU in the main process, all cores decode)", *learned)
    run("superpoint, ray, GPU actors", *learned, "--ray")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="?", help="folder of images (default: bench_build's cache or generated)")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--clusters", default="64")
    parser.add_argument("--gpu-machine", action="store_true", help="1/4/16 CPU actors and GPU SuperPoint")
    parser.add_argument("--weights", help="SuperPoint weights (--gpu-machine)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vladsearch-ray-bench-") as tmp:
        scratch = Path(tmp)
        photos = images(args.images, args.count, scratch)
        count = sum(1 for _ in photos.iterdir())
        print(f"{count} images in {photos}; {os.cpu_count()} CPUs", flush=True)
        if args.gpu_machine:
            rows = gpu_machine(photos, scratch, count, args.weights)
        else:
            rows = overhead(photos, scratch, args.repeat, ["--clusters", args.clusters])
    print(json.dumps({"images": count, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
