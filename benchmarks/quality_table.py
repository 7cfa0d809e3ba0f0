"""Regenerate the quality tables of docs/BENCHMARKS.md: mAP and recall@1 per dataset.

    python benchmarks/quality_table.py                                   # sift + rootsift, every set
    python benchmarks/quality_table.py --write-doc docs/BENCHMARKS.md    # ... and rewrite the doc's section
    VLADSEARCH_WEIGHTS_DIR=../shared/models python benchmarks/quality_table.py \\
        --features superpoint,aliked,disk --datasets corridor,oxford_affine_subset --json learned.json
    python benchmarks/quality_table.py --merge cpu.json learned.json --write-doc docs/BENCHMARKS.md

Every dataset under --data that has a gt.json (../shared/data: corridor, oxford_affine_subset,
homogr_pairs) plus a copy-detection benchmark ("copy") written by make_copy_benchmark.py from
photographs: scikit-image's sample photos (saved as PNG in a temporary folder) and the
photographs of the shared sets (oxford_affine_subset, homogr_pairs; PPM re-saved as PNG,
pixel for pixel). Corridor's 160×120 video frames are left out of the copy benchmark: their
neighbours are near-identical frames that the copy ground truth would count as wrong.

For each dataset × features × clusters × normalisation it calls
`vladsearch.evaluation.evaluate.evaluate(...)` (full ranking, step AP) with the build parameters

    plain         power 0.5, no intra-normalisation, no PCA  (the research notebook's VLAD)
    intra         power 0.5 + intra-normalisation            (the index default)
    intra+pcaw    intra + PCA-whitening to --pca dimensions, fitted on the database
                  (capped at database images − 1, since PCA cannot find more directions)

Cluster counts larger than the number of descriptors available are skipped with a note.
Local features are extracted once per image and feature type and reused across cluster
counts and normalisations (`--no-cache` re-extracts every time; results are identical).
`--json` writes the raw records so that partial runs (e.g. learned features on a GPU
machine) can be merged with `--merge`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))   # run from a checkout without installing
sys.path.insert(0, str(HERE))

from common import cpu_description

DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
COPY = "copy"
NORMS: dict[str, dict[str, Any]] = {
    "plain": {"power": 0.5, "intra": False, "pca": 0},
    "intra": {"power": 0.5, "intra": True, "pca": 0},
    "intra+pcaw": {"power": 0.5, "intra": True, "pca": None, "whiten": True},  # pca filled from --pca
}
NORM_LABELS = {"plain": "plain", "intra": "+intra", "intra+pcaw": "+intra+PCAw"}
# Same choice as benchmarks/compare_notebook.py: textured enough for local features.
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "camera", "coins", "moon", "page", "text", "grass", "gravel", "brick", "logo")
COPY_PHOTO_SETS = ("oxford_affine_subset", "homogr_pairs")
COPY_GROUPS = ("exact", "rescale", "crop", "rotate", "overlay", "flipcrop")


# --- extraction cache --------------------------------------------------------------
class ExtractionCache:
    """Memoise `vladsearch.features.extraction.extract_images` per (extractor config, max_side, file).

    Index.build and Index.search extract the same images again for every cluster count and
    normalisation; extraction does not depend on either, so each image is extracted once.
    Every call gets fresh copies (the build releases descriptors it has cached on disk).
    """

    def __init__(self) -> None:
        import vladsearch.index
        import vladsearch.query.search  # noqa: F401
        from vladsearch.features import extraction

        self.original = extraction.extract_images
        self.memo: dict[tuple, Any] = {}
        self.patched = []
        for name, module in list(sys.modules.items()):
            if name.startswith("vladsearch") and getattr(module, "extract_images", None) is self.original:
                module.extract_images = self.extract_images
                self.patched.append(module)

    def clear(self) -> None:
        self.memo.clear()

    @staticmethod
    def _copy(item, path: Path):
        features = item.features
        if features is not None:
            features = dataclasses.replace(features, descriptors=np.array(features.descriptors, copy=True))
        return dataclasses.replace(item, path=path, features=features)

    def extract_images(self, paths, extractor, max_side=1024, workers=None, batch_size=8):
        paths = [Path(p) for p in paths]
        base = (extractor.name, json.dumps(extractor.config(), sort_keys=True, default=str), max_side)
        keys = []
        for path in paths:
            try:
                stat = path.stat()
                keys.append((base, str(path.resolve()), stat.st_size, stat.st_mtime_ns))
            except OSError:
                keys.append(None)  # let the pipeline report it
        todo = [path for path, key in zip(paths, keys) if key is None or key not in self.memo]
        fresh = {}
        if todo:
            for path, item in zip(todo, self.original(todo, extractor, max_side, workers, batch_size)):
                fresh[path] = item
        for path, key in zip(paths, keys):
            if key is not None and key in self.memo:
                yield self._copy(self.memo[key], path)
                continue
            item = fresh[path]
            if key is not None:
                self.memo[key] = self._copy(item, path)
            yield item


# --- the copy benchmark ------------------------------------------------------------
def _skimage_photo(name: str) -> np.ndarray:
    from skimage import data

    image = np.asarray(getattr(data, name)())
    if image.dtype != np.uint8:
        image = image.astype(np.float64)
        image = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-9)).astype(np.uint8)
    if image.ndim == 2:
        return image
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGR)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def write_copy_photos(data_dir: Path, folder: Path) -> int:
    """scikit-image's photos + the shared sets' photographs, as PNG/originals in `folder`.

    A photograph whose grayscale pixels equal one already taken is left out: homogr_pairs
    reuses Oxford's boat and graf images, and its LePoint2A and LePoint3A are one image. A
    duplicate in the database would be a "wrong" answer that is the right one.
    """
    import hashlib

    count, seen = 0, {}

    def duplicate(path: Path) -> bool:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        digest = hashlib.sha1(gray.tobytes() + str(gray.shape).encode()).hexdigest() if gray is not None else None
        if digest is not None and digest in seen:
            print(f"(copy benchmark: {path.relative_to(folder)} has the pixels of {seen[digest]}, left out)",
                  file=sys.stderr)
            path.unlink()
            return True
        seen[digest] = path.relative_to(folder)
        return False
    for name in SKIMAGE_PHOTOS:
        try:
            image = _skimage_photo(name)
        except Exception as exc:  # noqa: BLE001 - some need an optional download; use what is there
            print(f"(skipping skimage.data.{name}: {type(exc).__name__})", file=sys.stderr)
            continue
        (folder / "skimage").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / "skimage" / f"{name}.png"), image)
        count += not duplicate(folder / "skimage" / f"{name}.png")
    for dataset in COPY_PHOTO_SETS:
        images = data_dir / dataset / "images"
        if not images.is_dir():
            print(f"(copy benchmark: {images} not found, left out)", file=sys.stderr)
            continue
        for source in sorted(p for p in images.iterdir() if p.is_file()):
            target = folder / dataset / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.suffix.lower() in (".ppm", ".pgm"):  # lossless, 2-3× smaller, same pixels
                target = target.with_suffix(".png")
                cv2.imwrite(str(target), cv2.imread(str(source), cv2.IMREAD_UNCHANGED))
            else:
                shutil.copyfile(source, target)
            count += not duplicate(target)
    return count


def prepare_copy_benchmark(data_dir: Path, out_dir: Path, queries: int, seed: int) -> Path:
    """Write the copy benchmark into `out_dir` (reused as is when it already holds a gt.json)."""
    if (out_dir / "gt.json").exists():
        return out_dir
    from make_copy_benchmark import make_copy_benchmark

    with tempfile.TemporaryDirectory(prefix="vladsearch-photos-") as photos:
        count = write_copy_photos(data_dir, Path(photos))
        print(f"copy benchmark: {count} photographs, {queries} queries (seed {seed}) -> {out_dir}", file=sys.stderr)
        make_copy_benchmark(photos, out_dir, queries=queries, seed=seed)
    return out_dir


# --- running -----------------------------------------------------------------------
def machine_description() -> str:
    text = cpu_description()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def run_one(dataset: Path, name: str, features: str, clusters: int, norm: str, pca: int,
            workers: int | None, max_side: int | None) -> dict[str, Any]:
    from vladsearch.evaluation.evaluate import evaluate

    params = dict(NORMS[norm])
    if params.get("pca") is None:
        params["pca"] = pca
    if max_side is not None:
        params["max_side"] = max_side or None
    record: dict[str, Any] = {"dataset": name, "features": features, "clusters": clusters, "norm": norm,
                              "params": params}
    start = time.perf_counter()
    try:
        result = evaluate(dataset, features=features, clusters=clusters, progress=False, workers=workers, **params)
    except ValueError as exc:
        message = str(exc).splitlines()[0]
        record["skipped"] = message
        print(f"  {name:22s} {features:10s} K={clusters:<4d} {norm:11s} skipped: {message}", file=sys.stderr)
        return record
    record.update({key: result[key] for key in ("queries", "mAP", "recall@1", "recall@5", "recall@10")})
    record["groups"] = {group: {k: v for k, v in metrics.items()} for group, metrics in result["groups"].items()}
    record["database"] = result["index"]["database"]
    record["failed"] = len(result["failed"])
    if params["pca"]:
        record["pca_dim"] = min(params["pca"], result["index"]["images"] - 1)
    record["seconds"] = round(time.perf_counter() - start, 2)
    print(f"  {name:22s} {features:10s} K={clusters:<4d} {norm:11s} mAP {record['mAP']:.3f}  "
          f"R@1 {record['recall@1']:.3f}  ({record['seconds']:.1f} s)", file=sys.stderr)
    return record


def discover(data_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(data_dir.iterdir()) if (p / "gt.json").is_file()} if data_dir.is_dir() else {}


# --- rendering ---------------------------------------------------------------------
def _fmt(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def _key(record: dict[str, Any]) -> tuple:
    return record["dataset"], record["features"], record["clusters"], record["norm"]


def _order(values, preferred) -> list:
    preferred = list(preferred)
    return sorted(set(values), key=lambda v: (preferred.index(v) if v in preferred else len(preferred), str(v)))


FEATURE_ORDER = ("sift", "rootsift", "superpoint", "aliked", "disk")
DATASET_ORDER = ("corridor", "oxford_affine_subset", "homogr_pairs", COPY)
DATASET_TITLES = {
    "corridor": "corridor: indoor place recognition, 111 queries vs 111 frames (160×120), positives ±2 frames",
    "oxford_affine_subset": "oxford_affine_subset: 24 images (bikes, boat, graf, leuven), each queries the other 5 "
                            "of its sequence",
    "homogr_pairs": "homogr_pairs: 32 images, each queries the other image of its pair",
    COPY: "copy: copy detection, edited copies of photographs (make_copy_benchmark.py), one positive per query",
}


def render(records: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    """Markdown: one table per dataset (+ per-group table for the copy benchmark) + a summary."""
    latest: dict[tuple, dict[str, Any]] = {}
    for record in records:
        latest[_key(record)] = record
    records = list(latest.values())
    lines: list[str] = []
    norms = _order([r["norm"] for r in records], NORMS)
    notes: list[str] = []
    for dataset in _order([r["dataset"] for r in records], DATASET_ORDER):
        rows = [r for r in records if r["dataset"] == dataset]
        done = [r for r in rows if "skipped" not in r]
        title = DATASET_TITLES.get(dataset, dataset)
        lines += [f"### {title}", ""]
        if done:
            pca_dims = sorted({r["pca_dim"] for r in done if "pca_dim" in r})
            sample = done[0]
            info = f"{sample['queries']} queries scored, {sample['database']} database images"
            if pca_dims:
                info += f"; PCA-whitening to {', '.join(map(str, pca_dims))} dimensions"
            lines += [info + ".", ""]
        header = "| features | K | " + " | ".join(f"{NORM_LABELS.get(n, n)} mAP | {NORM_LABELS.get(n, n)} R@1"
                                                   for n in norms) + " |"
        lines += [header, "|" + "---|" * (2 + 2 * len(norms))]
        best = max((r["mAP"] for r in done), default=None)
        for features in _order([r["features"] for r in rows], FEATURE_ORDER):
            for clusters in sorted({r["clusters"] for r in rows if r["features"] == features}):
                cells = []
                for norm in norms:
                    record = latest.get((dataset, features, clusters, norm))
                    if record is None:
                        cells += ["n/r", "n/r"]
                    elif "skipped" in record:
                        cells += ["skip", "skip"]
                        notes.append(f"{dataset}, {features}, K={clusters}, {norm}: skipped — {record['skipped']}")
                    else:
                        m = _fmt(record["mAP"])
                        cells += [f"**{m}**" if record["mAP"] == best else m, _fmt(record["recall@1"])]
                lines.append(f"| {features} | {clusters} | " + " | ".join(cells) + " |")
        lines.append("")
        grouped = [r for r in done if r.get("groups")] if dataset == COPY else []
        if grouped:
            groups = _order([g for r in grouped for g in r["groups"]], COPY_GROUPS)
            lines += [f"Per query family ({dataset}), mAP / R@1:", "",
                      "| features | K | norm | all | " + " | ".join(groups) + " |",
                      "|" + "---|" * (4 + len(groups))]
            for record in sorted(grouped, key=lambda r: (_order([r["features"] for r in grouped], FEATURE_ORDER)
                                                         .index(r["features"]), r["clusters"], norms.index(r["norm"]))):
                cells = [f"{_fmt(record['mAP'])} / {_fmt(record['recall@1'])}"]
                for group in groups:
                    metrics = record["groups"].get(group)
                    cells.append(f"{_fmt(metrics['mAP'])} / {_fmt(metrics['recall@1'])}" if metrics else "–")
                lines.append(f"| {record['features']} | {record['clusters']} | {NORM_LABELS.get(record['norm'])} | "
                             + " | ".join(cells) + " |")
            lines.append("")
    # summary: mean mAP over the datasets where every dataset has a result
    datasets = _order([r["dataset"] for r in records], DATASET_ORDER)
    partial = False
    if len(datasets) > 1:
        lines += [f"### Mean mAP over the {len(datasets)} sets ({', '.join(datasets)})", "",
                  "| features | K | " + " | ".join(NORM_LABELS.get(n, n) for n in norms) + " |",
                  "|" + "---|" * (2 + len(norms))]
        for features in _order([r["features"] for r in records], FEATURE_ORDER):
            for clusters in sorted({r["clusters"] for r in records if r["features"] == features}):
                cells = []
                for norm in norms:
                    values = [latest.get((d, features, clusters, norm)) for d in datasets]
                    if all(v is not None and "skipped" not in v for v in values):
                        cells.append(_fmt(float(np.mean([v["mAP"] for v in values]))))
                    else:
                        cells.append("–")
                if any(c != "–" for c in cells):
                    lines.append(f"| {features} | {clusters} | " + " | ".join(cells) + " |")
                    partial = partial or "–" in cells
        lines += ["", "(– : not every set was run for this row.)", ""] if partial else [""]
    if notes:
        lines += ["Skipped:", ""] + [f"- {note}" for note in sorted(set(notes))] + [""]
    lines += ["n/r = not run. Produced by:", ""]
    for number, run in enumerate(runs):
        kept = [r for r in records if r.get("_run", 0) == number]
        if not kept:
            continue  # every record of this run was replaced by a later one
        features = _order([r["features"] for r in kept], FEATURE_ORDER)
        datasets = _order([r["dataset"] for r in kept], DATASET_ORDER)
        lines.append(f"- `{run['command']}` — {', '.join(features)} on {', '.join(datasets)}; "
                     f"{run['machine']}; {run['date']}")
    return "\n".join(lines).rstrip() + "\n"


START, END = "<!-- quality-table:start -->", "<!-- quality-table:end -->"


def write_doc(path: Path, markdown: str) -> None:
    """Replace the text between the quality-table markers of `path` (appended if absent)."""
    text = path.read_text() if path.exists() else ""
    block = f"{START}\n{markdown}{END}"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"datasets folder (default {DEFAULT_DATA})")
    parser.add_argument("--datasets", type=_csv, default=None,
                        help=f"comma-separated subset of the datasets with gt.json and '{COPY}' (default all)")
    parser.add_argument("--features", type=_csv, default=["sift", "rootsift"], help="default sift,rootsift")
    parser.add_argument("--clusters", type=lambda t: [int(v) for v in _csv(t)], default=[16, 64, 256],
                        help="default 16,64,256")
    parser.add_argument("--norms", type=_csv, default=list(NORMS), help=f"subset of {','.join(NORMS)}")
    parser.add_argument("--pca", type=int, default=256, help="PCA-whitening dimension for intra+pcaw (default 256)")
    parser.add_argument("--copy-dir", type=Path, default=None,
                        help="keep the copy benchmark here (reused if it has a gt.json; default: a temp folder)")
    parser.add_argument("--copy-queries", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0, help="copy benchmark seed (default 0)")
    parser.add_argument("--workers", type=int, default=None, help="extraction processes (default all cores)")
    parser.add_argument("--max-side", type=int, default=None, help="image size limit (default: the index's)")
    parser.add_argument("--no-cache", action="store_true", help="re-extract features for every configuration")
    parser.add_argument("--json", type=Path, default=None, help="write the records (and run info) here")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="render these --json files (later ones win) instead of running")
    parser.add_argument("--write-doc", type=Path, default=None,
                        help="replace the quality section of this markdown file (e.g. docs/BENCHMARKS.md)")
    parser.add_argument("--machine", default=None, help="machine description for the table (default: detected)")
    args = parser.parse_args(argv)

    if args.merge:
        records, runs = [], []
        for path in args.merge:
            loaded = json.loads(path.read_text())
            for record in loaded["records"]:
                record["_run"] = len(runs) + record.get("_run", 0)
            records += loaded["records"]
            runs += loaded["runs"]
    else:
        unknown = [n for n in args.norms if n not in NORMS]
        if unknown:
            parser.error(f"unknown --norms {unknown}; choose from {', '.join(NORMS)}")
        available = discover(args.data)
        wanted = args.datasets or [*available, COPY]
        missing = [d for d in wanted if d != COPY and d not in available]
        if missing:
            parser.error(f"no dataset with gt.json named {missing} in {args.data} (found: {', '.join(available)})")
        records = []
        cache = None if args.no_cache else ExtractionCache()
        started = time.perf_counter()
        command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/quality_table.py",
                                                               *(sys.argv[1:] if argv is None else argv)])
        machine = args.machine or None

        def runs_info() -> list[dict[str, Any]]:
            return [{"command": command, "features": args.features, "datasets": wanted,
                     "machine": machine or machine_description(), "date": dt.date.today().isoformat(),
                     "seconds": round(time.perf_counter() - started, 1)}]

        def save() -> None:  # after every record, so that a run cut short keeps what it measured
            if args.json:
                args.json.write_text(json.dumps({"records": records, "runs": runs_info()}, indent=1))

        with tempfile.TemporaryDirectory(prefix="vladsearch-copy-") as scratch:
            for name in wanted:
                if name == COPY:
                    path = prepare_copy_benchmark(args.data, args.copy_dir or Path(scratch) / COPY,
                                                  args.copy_queries, args.seed)
                else:
                    path = available[name]
                print(f"{name}:", file=sys.stderr)
                for features in args.features:
                    for clusters in args.clusters:
                        for norm in args.norms:
                            records.append(run_one(path, name, features, clusters, norm, args.pca, args.workers,
                                                   args.max_side))
                            save()
                    if cache is not None:
                        cache.clear()
        runs = runs_info()
        save()
    markdown = render(records, runs)
    print(markdown)
    if args.write_doc:
        write_doc(args.write_doc, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
