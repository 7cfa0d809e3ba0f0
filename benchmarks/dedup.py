"""De-duplication and pairs benchmark: `vladsearch duplicates` and `pairs` against ground truth.

    python benchmarks/dedup.py copies   /tmp/dd/copies   [--variants 99] [--others imagededup,pimmi]
    python benchmarks/dedup.py distinct /tmp/dd/distinct [--others imagededup,pimmi]
    python benchmarks/dedup.py timing   /tmp/dd100k      [--images 100000] [--preset large] [--knn index]
    python benchmarks/dedup.py pairs    /tmp/dd/pairs    [--top 5] [--dataset all] [--pairs-args "--shortlist 0"]
    python benchmarks/dedup.py grouping /tmp/dd          (after copies and distinct: F1 by grouping rule)

copies:   16 photographs (12 scikit-image photos, 4 homogr_pairs "A" views) × `--variants`
          edited copies each: crops (50-80 % of the area), 90/180/270° rotations, rescales
          (30-60 %, JPEG 15-40), colour changes (hue, brightness, grey), exact copies, and
          crop+rescale. Truth: a photograph and its copies form one group.
distinct: every photograph of scikit-image, ../shared oxford_affine_subset (6 frames of 4
          scenes) and homogr_pairs (2 views of 16 scenes), each with 5 edited copies
          (rescaled, cropped, rotated 90°, captioned with one of 8 shared captions + colour
          shift, mirrored and cropped). Truth: each photograph with its own copies; other
          frames/views of the same scene are other groups ("strict"). Also scored with the
          Oxford sequences whose frames differ only by blur (bikes), exposure (leuven) or
          zoom-rotation (boat) merged ("same-viewpoint" truth; see docs/DUPLICATES.md), and
          without those three sequences at all ("no-tripod": 306 images).
Scores: pairwise precision, recall, F1 of the predicted groups (every pair of images in one
group) against the truth's pairs. imagededup (PHash, DHash at their defaults; groups =
connected components of its duplicate lists) runs in /work/imagededup-venv and PIMMI
(`pimmi fill`, `query`, `clusters` at its defaults) in /work/pimmi-venv and fastdup (its
defaults, connected components) in /work/fastdup-venv, on the same folder (`--others`).
timing:   N synthetic images (tests' textured shapes, 320×240, folders of 10,000) + 5 % edited
          copies, indexed with the feature cache; `duplicates` wall time, its stages, groups
          found with a planted copy, keypoints per image; extrapolated to 1M. `--preset large`
          builds the index with compact codes; `--knn` picks how `duplicates` finds neighbours.
pairs:    `pairs --top K` on homogr_pairs (partner: the other view), oxford_affine_subset
          (the scene's 5 other frames) or corridor (frames within ±2); partner rate = images
          with a partner among their pairs, partner recall = partners found / min(K, partners).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
for extra in (REPO, REPO / "benchmarks", REPO / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import make_copy_benchmark as mcb

SHARED = REPO.parent / "shared" / "data"
CAPTIONS = mcb.CAPTIONS
COPY_PHOTOS = ["astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "hubble_deep_field",
               "immunohistochemistry", "moon", "retina", "brick", "gravel"]
SAME_VIEWPOINT = ("bikes", "leuven", "boat")


def skimage_photo(name: str) -> np.ndarray:
    from conftest import photo

    image = photo(name)
    return image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)


def _jpeg(path: Path, image: np.ndarray, quality: int = 90) -> str:
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return path.name


def recolour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.3:
        return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(10, 60))) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(0.7, 1.3), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)


def rotate90(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.rotate(image, [cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE][rng.integers(3)])


def write_variant(folder: Path, stem: str, image: np.ndarray, family: str, rng: np.random.Generator) -> str:
    if family == "rescale":
        edited, params = mcb.rescale(image, rng)
        return _jpeg(folder / f"{stem}.jpg", edited, params["quality"])
    if family == "croprescale":
        edited, params = mcb.rescale(mcb.crop(image, rng)[0], rng)
        return _jpeg(folder / f"{stem}.jpg", edited, params["quality"] + 30)
    edit = {"crop": lambda im: mcb.crop(im, rng)[0], "rotate90": lambda im: rotate90(im, rng),
            "colour": lambda im: recolour(im, rng), "caption": lambda im: mcb.overlay(im, rng)[0],
            "mirror": lambda im: mcb.flipcrop(im, rng)[0]}[family]
    return _jpeg(folder / f"{stem}.jpg", edit(image))


def make_copies(out: Path, variants: int, seed: int = 0) -> dict[str, str]:
    """The copies collection; returns {file name: truth group}."""
    rng = np.random.default_rng(seed)
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    sources = {n: skimage_photo(n) for n in COPY_PHOTOS}
    for path in sorted((SHARED / "homogr_pairs" / "images").glob("*A.*"))[:4]:
        sources[path.stem] = cv2.imread(str(path))
    families = ["crop", "rotate90", "rescale", "colour", "exact", "croprescale"]
    truth = {}
    for name, image in sources.items():
        original = _jpeg(folder / f"{name}.jpg", image, 95)
        truth[original] = name
        for v in range(variants):
            family = families[v % len(families)]
            stem = f"{name}__{family}_{v:03d}"
            if family == "exact":
                target = folder / f"{stem}.jpg"
                target.write_bytes((folder / original).read_bytes())
                truth[target.name] = name
            else:
                truth[write_variant(folder, stem, image, family, rng)] = name
    return truth


def make_distinct(out: Path, seed: int = 0) -> dict[str, str]:
    """The distinct-photographs collection; returns {file name: truth group (the photograph)}."""
    from conftest import PHOTO_NAMES

    rng = np.random.default_rng(seed)
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    sources = {n: skimage_photo(n) for n in PHOTO_NAMES}
    for dataset in ("oxford_affine_subset", "homogr_pairs"):
        for path in sorted((SHARED / dataset / "images").iterdir()):
            sources[path.stem] = cv2.imread(str(path))
    same = same_photograph(sources)
    truth = {}
    for name, image in sources.items():
        truth[_jpeg(folder / f"{name}.jpg", image, 95)] = same.get(name, name)
        for family in ("rescale", "crop", "rotate90", "caption", "mirror"):
            truth[write_variant(folder, f"{name}__{family}", image, family, rng)] = same.get(name, name)
    return truth


def same_photograph(sources: dict[str, np.ndarray]) -> dict[str, str]:
    """Sources that are one photograph stored twice (homogr_pairs reuses Oxford's graf and boat
    frames, and LePoint2A is LePoint3A): name -> the first name, when the pixels differ by < 2 grey levels."""
    grey = {n: cv2.cvtColor(im, cv2.COLOR_BGR2GRAY).astype(np.int16) for n, im in sources.items()}
    names, alias = list(grey), {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if b not in alias and grey[a].shape == grey[b].shape and np.abs(grey[a] - grey[b]).mean() < 2:
                alias[b] = alias.get(a, a)
    return alias


# --- scoring --------------------------------------------------------------------------------
def group_pairs(groups: list[list[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}


def pairwise_scores(predicted: list[list[str]], truth: dict[str, str]) -> dict[str, float]:
    """Pairwise precision, recall, F1 of predicted groups; images the truth leaves out are ignored."""
    predicted = [[name for name in group if name in truth] for group in predicted]
    by_group = defaultdict(list)
    for name, group in truth.items():
        by_group[group].append(name)
    true, found = group_pairs(list(by_group.values())), group_pairs(predicted)
    hit = len(true & found)
    precision = hit / len(found) if found else 1.0
    recall = hit / len(true) if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "predicted_pairs": len(found), "true_pairs": len(true)}


def without_tripod_sequences(truth: dict[str, str]) -> dict[str, str]:
    """The truth without the Oxford bikes/leuven/boat frames and their copies (homogr's boatA/B
    are boat frames): distinct photographs, other viewpoints, and copies only."""
    return {name: group for name, group in truth.items() if not group.startswith(SAME_VIEWPOINT)}


def same_viewpoint_truth(truth: dict[str, str]) -> dict[str, str]:
    return {name: group.split("_img")[0] if group.split("_img")[0] in SAME_VIEWPOINT else group
            for name, group in truth.items()}


# --- the systems ---------------------------------------------------------------------------------
def run_vladsearch(folder: Path, work: Path, grouping: str = "keep", workers: int = 2,
                   extra: tuple[str, ...] = (), save: Path | None = None,
                   build_extra: tuple[str, ...] = ()) -> tuple[list[list[str]], dict]:
    index = work / "index.vlad"
    if not index.exists():
        _cli("build", str(folder), "--index", str(index), "--keep-features", "--quiet", "--workers", str(workers),
             *build_extra)
    start = time.perf_counter()
    out = _cli("duplicates", str(index), "--json", "--quiet", "--grouping", grouping, "--workers", str(workers), *extra)
    seconds = time.perf_counter() - start
    if save is not None:
        save.write_text(out)
    data = json.loads(out)
    return [g["images"] for g in data["groups"]], {"seconds": round(seconds, 1), **{k: data[k] for k in
                                                                                  ("candidate_pairs", "verified_pairs")}}


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "vladsearch.cli", *args], check=False, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"vladsearch {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


# imagededup imports torchvision for its CNN method only; the hashes need none of it, so a stub
# module stands in (no torchvision build matches the CPU torch wheel here).
IMAGEDEDUP_DRIVER = r'''
import importlib.machinery, json, sys, types
class Stub(types.ModuleType):
    __path__ = []
    def __getattr__(self, key):
        if key.startswith("__"):
            raise AttributeError(key)
        return Stub(key)
    def __call__(self, *args, **kwargs):
        return Stub("call")
class StubFinder:
    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, self) if name.split(".")[0] == "torchvision" else None
    def create_module(self, spec):
        return Stub(spec.name)
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, StubFinder())
from imagededup.methods import PHash, DHash
out = {}
for cls in (PHash, DHash):
    out[cls.__name__] = cls(verbose=False).find_duplicates(image_dir=sys.argv[1])
print(json.dumps(out))
'''


def run_imagededup(folder: Path) -> dict[str, list[list[str]]]:
    python = Path("/work/imagededup-venv/bin/python")
    if not python.exists():
        raise RuntimeError("imagededup not installed (python3 -m venv /work/imagededup-venv && "
                           "/work/imagededup-venv/bin/pip install imagededup)")
    done = subprocess.run([str(python), "-c", IMAGEDEDUP_DRIVER, str(folder)], check=False, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {method: components(dupes) for method, dupes in result.items()}


def components(neighbours: dict[str, list]) -> list[list[str]]:
    parent = {n: n for n in neighbours}

    def root(n):
        while parent.setdefault(n, n) != n:
            n = parent[n]
        return n

    for a, others in neighbours.items():
        for b in others:
            parent[root(a)] = root(b if isinstance(b, str) else b[0])
    groups = defaultdict(list)
    for n in list(parent):
        groups[root(n)].append(n)
    return [g for g in groups.values() if len(g) > 1]


def run_pimmi(folder: Path, work: Path, threads: int = 2) -> list[list[str]]:
    """PIMMI at its defaults: `fill` a new index, `query` every image against it, then
    `clusters` (connected components of the query graph); groups = the clusters' file names."""
    pimmi = Path("/work/pimmi-venv/bin/pimmi")
    if not pimmi.exists():
        raise RuntimeError("PIMMI not installed (python3 -m venv /work/pimmi-venv && "
                           "/work/pimmi-venv/bin/pip install pimmi requests)")
    import csv
    import os

    index, results, clusters = work / "pimmi-index", work / "pimmi-query.csv", work / "pimmi-clusters.csv"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for args in (["fill", str(folder), str(index), "--erase", "--force"],
                 ["query", str(folder), str(index), "-o", str(results)],
                 ["clusters", str(index), str(results), "-o", str(clusters)]):
        done = subprocess.run([str(pimmi), "--nb-threads", str(threads), *args], check=False, capture_output=True,
                              text=True, env=env, stdin=subprocess.DEVNULL)
        if done.returncode:
            raise RuntimeError(f"pimmi {args[0]} failed: {done.stderr[-1500:]}")
    groups = defaultdict(list)
    with open(clusters) as handle:
        for row in csv.DictReader(handle):
            groups[row["cluster_id"]].append(Path(row["path"]).name)
    return [g for g in groups.values() if len(g) > 1]


