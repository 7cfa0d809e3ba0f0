"""Answers, not scores: recall@1 of the default (verified) search, strangers confirmed, and its cost.

    python benchmarks/answers.py prepare /tmp/answers            # writes the dev sets (from ../shared)
    python benchmarks/answers.py run /tmp/answers --json a.json  # builds + searches each, CLI end to end
    python benchmarks/answers.py calibrate a.json                # precision by verdict and inliers

Four dev sets in the vladsearch layout (images/, queries/, gt.json), each built and searched with
**no flags** through the CLI, as a user would:

    copy       edited copies (rescale, crop, rotate, overlay, mirror+crop, exact) of photographs
               (scikit-image, oxford_affine_subset, homogr_pairs), make_copy_benchmark.py, 240 queries
    wide       homogr_pairs: each image queries the other of its wide-baseline pair (32 queries)
    sequences  oxford_affine_subset: each frame queries the 5 others of its sequence (24 queries)
    landmark   rotated (90/180/270° or 5-30°) and 30-60 % downscaled copies of the oxford and homogr
               frames, among all the other views of the same scenes: the source must come first
plus `strangers`: 20 photographs held out of every set's collection (4 scikit-image photos, the
graf and boat sequences, two homogr pairs) — searched against the copy set's index, none may be
confirmed.

For each set: `vladsearch build IMAGES --index X`, then `vladsearch search X QUERIES --json` with
no flags (verified, the default) and with `--rerank 0` (today's unverified list), timed end to end,
each twice, alternating; R@1 counts a query right when its first match is a positive (an empty
answer, "not in the collection", counts wrong). The verified run adds `--unverified --top 40` so
that every verified candidate's inliers and verdict are recorded for `calibrate`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SHARED = HERE.parent.parent / "shared" / "data"

STRANGER_SKIMAGE = ("grass", "gravel", "logo", "text")
STRANGER_SEQUENCES = ("graf", "boat")
STRANGER_PAIRS = ("Boston", "WhiteBoard")
SETS = ("copy", "wide", "sequences", "landmark")


def _is_stranger(name: str) -> bool:
    stem = Path(name).stem
    return (stem in STRANGER_SKIMAGE or any(stem.startswith(s + "_img") for s in STRANGER_SEQUENCES)
            or any(stem in (p + "A", p + "B") for p in STRANGER_PAIRS))


def _scene(name: str) -> str:
    """The scene an image shows: an oxford sequence, a homogr pair, or the photograph itself."""
    stem = Path(name).stem
    if "_img" in stem:
        return stem.split("_img")[0]
    if stem[-1:] in ("A", "B") and len(stem) > 1:
        return stem[:-1].rstrip("0123456789")  # homogr's LePoint1-3 show one magazine cover
    return stem


def prepare(out: Path, queries: int, seed: int) -> None:
    from make_copy_benchmark import make_copy_benchmark
    from quality_table import write_copy_photos

    if out.exists():
        raise SystemExit(f"{out} exists; choose a new folder")
    photos = out / "_photos"
    write_copy_photos(SHARED, photos)
    strangers = out / "strangers"
    strangers.mkdir(parents=True)
    for path in sorted(p for p in photos.rglob("*") if p.is_file()):
        if _is_stranger(path.name):
            shutil.move(str(path), strangers / path.name)
    make_copy_benchmark(photos, out / "copy", queries=queries, seed=seed)
    shutil.rmtree(photos)
    for name, dataset in (("wide", "homogr_pairs"), ("sequences", "oxford_affine_subset")):
        _copy_dataset(SHARED / dataset, out / name)
    _landmark(out / "landmark", np.random.default_rng(seed))
    print(f"wrote {', '.join(SETS)} and strangers/ under {out}")


def _copy_dataset(source: Path, target: Path) -> None:
    """A shared dataset without the held-out strangers (converted to PNG where it is PPM/PGM)."""
    gt = json.loads((source / "gt.json").read_text())["queries"]
    (target / "images").mkdir(parents=True)
    (target / "queries").mkdir()
    names = {}
    for path in sorted((source / "images").iterdir()):
        if _is_stranger(path.name):
            continue
        name = path.stem + ".png" if path.suffix.lower() in (".ppm", ".pgm") else path.name
        cv2.imwrite(str(target / "images" / name), cv2.imread(str(path), cv2.IMREAD_UNCHANGED)) \
            if name != path.name else shutil.copyfile(path, target / "images" / name)
        names[path.name] = name
    out = {}
    for query, entry in gt.items():
        if _is_stranger(query) or query not in names:
            continue
        shutil.copyfile(target / "images" / names[query], target / "queries" / names[query])
        out[names[query]] = {"positives": [names[p] for p in entry["positives"] if p in names],
                             "ignore": [names[p] for p in entry.get("ignore", []) if p in names]}
    (target / "gt.json").write_text(json.dumps({"queries": out}, indent=1))


def _landmark(target: Path, rng: np.random.Generator) -> None:
    """Rotated and downscaled copies of every view, among the other views of the same scenes."""
    images = target / "images"
    images.mkdir(parents=True)
    (target / "queries").mkdir()
    for dataset in ("oxford_affine_subset", "homogr_pairs"):
        for path in sorted((SHARED / dataset / "images").iterdir()):
            if not _is_stranger(path.name) and not (images / (path.stem + ".png")).exists():
                cv2.imwrite(str(images / (path.stem + ".png")), cv2.imread(str(path), cv2.IMREAD_COLOR))
    gt = {}
    for path in sorted(images.iterdir()):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if rng.random() < 0.5:
            angle = int(rng.choice([90, 180, 270]))
            image = cv2.rotate(image, {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180,
                                       270: cv2.ROTATE_90_CLOCKWISE}[angle])
        else:
            angle = float(rng.uniform(5, 30) * rng.choice([-1, 1]))
            h, w = image.shape[:2]
            matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
            size = (int(h * sin + w * cos), int(h * cos + w * sin))
            matrix[:, 2] += (size[0] - w) / 2, (size[1] - h) / 2
            image = cv2.warpAffine(image, matrix, size)
        scale = float(rng.uniform(0.3, 0.6))
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        name = f"rotdown_{path.stem}.jpg"
        cv2.imwrite(str(target / "queries" / name), image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        gt[name] = {"positives": [path.name], "ignore": []}
    (target / "gt.json").write_text(json.dumps({"queries": gt}, indent=1))


# --- running ------------------------------------------------------------------------------
def _cli(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vladsearch.cli", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"vladsearch {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def _recall_at_1(answers: list[dict], gt: dict) -> tuple[float, list[str]]:
    right, wrong = 0, []
    for answer in answers:
        name = Path(answer["query"]).name
        entry = gt[name]
        ranked = [m["image"] for m in answer["matches"] if m.get("verified", True)
                  and m["image"] not in entry.get("ignore", [])]
        if ranked and ranked[0] in entry["positives"]:
            right += 1
        else:
            wrong.append(f"{name} -> {ranked[0] if ranked else answer.get('answer')}")
    return right / max(len(answers), 1), wrong


def run(root: Path, repeat: int, build_args: list[str], search_args: list[str],
        sets: tuple[str, ...] = SETS) -> dict:
    report: dict = {"sets": {}, "build_args": build_args, "search_args": search_args}
    for name in sets:
        folder = root / name
        gt = json.loads((folder / "gt.json").read_text())["queries"]
        index = root / f"{name}.vlad"
        if index.exists():
            shutil.rmtree(index)
        build_seconds, _ = _cli("build", str(folder / "images"), "--index", str(index), "--quiet", *build_args)
        times = {"verified": [], "unverified": []}
        outputs = {}
        for _ in range(repeat):  # alternate, so that a busier moment does not favour one side
            for kind, extra in (("unverified", ["--rerank", "0"]), ("verified", ["--unverified", "--top", "40"])):
                seconds, out = _cli("search", str(index), str(folder / "queries"), "--json", "--quiet",
                                    *search_args, *extra)
                times[kind].append(seconds)
                outputs[kind] = json.loads(out)
        entry = {"queries": len(gt), "images": len(list((folder / "images").rglob("*.*"))),
                 "build_s": round(build_seconds, 2),
                 "search_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
                 "ratio": round(min(times["verified"]) / min(times["unverified"]), 3)}
        for kind in ("unverified", "verified"):
            entry[f"R@1_{kind}"], entry[f"misses_{kind}"] = _recall_at_1(outputs[kind], gt)
        entry["candidates"] = [
            {"query": Path(a["query"]).name, "image": m["image"], "verdict": m["verdict"], "inliers": m["inliers"],
             "confidence": m["confidence"],
             "correct": m["image"] in gt[Path(a["query"]).name]["positives"]
             or _scene(m["image"]) == _scene(gt[Path(a["query"]).name]["positives"][0])}
            for a in outputs["verified"] for m in a["matches"] if m.get("inliers") is not None]
        report["sets"][name] = entry
        print(f"{name}: R@1 verified {entry['R@1_verified']:.3f}, unverified {entry['R@1_unverified']:.3f}; "
              f"search {min(times['verified']):.1f} s vs {min(times['unverified']):.1f} s "
              f"(ratio {entry['ratio']:.2f}); misses: {entry['misses_verified'][:6]}", flush=True)
        if name == "copy":
            _, out = _cli("search", str(index), str(root / "strangers"), "--json", "--quiet", *search_args)
            answers = json.loads(out)
            confirmed = [(Path(a["query"]).name, a["matches"][0]["image"], a["matches"][0]["verdict"])
                         for a in answers if a.get("answer") not in (None, "not in the collection")]
            report["strangers"] = {"queries": len(answers), "confirmed": confirmed}
            print(f"strangers: {len(confirmed)} of {len(answers)} confirmed {confirmed}", flush=True)
    return report


def calibrate(reports: list[dict], root: Path | None = None) -> None:
    """Precision of confirmed candidates by verdict and inlier bin, with the 95 % Wilson lower bound.

    root: the folder of `prepare`, to label the candidates again with today's `_scene`."""
    bins = (15, 20, 30, 60, 120, 10**9)
    if root is not None:
        for report in reports:
            for name, entry in report["sets"].items():
                gt = json.loads((root / name / "gt.json").read_text())["queries"]
                for c in entry["candidates"]:
                    positives = gt[c["query"]]["positives"]
                    c["correct"] = c["image"] in positives or _scene(c["image"]) == _scene(positives[0])
    rows = [c for r in reports for s in r["sets"].values() for c in s["candidates"]]
    print(f"{len(rows)} verified candidates; unconfirmed inliers of wrong candidates: max "
          f"{max([c['inliers'] for c in rows if not c['correct']] or [0])}")
    print("| verdict | inliers | pairs | correct | precision | 95 % lower bound |\n|---|---|---|---|---|---|")
    for verdict in ("identical", "copy", "same scene"):
        for low, high in zip(bins, bins[1:]):
            chosen = [c for c in rows if c["verdict"] == verdict and (verdict == "identical" or low <= c["inliers"] < high)]
            if verdict == "identical" and low != bins[0]:
                break
            if not chosen:
                continue
            n, k = len(chosen), sum(c["correct"] for c in chosen)
            span = "any" if verdict == "identical" else f"{low}-{high - 1}" if high < 10**9 else f"≥ {low}"
            print(f"| {verdict} | {span} | {n} | {k} | {k / n:.3f} | {_wilson_lower(k, n):.3f} |")
    wrong = [c for c in rows if c["verdict"] and not c["correct"]]
    print(f"confirmed but wrong: {wrong[:10]}")


def _wilson_lower(k: int, n: int, z: float = 1.96) -> float:
    if n == 0:
        return 0.0
    p = k / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - margin) / (1 + z * z / n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("out", type=Path)
    p.add_argument("--queries", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("root", type=Path)
    r.add_argument("--repeat", type=int, default=2)
    r.add_argument("--json", type=Path)
    r.add_argument("--build-args", default="", help="extra build flags, e.g. '--feature-codes none'")
    r.add_argument("--search-args", default="", help="extra search flags for both runs")
    r.add_argument("--sets", nargs="+", default=list(SETS),
                   help="folders of ROOT to run (any set in the vladsearch layout, e.g. one of "
                        "places_devset.py's); strangers are searched against 'copy'")
    c = sub.add_parser("calibrate")
    c.add_argument("reports", type=Path, nargs="+")
    c.add_argument("--root", type=Path, help="the folder of `prepare`: label the candidates again")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out, args.queries, args.seed)
    elif args.command == "run":
        report = run(args.root, args.repeat, args.build_args.split(), args.search_args.split(), tuple(args.sets))
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
    else:
        calibrate([json.loads(p.read_text()) for p in args.reports], args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
