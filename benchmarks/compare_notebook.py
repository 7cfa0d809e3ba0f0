"""Compare the research notebook's pipeline with vladsearch on the same images.

    python benchmarks/compare_notebook.py IMAGES_DIR [--features sift] [--clusters 16] [--queries 50]
    python benchmarks/compare_notebook.py --generate 2000      # synthetic photo-like images, runs anywhere

Both pipelines use the same features at full resolution and k=16 clusters (the
notebook's setting). Each runs in its own subprocess so that its memory is measured
alone: the peak RSS of its main process (ru_maxrss), and the peak PSS of its whole
process tree (workers included, shared pages split), sampled every 0.2 s from /proc.
The queries are N database images chosen with a fixed seed and used
as they are (exact copies), the notebook's own test; recall@1 says whether each query
found itself. The notebook runs in one process (as it did); vladsearch uses `--workers`
processes (default: every core) for extraction.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from common import process_tree, source_photos

STAGES = ("extract", "codebook", "encode", "index")
# Textured enough for local features at any crop (clock and colorwheel give SIFT almost
# no keypoints; cat is chelsea again).
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "camera", "coins", "moon", "page", "text", "grass", "gravel", "brick", "logo")


# --- synthetic but photo-like images ----------------------------------------------
def generate_images(folder: Path, count: int, seed: int = 0, size: tuple[int, int] = (640, 480)) -> list[Path]:
    """Write `count` 640×480 JPEGs: random crops of sample photos, rescaled, colour-jittered, noised."""
    rng = np.random.default_rng(seed)
    photos = source_photos(SKIMAGE_PHOTOS)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    written = []
    for number in range(count):
        source = photos[int(rng.integers(len(photos)))]
        h, w = source.shape[:2]
        fraction = rng.uniform(0.35, 1.0)
        cw = max(16, min(w, round(min(w, h * width / height) * fraction)))
        ch = max(12, min(h, round(cw * height / width)))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = cv2.resize(source[y:y + ch, x:x + cw], size, interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            image = cv2.flip(image, 1)
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-15, 16))) % 180
        image = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
        image = image * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30) + rng.normal(0, rng.uniform(0, 4), image.shape)
        path = folder / f"synthetic_{number:06d}.jpg"
        cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 96))])
        written.append(path)
    return written


# --- one pipeline, in a subprocess ---------------------------------------------------
def _peak_memory() -> dict[str, float]:
    """Peak resident memory of this process in MiB (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    unit = 1 / 1024 if sys.platform != "darwin" else 1 / 1024 / 1024
    return {"main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit}


def _tree_pss_mib(pid: int) -> float:
    """Proportional set size of a process tree, MiB: shared pages are split between sharers, not counted twice."""
    total = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total / 1024


def _run_notebook(spec: dict) -> dict:
    from notebook_pipeline import run_notebook_pipeline

    result = run_notebook_pipeline(spec["images"], spec["queries"], spec["features"], spec["clusters"], spec["top"],
                                   weights=spec["weights"])
    return {"timings": result["timings"], "rankings": result["rankings"]}


def _run_ours(spec: dict) -> dict:
    from vladsearch import Index

    start = time.perf_counter()
    index = Index.build(spec["images_dir"], features=spec["features"], clusters=spec["clusters"], max_side=None,
                        workers=spec["workers"], weights=spec["weights"], progress=False)
    build = time.perf_counter() - start
    timings = {stage: float(index.timings.get(stage, 0.0)) for stage in STAGES}
    timings["other"] = max(0.0, build - sum(timings.values()))
    with tempfile.TemporaryDirectory(prefix="vladsearch-compare-") as scratch:
        start = time.perf_counter()
        index.save(Path(scratch) / "index.vlad")
        timings["save"] = time.perf_counter() - start
    start = time.perf_counter()
    results = index.search(spec["queries"], top=spec["top"], workers=spec["workers"], progress=False)
    timings["search"] = time.perf_counter() - start
    root = Path(spec["images_dir"])
    position = {Path(p).relative_to(root).as_posix(): i for i, p in enumerate(spec["images"])}
    rankings = [[position.get(m.image, -1) for m in r.matches] for r in results]
    return {"timings": timings, "rankings": rankings}


def _worker(which: str, spec_path: Path, out_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    start = time.perf_counter()
    result = _run_notebook(spec) if which == "notebook" else _run_ours(spec)
    result["wall"] = time.perf_counter() - start
    result["memory_mib"] = _peak_memory()
    out_path.write_text(json.dumps(result))
    return 0


def run_in_subprocess(which: str, spec: dict, scratch: Path) -> dict:
    """Run one pipeline in a fresh interpreter; returns its timings, rankings and peak memory."""
    spec_path, out_path = scratch / f"{which}-spec.json", scratch / f"{which}-result.json"
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", which, "--spec", str(spec_path),
               "--result", str(out_path)]
    process = subprocess.Popen(command, cwd=Path(__file__).resolve().parent)
    tree_peak = 0.0
    while process.poll() is None:  # sample the whole tree: workers are not waited-for children of it
        if Path("/proc/self/smaps_rollup").exists():
            tree_peak = max(tree_peak, _tree_pss_mib(process.pid))
        time.sleep(0.2)
    if process.returncode != 0:
        raise RuntimeError(f"the {which} pipeline failed (exit status {process.returncode}); see its output above")
    result = json.loads(out_path.read_text())
    result["memory_mib"]["tree_pss"] = tree_peak
    return result
    return json.loads(out_path.read_text())


# --- the comparison -------------------------------------------------------------------
def recall_at_1(rankings: list[list[int]], expected: list[int]) -> float:
    return float(np.mean([bool(r) and r[0] == e for r, e in zip(rankings, expected)])) if expected else float("nan")


def _ratio(ours: float, notebook: float) -> str:
    return f"{ours / notebook:8.3f}" if notebook > 0 else "     n/a"


def report(notebook: dict, ours: dict, images: int, queries: int, expected: list[int]) -> str:
    nb, us = notebook["timings"], ours["timings"]
    build_nb = sum(nb[s] for s in STAGES)
    build_us = sum(us.get(s, 0.0) for s in STAGES) + us.get("other", 0.0)
    lines = [f"{'stage (seconds)':28s} {'notebook':>10s} {'vladsearch':>10s} {'ours/nb':>8s}"]
    for stage in STAGES + ("search",):
        ours_s = us.get(stage, 0.0)
        lines.append(f"{stage:28s} {nb[stage]:10.2f} {ours_s:10.2f} {_ratio(ours_s, nb[stage])}")
    lines.append(f"{'  (vladsearch: save, other)':28s} {'':>10s} {us.get('save', 0.0) + us.get('other', 0.0):10.2f}")
    lines.append(f"{'build (all stages)':28s} {build_nb:10.2f} {build_us:10.2f} {_ratio(build_us, build_nb)}")
    lines.append(f"{'end to end (subprocess wall)':28s} {notebook['wall']:10.2f} {ours['wall']:10.2f} "
                 f"{_ratio(ours['wall'], notebook['wall'])}")
    lines.append(f"{'build images/s':28s} {images / build_nb:10.1f} {images / build_us:10.1f} "
                 f"{_ratio(build_nb, build_us)}  (speed: higher is better)")
    lines.append(f"{'search queries/s':28s} {queries / nb['search']:10.1f} {queries / us['search']:10.1f}")
    for key, label in (("main", "peak RSS MiB (main process)"), ("tree_pss", "peak PSS MiB (with workers)")):
        nb_mem, us_mem = notebook["memory_mib"][key], ours["memory_mib"][key]
        lines.append(f"{label:28s} {nb_mem:10.0f} {us_mem:10.0f} {_ratio(us_mem, nb_mem)}")
    lines.append(f"{'recall@1 (exact copies)':28s} {recall_at_1(notebook['rankings'], expected):10.3f} "
                 f"{recall_at_1(ours['rankings'], expected):10.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images_dir", nargs="?", type=Path, help="folder of database images")
    parser.add_argument("--generate", type=int, metavar="N", help="write N synthetic 640x480 JPEGs and use them")
    parser.add_argument("--features", default="sift", help="local features for both pipelines (default sift)")
    parser.add_argument("--weights", help="weights file for learned features such as superpoint")
    parser.add_argument("--clusters", type=int, default=16, help="k-means clusters (default 16, the notebook's)")
    parser.add_argument("--queries", type=int, default=50, help="exact-copy queries (default 50)")
    parser.add_argument("--top", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--workers", type=int, default=None, help="vladsearch worker processes (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the generated images")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--worker", choices=["notebook", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args.worker, args.spec, args.result)
    if (args.images_dir is None) == (args.generate is None):
        parser.error("give IMAGES_DIR or --generate N (one of them)")

    scratch = Path(tempfile.mkdtemp(prefix="vladsearch-compare-"))
    try:
        images_dir = args.images_dir
        if args.generate is not None:
            images_dir = scratch / "images"
            start = time.perf_counter()
            generate_images(images_dir, args.generate, args.seed)
            print(f"generated {args.generate} images in {images_dir} ({time.perf_counter() - start:.1f} s)")
        from vladsearch.io.images import list_images

        images = [str(p) for p in list_images(images_dir)]
        if not images:
            parser.error(f"no images found in {images_dir}")
        picks = np.random.default_rng(args.seed).choice(len(images), min(args.queries, len(images)), replace=False)
        expected = [int(i) for i in picks]
        spec = {"images_dir": str(images_dir), "images": images, "queries": [images[i] for i in expected],
                "features": args.features, "clusters": args.clusters, "top": args.top, "workers": args.workers,
                "weights": args.weights}
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"{len(images)} images, {len(expected)} exact-copy queries, features {args.features}, "
              f"k={args.clusters}; {cpus} CPUs, vladsearch workers={args.workers or cpus}; "
              f"python {platform.python_version()}")
        results = {}
        for which in ("notebook", "ours"):
            print(f"running the {which} pipeline ...", flush=True)
            results[which] = run_in_subprocess(which, spec, scratch)
        print(report(results["notebook"], results["ours"], len(images), len(expected), expected))
        if args.json:
            args.json.write_text(json.dumps({"spec": {k: v for k, v in spec.items() if k != "images"},
                                             "expected": expected, **results}, indent=1))
    finally:
        if args.keep and args.generate is not None:
            print(f"kept {scratch / 'images'}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