# fastdup at its defaults (bundled ONNX model, similarity threshold 0.9, connected components at
# cc_threshold 0.96); SENTRY_OPT_OUT asks it not to send usage reports (not checked further: this
# machine has no network anyway).
FASTDUP_DRIVER = r'''
import json, os, sys
os.environ.setdefault("SENTRY_OPT_OUT", "1")
import fastdup
fd = fastdup.create(work_dir=sys.argv[2], input_dir=sys.argv[1])
fd.run(num_threads=int(sys.argv[3]), overwrite=True)
cc = fd.connected_components()[0]
groups = [] if cc.empty else [list(map(str, g)) for g in cc.groupby("component_id")["filename"].apply(list)]
print(json.dumps({"version": fastdup.__version__, "groups": groups}))
'''


def run_fastdup(folder: Path, work: Path, threads: int = 2) -> list[list[str]]:
    """fastdup (in /work/fastdup-venv) at its defaults; groups = its connected components' file names."""
    python = Path("/work/fastdup-venv/bin/python")
    if not python.exists():
        raise RuntimeError("fastdup not installed (python3 -m venv /work/fastdup-venv && "
                           "/work/fastdup-venv/bin/pip install fastdup)")
    import os

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([str(python), "-c", FASTDUP_DRIVER, str(folder), str(work / "fastdup"), str(threads)],
                          check=False, capture_output=True, text=True, env=env, cwd=work)
    if done.returncode:
        raise RuntimeError(f"fastdup failed: {done.stderr[-1500:]}")
    groups = json.loads(done.stdout.strip().splitlines()[-1])["groups"]
    return [[Path(name).name for name in g] for g in groups if len(g) > 1]


