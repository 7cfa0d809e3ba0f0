"""The live index's numbers: what a commit costs, how segments search, readers during commits.

    python benchmarks/live_index.py [--images 3000] [--large 100000] [--json OUT]

Every figure is measured in this run on this machine:

  one-image add   a default SIFT index (K=64, 8,192-d) of --images generated 320×240 photos;
                  `vladsearch add INDEX one.jpg` runs in its own process, which reports the
                  bytes it wrote (/proc/self/io: wchar = bytes passed to write(), write_bytes
                  = bytes sent to storage) against the index's size on disk
  add 100         `vladsearch add INDEX 100 new photos` (process time, median of 3, each on a
                  fresh copy) on an index of 1,000 and one of --large images. The large
                  index's vectors are synthetic: the 1,000 real VLADs of the small index,
                  each repeated with Gaussian noise (σ = 0.02 per coordinate) and
                  re-normalised, committed as segments through the same writer API an add
                  uses, with one image row each ("synthetic/NNNNNNN.jpg")
  segments        search time of 200 real query vectors against 20 uncommitted-merge
                  segments vs. the same vectors after `compact` (one segment), and the time
                  to open each (Index.open + first search)
  readers         2 reader processes loop on Index.open + search while 24 back-to-back
                  commits run (adds of five 640×480 photos, removes, one compact): failures counted
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "tests"))

from live_helpers import make_images

from vladsearch import Index
from vladsearch.store import catalog, segments, writer

ENV = {**os.environ, "PYTHONPATH": str(PROJECT)}

MEASURED_CLI = textwrap.dedent("""
    import sys, time
    from vladsearch.cli import main
    start = time.perf_counter()
    code = main(sys.argv[1:])
    seconds = time.perf_counter() - start
    io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    print("MEASURED", code, seconds, io["wchar"], io["write_bytes"], file=sys.stderr)
""")


def measured_cli(*args: str) -> dict:
    """Run `vladsearch ARGS` in a process; its exit code, seconds (in-process) and bytes written."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURED_CLI, *args], capture_output=True, text=True, env=ENV,
                          check=False)
    wall = time.perf_counter() - start
    line = [ln for ln in done.stderr.splitlines() if ln.startswith("MEASURED")]
    if done.returncode != 0 or not line:
        raise RuntimeError(f"vladsearch {' '.join(args)} failed:\n{done.stderr}")
    _, code, seconds, wchar, write_bytes = line[-1].split()
    return {"code": int(code), "seconds": float(seconds), "wall": wall, "wchar": int(wchar),
            "write_bytes": int(write_bytes)}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def one_image_add(work: Path, images: int) -> dict:
    photos = work / "photos"
    make_images(photos, images, seed=100)
    index = work / "index.vlad"
    subprocess.run([sys.executable, "-m", "vladsearch.cli", "build", str(photos), "--index", str(index), "-q"],
                   check=True, env=ENV)
    one = make_images(work / "one", 1, seed=101)[0]
    size = du(index)
    added = measured_cli("add", str(index), str(one), "-q")
    again = measured_cli("add", str(index), str(one), "-q")  # nothing new
    return {"index_bytes": size, "add_one": added, "add_nothing": again,
            "written_fraction": added["wchar"] / size, "written_fraction_nothing": again["wchar"] / size}


def inject_synthetic(index_dir: Path, total: int, seed: int = 0) -> None:
    """Grow an index to `total` vectors with noisy copies of its real ones (module docstring)."""
    index = Index.open(index_dir)
    real = index.vectors_of(list(index.snapshot.loaded_ids))
    rng = np.random.default_rng(seed)
    missing = total - len(real)
    per_segment = writer.SEGMENT_VECTORS
    with segments.Staging(index_dir) as staging:
        staged, rows = [], []
        for start in range(0, missing, per_segment):
            count = min(per_segment, missing - start)
            seg = staging.new_segment(index.encoder.dim)
            for chunk in range(0, count, 4096):
                n = min(4096, count - chunk)
                base = real[rng.integers(0, len(real), n)]
                noisy = base + rng.normal(0, 0.02, base.shape).astype(np.float32)
                noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
                first = seg.append(noisy)
                number = len(real) + start + chunk  # names never repeat across calls
                rows += [{"path": f"synthetic/{number + k:07d}.jpg", "status": catalog.STATUS_INDEXED,
                          "file_size": 1, "mtime": 0.0, "sha1": f"{number + k:040d}", "width": 320,
                          "height": 240, "keypoints": 100, "segment": seg.name, "row": first + k}
                         for k in range(n)]
            staged.append(seg.finish())
        writer.commit(index_dir, staged, rows, writer.Report(), "synthetic", index.meta["build_id"])


def add_hundred(work: Path, large: int, repeats: int = 3) -> dict:
    photos = work / "photos1k"
    make_images(photos, 1000, seed=200)
    small = work / "small.vlad"
    subprocess.run([sys.executable, "-m", "vladsearch.cli", "build", str(photos), "--index", str(small), "-q"],
                   check=True, env=ENV)
    big = work / "large.vlad"
    shutil.copytree(small, big)
    inject_synthetic(big, large)
    new = make_images(work / "new100", 100, seed=201)[0].parent
    out = {}
    for name, source in (("1k", small), (f"{large // 1000}k", big)):
        times = []
        for _ in range(repeats):
            copy = work / f"copy-{name}.vlad"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(source, copy)
            result = measured_cli("add", str(copy), str(new), "-q")
            times.append(result["wall"])
            shutil.rmtree(copy)
        out[name] = {"vectors": Index.open(source).info()["counts"]["vectors"], "median_s": statistics.median(times),
                     "runs_s": times}
    names = list(out)
    out["ratio"] = out[names[1]]["median_s"] / out[names[0]]["median_s"]
    return out


