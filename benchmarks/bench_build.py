"""How close `Index.build` comes to the floor: decoding + extracting every image once.

    python benchmarks/bench_build.py IMAGES_DIR [--clusters 16] [--features sift]
    python benchmarks/bench_build.py --generate 2000            # synthetic photo-like 640×480 JPEGs
    python benchmarks/bench_build.py --memory-sweep [--sizes 500 2000 5000]   # peak memory per size

The acceptance check of the core engine: a build must decode each image once, take at
most 1.15× the time of decoding + extracting every image once on all cores (codebook,
encoding, indexing and saving fit in the remaining 15%), and keep its peak memory flat
as the collection grows.

Each measurement runs in its own fresh interpreter (same imports done before the clock
starts), so that its memory is measured alone:

  baseline  vladsearch.features.extraction.extract_images over every image with the extractor and
            max_side the build uses, all cores; results consumed and dropped (the floor)
  build     Index.build(...) + index.save(...), with the index's own `timings`

In both, vladsearch.io.images.decode_gray and cv2.imdecode are wrapped with counters that
every worker appends to (one line per call, O_APPEND), so the run shows how many times
each file was decoded. Memory: the peak RSS of the main process (ru_maxrss), the largest
worker's (RUSAGE_CHILDREN) and the peak RSS and PSS of the whole process tree, sampled
every 0.1 s from /proc by this (parent) process. Baseline and build alternate `--repeat`
times; the ratio is computed per pair (the machine may be shared: compare within a run).

--generate N writes N photo-like JPEGs (random crops, rescales, flips and colour jitter of
scikit-image sample photographs; crops without texture are redrawn) once into --cache
(default /tmp/vladsearch-bench-build) and reuses them: image i is the same whatever N, so a
sweep takes the first N of one folder (hard links in a per-size folder).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import process_tree, source_photos

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "brick", "gravel", "coins", "moon", "page", "text")
SIZE = (640, 480)
STAGES = ("extract", "codebook", "encode", "index")


# --- synthetic photo-like images ----------------------------------------------------
def _textured(image: np.ndarray) -> bool:
    """Enough detail for local features: mean gradient magnitude and intensity spread."""
    import cv2

    gray = cv2.cvtColor(cv2.resize(image, (160, 120), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    gray = gray.astype(np.float32)
    gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
    return float(np.mean(np.hypot(gx, gy))) > 12.0 and float(gray.std()) > 12.0


def _make_image(photos: list[np.ndarray], number: int, seed: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng([seed, number])  # image `number` is the same whatever the count
    width, height = SIZE
    for _attempt in range(20):
        source = photos[int(rng.integers(len(photos)))]
        h, w = source.shape[:2]
        fraction = rng.uniform(0.3, 1.0)  # crop side relative to the largest 4:3 crop (≤ 3.3× zoom)
        cw = max(32, min(w, round(min(w, h * width / height) * fraction)))
        ch = max(24, min(h, round(cw * height / width)))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = source[y:y + ch, x:x + cw]
        if _textured(crop):
            break
    image = cv2.resize(crop, SIZE, interpolation=cv2.INTER_AREA if cw >= width else cv2.INTER_CUBIC)
    if rng.random() < 0.5:
        image = cv2.flip(image, 1)
    if rng.random() < 0.15:
        image = cv2.flip(image, 0)
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-15, 16))) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.7, 1.3), 0, 255)
    image = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    image = image * rng.uniform(0.75, 1.25) + rng.uniform(-25, 25) + rng.normal(0, rng.uniform(0, 3), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def ensure_images(cache: Path, count: int, seed: int = 0) -> Path:
    """`cache`/all holds at least `count` images (written once); returns `cache`/n{count} with the first `count`."""
    import cv2

    everything = cache / "all"
    everything.mkdir(parents=True, exist_ok=True)
    missing = [n for n in range(count) if not (everything / f"photo_{n:06d}.jpg").exists()]
    if missing:
        start = time.perf_counter()
        photos = source_photos(PHOTOS)
        for number in missing:
            rng = np.random.default_rng([seed, number, 1])
            path = everything / f"photo_{number:06d}.jpg"
            tmp = path.with_suffix(".tmp")
            _ok, encoded = cv2.imencode(".jpg", _make_image(photos, number, seed),
                                       [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 96))])
            tmp.write_bytes(encoded.tobytes())
            tmp.rename(path)
        print(f"generated {len(missing)} images in {everything} ({time.perf_counter() - start:.1f} s)", flush=True)
    subset = cache / f"n{count}"
    if not subset.exists() or len(list(subset.iterdir())) != count:
        shutil.rmtree(subset, ignore_errors=True)
        staging = cache / f".n{count}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for number in range(count):
            name = f"photo_{number:06d}.jpg"
            try:
                os.link(everything / name, staging / name)
            except OSError:
                shutil.copyfile(everything / name, staging / name)
        staging.rename(subset)
    return subset


def warm_page_cache(folder: Path) -> None:
    """Read every file once so that neither measurement pays for a cold disk."""
    from vladsearch.io.images import list_images

    for path in list_images(folder):
        path.read_bytes()


# --- measurements, each in a fresh interpreter ---------------------------------------
def _install_counters(log_path: str) -> None:
    """Count decodes in this process and in every worker forked from it (one line per call)."""
    import cv2

    import vladsearch.features.extraction
    import vladsearch.io.images

    def append(line: str) -> None:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode() + b"\n")
        finally:
            os.close(fd)

    original_decode, original_imdecode = vladsearch.io.images.decode_gray, cv2.imdecode
    original_load = vladsearch.features.extraction.load_image

    def decode_gray(data, *args, **kwargs):
        append("decode_gray")
        return original_decode(data, *args, **kwargs)

    def imdecode(buffer, flags):
        append("imdecode")
        return original_imdecode(buffer, flags)

    def load_image(path, *args, **kwargs):
        append(f"load\t{os.fspath(path)}")
        return original_load(path, *args, **kwargs)

    vladsearch.io.images.decode_gray = decode_gray
    vladsearch.io.images.cv2.imdecode = imdecode  # vladsearch.io.images calls cv2.imdecode through the module
    vladsearch.features.extraction.load_image = load_image


def _decode_counts(log_path: str) -> dict:
    lines = Path(log_path).read_text().splitlines() if Path(log_path).exists() else []
    loads: dict[str, int] = {}
    for line in lines:
        if line.startswith("load\t"):
            path = line.split("\t", 1)[1]
            loads[path] = loads.get(path, 0) + 1
    return {"decode_gray": sum(line == "decode_gray" for line in lines),
            "imdecode": sum(line == "imdecode" for line in lines),
            "files_loaded": len(loads), "max_loads_per_file": max(loads.values(), default=0),
            "files_loaded_more_than_once": sum(v > 1 for v in loads.values())}


def _measure(spec: dict) -> dict:
    """Runs in the child interpreter: one floor, baseline or build (+ save)."""
    if spec["what"] == "floor":  # independent of vladsearch: nothing of it imported
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import build_floor

        result = build_floor.floor(build_floor.list_files(Path(spec["images_dir"])), spec["workers"])
        unit = 1 / 1024 if sys.platform != "darwin" else 1 / 1024 / 1024
        me = resource.getrusage(resource.RUSAGE_SELF)
        result.update(main_maxrss_mib=me.ru_maxrss * unit, cpu_main_s=me.ru_utime + me.ru_stime,
                      worker_maxrss_mib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit)
        return result
    import faiss  # noqa: F401 - imported before the clock in both measurements

    import vladsearch.index  # noqa: F401
    from vladsearch import Index
    from vladsearch.features.extraction import extract_images
    from vladsearch.io.images import list_images

    if spec["profile"]:
        import cProfile

        profiler = cProfile.Profile()
    _install_counters(spec["decode_log"])
    paths = list_images(spec["images_dir"])
    result: dict = {"images": len(paths)}
    cpu_before = [sum((u.ru_utime, u.ru_stime)) for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                          resource.getrusage(resource.RUSAGE_CHILDREN))]
    if spec["profile"]:
        profiler.enable()
    if spec["what"] == "baseline":
        # The same extractor and max_side as Index.build (BuildParams defaults + our options).
        from vladsearch.encoding.encoder import BuildParams, Encoder

        probe = Encoder(BuildParams(features=spec["features"], clusters=spec["clusters"], **spec["params"]),
                        weights=spec["weights"])
        extractor = probe.extractor()
        start = time.perf_counter()
        keypoints = failed = 0
        for item in extract_images(paths, extractor, probe.params.max_side, spec["workers"]):
            if item.features is None:
                failed += 1
            else:
                keypoints += len(item.features)
        result["wall"] = time.perf_counter() - start
        result.update(keypoints=keypoints, failed=failed, max_side=probe.params.max_side)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-build-save-") as scratch:
            # As `vladsearch build DIR --index X`: the build writes and commits the index itself.
            start = time.perf_counter()
            index = Index.build(spec["images_dir"], index=Path(scratch) / "index.vlad", features=spec["features"],
                                clusters=spec["clusters"], weights=spec["weights"], workers=spec["workers"],
                                progress=False, **spec["params"])
            build = time.perf_counter() - start
            save = 0.0
            result["wall"] = time.perf_counter() - start
            result.update(build=build, save=save, timings=dict(index.timings),
                          indexed=index.report.indexed, skipped=len(index.report.skipped),
                          no_keypoints=len(index.report.no_keypoints), max_side=index.params.max_side,
                          clusters=index.params.clusters, dim=index.backend.dim)
            del index
    if spec["profile"]:
        profiler.disable()
        profiler.dump_stats(spec["profile"])
    unit = 1 / 1024 if sys.platform != "darwin" else 1 / 1024 / 1024
    result["main_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
    result["worker_maxrss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit
    # CPU seconds (user + system): far less sensitive than wall time to other jobs on a shared machine.
    me, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_main_s"] = me.ru_utime + me.ru_stime - cpu_before[0]
    result["cpu_workers_s"] = workers.ru_utime + workers.ru_stime - cpu_before[1]
    result["decodes"] = _decode_counts(spec["decode_log"])
    return result


def _tree_memory_kib(pid: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) over the process tree, KiB."""
    rss = pss = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def run_measurement(spec: dict, scratch: Path, tag: str) -> dict:
    """Run one measurement in a fresh interpreter while sampling its process tree's memory."""
    spec = {**spec, "decode_log": str(scratch / f"{tag}.decodes")}
    Path(spec["decode_log"]).unlink(missing_ok=True)
    spec_path, out_path = scratch / f"{tag}.spec.json", scratch / f"{tag}.result.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path), str(out_path)]
    if spec.get("py_spy"):
        command = ["py-spy", "record", "--nonblocking", "--rate", "50", "--format", "raw", "-o", spec["py_spy"], "--", *command]
    process = subprocess.Popen(command)
    peak = {"rss": 0, "pss": 0}
    can_sample = Path("/proc/self/smaps_rollup").exists()

    def sample() -> None:
        while process.poll() is None:
            rss, pss = _tree_memory_kib(process.pid)
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    if can_sample:
        sampler.start()
    process.wait()
    if can_sample:
        sampler.join()
    if process.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"the {tag} measurement failed (exit status {process.returncode}); see its output above")
    result = json.loads(out_path.read_text())
    result["tree_rss_mib"], result["tree_pss_mib"] = peak["rss"] / 1024, peak["pss"] / 1024
    return result