def score_collection(kind: str, out: Path, variants: int, others: list[str]) -> dict:
    truth_file = out / "truth.json"
    if truth_file.exists():
        truth = json.loads(truth_file.read_text())
    else:
        truth = make_copies(out, variants) if kind == "copies" else make_distinct(out)
        truth_file.write_text(json.dumps(truth))
    truths = {"strict": truth}
    if kind == "distinct":
        truths["same-viewpoint"] = same_viewpoint_truth(truth)
        truths["no-tripod"] = without_tripod_sequences(truth)
    rows = {}
    for grouping in ("keep", "components")[:1 if "fast" in others else 2]:
        groups, info = run_vladsearch(out / "images", out, grouping)
        rows[f"vladsearch ({grouping})"] = {t: pairwise_scores(groups, tr) for t, tr in truths.items()} | info
    if "imagededup" in others:
        start = time.perf_counter()
        for method, groups in run_imagededup(out / "images").items():
            rows[f"imagededup {method}"] = {t: pairwise_scores(groups, tr) for t, tr in truths.items()}
        for method in ("PHash", "DHash"):
            rows[f"imagededup {method}"]["seconds_both_hashes"] = round(time.perf_counter() - start, 1)
    for name, label, run in (("pimmi", "PIMMI clusters", run_pimmi), ("fastdup", "fastdup components", run_fastdup)):
        if name in others:
            start = time.perf_counter()
            try:
                groups = run(out / "images", out)
                rows[label] = {t: pairwise_scores(groups, tr) for t, tr in truths.items()}
            except RuntimeError as exc:
                rows[label] = {"error": str(exc)[-300:]}
            rows[label]["seconds"] = round(time.perf_counter() - start, 1)
    return {"collection": kind, "images": len(truth), "rows": rows}