def segments_search(work: Path, count: int = 20) -> dict:
    photos = work / "photos1k"
    index_dir = work / "segmented.vlad"
    subprocess.run([sys.executable, "-m", "vladsearch.cli", "build", str(photos), "--index", str(index_dir), "-q",
                    "--clusters", "64"], check=True, env=ENV)
    base = Index.open(index_dir)
    real = base.vectors_of(list(base.snapshot.loaded_ids))
    for part in range(count - 1):  # 19 more segments of 1,000 noisy vectors each (the first: 1,000 real)
        before = writer.SEGMENT_VECTORS
        writer.SEGMENT_VECTORS = 1000
        try:
            inject_synthetic(index_dir, 1000 * (part + 2), seed=part + 1)
        finally:
            writer.SEGMENT_VECTORS = before
    xq = real[:200] + np.random.default_rng(9).normal(0, 0.01, real[:200].shape).astype(np.float32)

    def timed() -> dict:
        start = time.perf_counter()
        index = Index.open(index_dir)
        index.search_vectors(xq[:1], 10)
        opened = time.perf_counter() - start
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            _D, I = index.search_vectors(xq, 10)
            runs.append(time.perf_counter() - start)
        return {"segments": index.info()["counts"]["segments"], "open_s": opened,
                "search_200_ms": 1000 * min(runs), "ids": I}

    before = timed()
    Index.open(index_dir).compact()
    after = timed()
    same = bool(np.array_equal(before.pop("ids"), after.pop("ids")))
    return {"uncompacted": before, "compacted": after, "search_ratio": before["search_200_ms"] / after["search_200_ms"],
            "same_results": same}


READER = textwrap.dedent("""
    import sys, traceback
    from pathlib import Path
    from vladsearch import Index
    index_dir, query, stop = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    ok = failures = 0
    while not stop.exists():
        try:
            result = Index.open(index_dir).search([query], top=1, workers=1)[0]
            assert result.matches[0].image == Path(query).name
            ok += 1
        except Exception:
            failures += 1
            traceback.print_exc()
    print(ok, failures)
""")


def readers_during_commits(work: Path) -> dict:
    photos = work / "photos1k"
    index_dir = work / "readers.vlad"
    subprocess.run([sys.executable, "-m", "vladsearch.cli", "build", str(photos), "--index", str(index_dir), "-q"],
                   check=True, env=ENV)
    extra = make_images(work / "extra24", 24 * 5, seed=300, size=(640, 480))  # 5 per commit: longer commits
    stop = work / "stop"
    query = min(photos.glob("*.jpg"))
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(index_dir), str(query), str(stop)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    index = Index.open(index_dir)
    start = time.perf_counter()
    for number in range(24):
        index.add(extra[5 * number:5 * number + 5], progress=False, workers=1)
        if number % 3 == 2:
            index.remove([extra[5 * number - 1]])
        if number == 12:
            index.compact()
    seconds = time.perf_counter() - start
    stop.touch()
    counts = [tuple(map(int, r.communicate()[0].split())) for r in readers]
    return {"commits": 24 + 8 + 1, "seconds": seconds, "reader_searches": sum(c[0] for c in counts),
            "reader_failures": sum(c[1] for c in counts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--only", choices=["add_one", "add_100", "segments", "readers"], action="append")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    only = set(args.only or ["add_one", "add_100", "segments", "readers"])
    results = {}
    with tempfile.TemporaryDirectory(prefix="vladsearch-live-") as tmp:
        work = Path(tmp)
        if "add_one" in only:
            r = results["add_one"] = one_image_add(work / "one", args.images)
            print(f"one-image add to {args.images} images ({r['index_bytes'] / 2**20:.1f} MiB): wrote "
                  f"{r['add_one']['wchar'] / 2**10:.0f} KiB = {100 * r['written_fraction']:.2f} % of the index "
                  f"(write_bytes {r['add_one']['write_bytes'] / 2**10:.0f} KiB); add of nothing new: "
                  f"{r['add_nothing']['wchar'] / 2**10:.0f} KiB ({100 * r['written_fraction_nothing']:.3f} %)")
        if only & {"add_100", "segments", "readers"}:
            if "add_100" in only:
                r = results["add_100"] = add_hundred(work, args.large)
                names = [k for k in r if k != "ratio"]
                print(f"add 100 images: {names[0]} {r[names[0]]['median_s']:.2f} s, {names[1]} "
                      f"({r[names[1]]['vectors']} vectors) {r[names[1]]['median_s']:.2f} s; ratio {r['ratio']:.2f}")
            else:
                make_images(work / "photos1k", 1000, seed=200)
            if "segments" in only:
                r = results["segments"] = segments_search(work)
                u, c = r["uncompacted"], r["compacted"]
                print(f"search 200 queries: {u['segments']} segments {u['search_200_ms']:.1f} ms, {c['segments']} "
                      f"segment {c['search_200_ms']:.1f} ms (ratio {r['search_ratio']:.2f}, same results "
                      f"{r['same_results']}); open {u['open_s']:.2f} s vs {c['open_s']:.2f} s")
            if "readers" in only:
                r = results["readers"] = readers_during_commits(work)
                print(f"readers during {r['commits']} back-to-back commits ({r['seconds']:.1f} s): "
                      f"{r['reader_searches']} searches, {r['reader_failures']} failures")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