# --- reporting --------------------------------------------------------------------------
def _code_version() -> str:
    """The vladsearch checkout being measured: commit, plus '+dirty' when vladsearch/ has edits."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "vladsearch"], cwd=root, capture_output=True,
                               text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("+dirty" if dirty else "")


def _default_clusters() -> int:
    from vladsearch import Index

    return int(inspect.signature(Index.build).parameters["clusters"].default)


def ratio_table(pairs: list[tuple[dict, dict]]) -> str:
    header = (f"{'run':>4s} {'baseline s':>10s} {'build s':>8s} {'save s':>7s} {'build+save':>10s} {'ratio':>6s}  "
              f"{'extract':>7s} {'codebook':>8s} {'encode':>7s} {'index':>6s} {'other':>6s}")
    lines = [header]
    for number, (base, build) in enumerate(pairs, 1):
        t = build["timings"]
        other = build["build"] - sum(t.get(s, 0.0) for s in STAGES)
        lines.append(f"{number:4d} {base['wall']:10.2f} {build['build']:8.2f} {build['save']:7.2f} {build['wall']:10.2f} "
                     f"{build['wall'] / base['wall']:6.3f}  {t.get('extract', 0):7.2f} {t.get('codebook', 0):8.2f} "
                     f"{t.get('encode', 0):7.2f} {t.get('index', 0):6.2f} {other:6.2f}")
    for number, (base, build) in enumerate(pairs, 1):
        if "cpu_main_s" in base and "cpu_main_s" in build:
            cpu_a = base["cpu_main_s"] + base["cpu_workers_s"]
            cpu_b = build["cpu_main_s"] + build["cpu_workers_s"]
            lines.append(f"{number:4d} CPU s (main + workers): baseline {base['cpu_main_s']:.1f} + "
                         f"{base['cpu_workers_s']:.1f} = {cpu_a:.1f}, build {build['cpu_main_s']:.1f} + "
                         f"{build['cpu_workers_s']:.1f} = {cpu_b:.1f}, CPU ratio {cpu_b / cpu_a:.3f}")
    ratios = [b["wall"] / a["wall"] for a, b in pairs]
    lines.append(f"ratio build+save / baseline: median {statistics.median(ratios):.3f} "
                 f"(min {min(ratios):.3f}, max {max(ratios):.3f}; acceptance ≤ 1.15)")
    lines.append("(extract = time the build spent waiting for extraction results, i.e. its wall minus the others;"
                 " other = build wall − Σ timings: setup, listing, pool start-up)")
    return "\n".join(lines)


def memory_line(label: str, result: dict) -> str:
    return (f"{label:22s} {result['images']:6d} {result['wall']:8.1f} {result['main_maxrss_mib']:9.0f} "
            f"{result['worker_maxrss_mib']:9.0f} {result['tree_rss_mib']:9.0f} {result['tree_pss_mib']:9.0f}")


def memory_header() -> str:
    return (f"{'measurement':22s} {'images':>6s} {'wall s':>8s} {'main MiB':>9s} {'worker MiB':>9s} "
            f"{'tree RSS':>9s} {'tree PSS':>9s}")


def decode_line(label: str, result: dict) -> str:
    d = result["decodes"]
    ok = d["decode_gray"] == result["images"] and d["max_loads_per_file"] == 1 and d["files_loaded"] == result["images"]
    return (f"{label:22s} images {result['images']}, decode_gray calls {d['decode_gray']}, cv2.imdecode calls "
            f"{d['imdecode']}, files loaded {d['files_loaded']}, loaded >1×: {d['files_loaded_more_than_once']}"
            f"  -> {'each image decoded once' if ok else 'NOT once per image'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images_dir", nargs="?", type=Path, help="folder of images")
    parser.add_argument("--generate", type=int, metavar="N", help="use N synthetic photo-like 640×480 JPEGs")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vladsearch-bench-build",
                        help="where --generate keeps its images between runs")
    parser.add_argument("--clusters", type=int, default=None,
                        help="k-means clusters (default 16; 'default' is not accepted, see --default-clusters)")
    parser.add_argument("--default-clusters", action="store_true",
                        help="use Index.build's own default number of clusters instead of --clusters")
    parser.add_argument("--features", default="sift")
    parser.add_argument("--weights", help="weights file for learned features")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--max-side", type=int, default=None, help="pass max_side to the build (default: the build's)")
    parser.add_argument("--floor", action="store_true",
                        help="compare with the independent floor (build_floor.py: Pool of cv2.imread + default "
                             "SIFT, no vladsearch code) instead of extract_images; implies Index.build's default "
                             "clusters unless --clusters is given")
    parser.add_argument("--repeat", type=int, default=1, help="baseline/build pairs to run (alternating)")
    parser.add_argument("--memory-sweep", action="store_true", help="peak memory of Index.build per collection size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 5000], help="sizes for --memory-sweep")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the build's main process here (.prof)")
    parser.add_argument("--py-spy", type=Path, help="record the build's main process with py-spy (raw stacks) here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec_path, out_path = args.child
        out_path.write_text(json.dumps(_measure(json.loads(spec_path.read_text()))))
        return 0
    if args.images_dir is not None and args.generate is not None:
        parser.error("give IMAGES_DIR or --generate N, not both")
    if args.images_dir is None and args.generate is None and not args.memory_sweep:
        parser.error("give IMAGES_DIR or --generate N (or --memory-sweep)")
    ratio = args.images_dir is not None or args.generate is not None

    if args.clusters is None:
        args.clusters = _default_clusters() if args.floor else 16
    clusters = _default_clusters() if args.default_clusters else args.clusters
    params = {} if args.max_side is None else {"max_side": args.max_side}
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    base_spec = {"features": args.features, "clusters": clusters, "weights": args.weights, "workers": args.workers,
                 "params": params, "profile": None}
    scratch = Path(tempfile.mkdtemp(prefix="bench-build-"))
    out: dict = {"features": args.features, "clusters": clusters, "cpus": cpus, "workers": args.workers or cpus,
                 "python": platform.python_version(), "code": _code_version()}
    try:
        print(f"features {args.features}, k={clusters}, {cpus} CPUs, workers={args.workers or cpus}, "
              f"load average {os.getloadavg()[0]:.2f}; vladsearch {out['code']}", flush=True)
        if ratio:
            folder = args.images_dir or ensure_images(args.cache, args.generate, args.seed)
            if folder.is_dir():
                warm_page_cache(folder)
            spec = {**base_spec, "images_dir": str(folder)}
            pairs = []
            for number in range(args.repeat):
                reference = "floor" if args.floor else "baseline"
                base = run_measurement({**spec, "what": reference}, scratch, f"{reference}{number}")
                last = number == args.repeat - 1
                build = run_measurement({**spec, "what": "build",
                                         "profile": str(args.profile) if args.profile and last else None,
                                         "py_spy": str(args.py_spy) if args.py_spy and last else None},
                                        scratch, f"build{number}")
                pairs.append((base, build))
                print(f"  pair {number + 1}: {reference} {base['wall']:.2f} s, build+save {build['wall']:.2f} s, "
                      f"ratio {build['wall'] / base['wall']:.3f} (load average {os.getloadavg()[0]:.2f})", flush=True)
            if args.floor:
                print(f"floor = build_floor.floor: Pool({base['processes']}) of cv2.imread(GRAYSCALE) + "
                      f"cv2.SIFT_create().detectAndCompute, cv2 threads {base['cv2_threads']} per worker; "
                      "the 'baseline' columns below are the floor")
            print(f"\n{base['images']} images in {folder} (max_side {build['max_side']}, "
                  f"{base['keypoints'] / max(base['images'], 1):.0f} keypoints/image, {base['failed']} failed)")
            print(ratio_table(pairs))
            print("\ndecoding:")
            if not args.floor:
                print(decode_line("baseline", pairs[-1][0]))
            print(decode_line("build", pairs[-1][1]))
            print("\npeak memory (MiB):")
            print(memory_header())
            for number, (base, build) in enumerate(pairs, 1):
                print(memory_line(f"baseline {number}", base))
                print(memory_line(f"build+save {number}", build))
            out["ratio"] = {"images_dir": str(folder), "pairs": [{"baseline": a, "build": b} for a, b in pairs],
                            "ratio_median": statistics.median(b["wall"] / a["wall"] for a, b in pairs)}
        if args.memory_sweep:
            print("\nmemory sweep: Index.build + save per collection size (peak MiB)", flush=True)
            sweep = []
            for count in sorted(args.sizes):
                folder = ensure_images(args.cache, count, args.seed)
                warm_page_cache(folder)
                result = run_measurement({**base_spec, "images_dir": str(folder), "what": "build"}, scratch,
                                         f"sweep{count}")
                sweep.append(result)
                print(f"  {count} images: {result['wall']:.1f} s, tree PSS {result['tree_pss_mib']:.0f} MiB, "
                      f"main {result['main_maxrss_mib']:.0f} MiB", flush=True)
            print(memory_header())
            for result in sweep:
                print(memory_line(f"build+save n={result['images']}", result))
            first, last = sweep[0], sweep[-1]
            growth = {key: last[key] - first[key] for key in ("main_maxrss_mib", "tree_rss_mib", "tree_pss_mib")}
            print(f"growth from {first['images']} to {last['images']} images: main {growth['main_maxrss_mib']:+.0f} MiB, "
                  f"tree RSS {growth['tree_rss_mib']:+.0f} MiB, tree PSS {growth['tree_pss_mib']:+.0f} MiB")
            for result in sweep:
                print(decode_line(f"n={result['images']}", result))
            out["memory_sweep"] = sweep
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