def make_timing_collection(folder: Path, images: int, size: tuple[int, int] = (320, 240)) -> None:
    """`images` synthetic images (tests' textured shapes, `size`) in folders of 10,000, plus
    5 % edited copies (crop, 90° turn, rescale) in copies/."""
    from live_helpers import make_images

    paths = []
    per_folder = 10_000
    for part in range((images + per_folder - 1) // per_folder):
        count = min(per_folder, images - part * per_folder)
        paths += make_images(folder / f"part{part}", count, seed=100 + part, size=size)
    rng = np.random.default_rng(0)
    (folder / "copies").mkdir()
    for i, path in enumerate(rng.choice(paths, size=images // 20, replace=False)):
        write_variant(folder / "copies", f"copy_{i:05d}", cv2.imread(str(path)), ["crop", "rotate90", "rescale"][i % 3],
                      rng)


def timing(out: Path, images: int, size: tuple[int, int] = (320, 240), preset: str = "exact",
           knn: str = "auto") -> dict:
    import resource

    folder = out / "images"
    if not folder.exists():
        make_timing_collection(folder, images, size)
    start = time.perf_counter()
    if not (out / "index.vlad").exists():
        _cli("build", str(folder), "--index", str(out / "index.vlad"), "--keep-features", "--quiet",
             "--preset", preset)
    build = time.perf_counter() - start
    out_json = out / f"duplicates-{knn}.json"
    groups, info = run_vladsearch(folder, out, save=out_json, extra=("--knn", knn))
    data = json.loads(out_json.read_text())
    import sqlite3

    with sqlite3.connect(f"file:{out / 'index.vlad' / 'catalog.sqlite'}?mode=ro", uri=True) as db:
        count, keypoints = db.execute("SELECT COUNT(*), AVG(keypoints) FROM images WHERE segment IS NOT NULL").fetchone()
    copies = [g for g in data["groups"] if any("copy_" in name for name in g["images"])]
    return {"images": count, "preset": preset, "knn": knn, "build_seconds": round(build, 1), **info,
            "groups": len(groups),
            "groups_with_a_planted_copy": len(copies), "planted_copies": images // 20,
            "timings": data.get("timings"), "keypoints_per_image": round(keypoints or 0),
            "peak_rss_mib_any_child": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "ms_per_image": round(1000 * info["seconds"] / count, 2),
            "extrapolated_1m_minutes": round(info["seconds"] / count * 1e6 / 60, 1)}


def grouping_sweep(root: Path, affines: tuple[float, ...] = (0.9, 0.93, 0.95),
                   links: tuple[int | None, ...] = (None, 0, 2, 3)) -> list[dict]:
    """Pairwise F1 of `find_duplicates` by affine threshold and grouping (None: components;
    L: keep, with `min_links` L) on root/copies and root/distinct (built by those modes).
    Each pair is verified once per collection; only the grouping is redone."""
    from vladsearch.collection import duplicates
    from vladsearch.index import Index

    cache: dict = {}
    verify = duplicates._verify

    def remembered(pairs, source, workers, mirror, min_inliers, screen=(0, 0), hints=None):
        def key(pair):
            return pair, (hints or {}).get(pair, mirror), screen
        todo = [p for p in pairs if key(p) not in cache]
        if todo:
            for pair, verdict in zip(todo, verify(todo, source, workers, mirror, min_inliers, screen,
                                                  {p: hints[p] for p in todo} if hints else None)):
                cache[key(pair)] = verdict
        return [cache[key(p)] for p in pairs]

    rows = []
    duplicates._verify = remembered
    try:
        for kind in ("copies", "distinct"):
            truth = json.loads((root / kind / "truth.json").read_text())
            truths = {"strict": truth} if kind == "copies" else {
                "strict": truth, "same-viewpoint": same_viewpoint_truth(truth),
                "no-tripod": without_tripod_sequences(truth)}
            index = Index.open(root / kind / "index.vlad")
            cache.clear()
            for affine in affines:
                for link in links:
                    grouping = "components" if link is None else "keep"
                    with _min_links(duplicates, link):
                        report = duplicates.find_duplicates(index, min_affine=affine, grouping=grouping, workers=2)
                    groups = [[Path(report.rows[i]["path"]).name for i in g.ids] for g in report.groups]
                    rows.append({"collection": kind, "min_affine": affine,
                                 "grouping": grouping if link is None else f"keep, links {link}",
                                 **{t: pairwise_scores(groups, tr)["f1"] for t, tr in truths.items()}})
    finally:
        duplicates._verify = verify
    return rows


class _min_links:
    """Context: `split_around_keep` with another `min_links` default."""

    def __init__(self, module, links: int | None) -> None:
        self.module, self.links, self.saved = module, links, module.split_around_keep

    def __enter__(self):
        if self.links is not None:
            saved, links = self.saved, self.links
            self.module.split_around_keep = lambda c, e, o, min_links=links: saved(c, e, o, min_links)

    def __exit__(self, *exc) -> None:
        self.module.split_around_keep = self.saved


PAIR_SETS = ("homogr_pairs", "oxford_affine_subset", "corridor")


def partner_truth(dataset: str, names: list[str]) -> dict[str, set[str]]:
    """Each image's partners: its other view (homogr_pairs), its scene's other 5 frames
    (oxford_affine_subset), the frames within ±2 in name order (corridor)."""
    if dataset == "corridor":
        ordered = sorted(names)
        return {n: set(ordered[max(0, i - 2):i] + ordered[i + 1:i + 3]) for i, n in enumerate(ordered)}
    if dataset == "oxford_affine_subset":
        return {n: {m for m in names if m != n and m.split("_img")[0] == n.split("_img")[0]} for n in names}
    gt = json.loads((SHARED / dataset / "gt.json").read_text())["queries"]
    return {q: set(v["positives"]) for q, v in gt.items()}


def pairs_partner_rate(out: Path, top: int, dataset: str = "homogr_pairs", extra: tuple[str, ...] = ()) -> dict:
    """partner_rate: images with at least one partner among their pairs; partner_recall: the
    fraction of each image's partners (at most `top`) found, averaged."""
    folder = SHARED / dataset / "images"
    index = out / ("homogr.vlad" if dataset == "homogr_pairs" else f"{dataset}.vlad")
    out.mkdir(parents=True, exist_ok=True)
    if not index.exists():
        _cli("build", str(folder), "--index", str(index), "--quiet")
    pairs_file = out / f"pairs_{dataset}.txt"
    start = time.perf_counter()
    _cli("pairs", str(index), "--top", str(top), "--output", str(pairs_file), *extra)
    seconds = time.perf_counter() - start
    lines = [line.split() for line in pairs_file.read_text().splitlines()]
    linked = defaultdict(set)
    for a, b in lines:
        linked[a].add(b)
        linked[b].add(a)
    truth = partner_truth(dataset, sorted(p.name for p in folder.iterdir()))
    found = sum(bool(partners & linked[q]) for q, partners in truth.items())
    recall = np.mean([len(partners & linked[q]) / min(top, len(partners)) for q, partners in truth.items()])
    return {"dataset": dataset, "images": len(truth), "pairs": len(lines), "partner_rate": round(found / len(truth), 4),
            "partner_recall": round(float(recall), 4), "seconds": round(seconds, 1),
            "ms_per_image": round(1000 * seconds / len(truth), 1), "self_pairs": sum(a == b for a, b in lines),
            "repeated": len(lines) - len({tuple(sorted(p)) for p in lines})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("copies", "distinct", "timing", "pairs", "grouping"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--variants", type=int, default=99)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"),
                        help="timing: synthetic image size (320 240: ~120 SIFT keypoints; 1024 768: ~900)")
    parser.add_argument("--preset", choices=("exact", "large"), default="exact",
                        help="timing: how the index is built (when it does not exist yet)")
    parser.add_argument("--knn", choices=("auto", "index", "codes"), default="auto", help="timing: `duplicates --knn`")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--others", default="imagededup,pimmi")
    parser.add_argument("--dataset", choices=PAIR_SETS + ("all",), default="homogr_pairs", help="pairs: which set")
    parser.add_argument("--pairs-args", default="", help="pairs: extra `vladsearch pairs` arguments, one string")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what in ("copies", "distinct"):
        result = score_collection(args.what, args.out, args.variants, [o for o in args.others.split(",") if o])
    elif args.what == "grouping":
        result = grouping_sweep(args.out)
    elif args.what == "timing":
        result = timing(args.out, args.images, tuple(args.size), args.preset, args.knn)
    else:
        sets = PAIR_SETS if args.dataset == "all" else (args.dataset,)
        result = [pairs_partner_rate(args.out, args.top, d, tuple(args.pairs_args.split())) for d in sets]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
