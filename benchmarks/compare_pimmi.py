"""Compare vladsearch (VLAD alone, geometric reranking, query expansion) with PIMMI on one dataset.

    python benchmarks/compare_pimmi.py DATASET_DIR [--features sift,rootsift] [--rerank 20,50,100]
        [--qe 3] [--pimmi /work/pimmi-venv/bin/pimmi] [--distractors DIR] [--json OUT.json]

DATASET_DIR is in any layout `vladsearch.evaluation.datasets.load_dataset` reads (ours: images/,
queries/, gt.json). Both systems index the same database images and run the same query
files (bounding-box crops for revisited Oxford/Paris, as `vladsearch evaluate` does); both
rankings are scored by `vladsearch.evaluation.metrics` with the dataset's AP rule.

vladsearch: one index per feature type is built with the feature cache (keep_features=1024,
so reranking never re-decodes the database) and reused by every setting through
`vladsearch.evaluation.evaluate.evaluate(..., index_dir=...)`; the whole database is ranked.

PIMMI (médialab Sciences Po; SIFT + faiss IVF + RANSAC, https://github.com/nrv/pimmi) runs
in its own virtual environment: `pimmi fill` (its CLI) indexes a staging copy of the
database (PIMMI reads only .jpg/.jpeg/.png, so other formats are converted to PNG,
losslessly); the queries go through its Python API (`pimmi.query_index_mt`) in a
subprocess of that environment, because `pimmi query` only queries the images of the index
itself (it is a self-join for clustering). PIMMI returns only the images that pass its own
thresholds (≥5 SIFT matches, ≥5 RANSAC inliers); they are ranked by RANSAC inliers, then
raw matches. A query with no match ranks nothing: AP 0, recall 0. Its default faiss index is
"IVF1024,Flat" (searched with faiss's default nprobe 1); when a database has too few SIFT
points to train 1024 centroids, "IDMap,Flat" (exact, so at least as good) is used instead
and reported; --pimmi-index-type IDMap,Flat asks for the exact index.

--distractors DIR: image files that are NOT in the collection. Each is searched with
--rerank N --verified-only (N = --verify-depth) and through PIMMI; a query that returns
≥1 verified match (PIMMI: ≥1 match) is a false positive. The dataset's own queries are
searched the same way to report how often a true copy is verified at rank 1.

Latency per query is the wall time of searching all queries (decode + extract + search
[+ rerank]) divided by their number, with --workers processes (PIMMI: --workers threads).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vladsearch.evaluation.datasets import load_dataset
from vladsearch.evaluation.evaluate import PROTOCOL_INTERPOLATION, _query_files, evaluate
from vladsearch.evaluation.metrics import score_query, summarize
from vladsearch.io.images import list_images
from vladsearch.query.rerank import DEFAULT_MIN_INLIERS

DEFAULT_PIMMI = "/work/pimmi-venv/bin/pimmi"

# Runs inside PIMMI's virtual environment: query an index made by `pimmi fill` with external
# query files and write every query's kept results as JSON.
PIMMI_QUERY_DRIVER = r'''
import json, os, sys, time
spec = json.load(open(sys.argv[1]))
import pimmi.cli.__main__ as cli  # loads PIMMI's default config.yml into the parameters
from pimmi.cli.config import parameters as prm
from pimmi import load_index, query_index_mt
import logging
logging.getLogger("pimmi").setLevel(logging.ERROR)
prm.set_config_as_attributes(prm.load_config_file(cli.config_path))
prm.nb_threads = spec["nb_threads"]
index = load_index(os.path.join(spec["index"], "index.faiss"), os.path.join(spec["index"], "index.meta"))
images = [{"path": path, "image_id": number} for number, path in enumerate(spec["queries"])]
start = time.perf_counter()
result = query_index_mt(index, images, spec["query_root"])
seconds = time.perf_counter() - start
rows = [{"query": r.query_image_id, "result": r.result_path, "ransac": int(r.nb_match_ransac),
         "matches": int(r.nb_match_total)} for r in result]
json.dump({"seconds": seconds, "rows": rows}, open(spec["out"], "w"))
'''

PIMMI_FORMATS = (".jpg", ".jpeg", ".png")


def _stage(files: list[Path], folder: Path, prefix: str) -> list[Path]:
    """Give PIMMI each file under a neutral name it can read: a link to a JPEG/PNG, else a PNG copy."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    staged = []
    for number, source in enumerate(files):
        suffix = source.suffix.lower()
        if suffix in PIMMI_FORMATS:
            target = folder / f"{prefix}{number:06d}{suffix}"
            os.symlink(source.resolve(), target)
        else:
            target = folder / f"{prefix}{number:06d}.png"
            image = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
            if image is None or not cv2.imwrite(str(target), image):
                print(f"warning: PIMMI staging could not convert {source}", file=sys.stderr)
                continue
        staged.append(target)
    return staged


def run_pimmi(pimmi: str, database: list[tuple[str, Path]], queries: list[Path], work: Path,
              threads: int, index_type: str = "IVF1024,Flat") -> dict[str, Any]:
    """Index `database` [(name, file)] with `pimmi fill`, query with `queries`; returns rankings and timings."""
    if work.exists():
        shutil.rmtree(work)
    db_dir, query_dir = work / "db", work / "queries"
    db_files = _stage([path for _, path in database], db_dir, "d")
    names = {f.name: name for f, (name, _) in zip(db_files, database)}
    query_files = _stage(queries, query_dir, "q")
    python = str(Path(pimmi).parent / "python")
    candidates = [index_type] + (["IDMap,Flat"] if index_type != "IDMap,Flat" else [])
    index_type, fill_seconds, log = None, 0.0, ""
    for candidate in candidates:
        index_dir = work / f"index-{candidate.replace(',', '_')}"
        start = time.perf_counter()
        done = subprocess.run([pimmi, "--nb-threads", str(threads), "--index-type", candidate, "fill",
                               str(db_dir), str(index_dir), "--erase", "--force"],
                              check=False, capture_output=True, text=True)
        fill_seconds = time.perf_counter() - start
        log = done.stdout[-2000:] + done.stderr[-2000:]
        if done.returncode == 0 and (index_dir / "index.faiss").is_file():
            index_type = candidate
            break
    if index_type is None:
        raise RuntimeError(f"pimmi fill failed:\n{log}")
    spec = {"index": str(index_dir), "queries": [str(f) for f in query_files], "query_root": str(query_dir),
            "nb_threads": threads, "out": str(work / "results.json")}
    (work / "spec.json").write_text(json.dumps(spec))
    (work / "driver.py").write_text(PIMMI_QUERY_DRIVER)
    done = subprocess.run([python, str(work / "driver.py"), str(work / "spec.json")], check=False,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"PIMMI query failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    out = json.loads((work / "results.json").read_text())
    ranked: dict[int, list[tuple[int, int, str]]] = {}
    for row in out["rows"]:
        ranked.setdefault(row["query"], []).append((-row["ransac"], -row["matches"], names[row["result"]]))
    rankings = [[name for *_, name in sorted(ranked.get(number, []))] for number in range(len(query_files))]
    inliers = [[-r for r, *_ in sorted(ranked.get(number, []))] for number in range(len(query_files))]
    return {"rankings": rankings, "inliers": inliers, "index_type": index_type, "fill_seconds": fill_seconds,
            "query_seconds": out["seconds"], "per_query_ms": 1000 * out["seconds"] / max(len(query_files), 1)}


def _summary_row(label: str, summary: dict[str, Any], per_query_ms: float | None) -> dict[str, Any]:
    return {"method": label, "queries": summary["queries"], "mAP": summary["mAP"], "recall@1": summary["recall@1"],
            "groups": {g: {"mAP": m["mAP"], "recall@1": m["recall@1"], "queries": m["queries"]}
                       for g, m in summary.get("groups", {}).items()},
            "per_query_ms": per_query_ms}


def _features_dir_bytes(index_dir: Path) -> int:
    return sum(f.stat().st_size for d in index_dir.glob("features-*") for f in d.rglob("*") if f.is_file())


def compare(dataset_dir: Path, features: list[str], reranks: list[int], qe: int, pimmi: str | None,
            work: Path, workers: int, distractors: Path | None, verify_depth: int,
            pimmi_index_type: str = "IVF1024,Flat") -> dict[str, Any]:
    from vladsearch import Index

    dataset = load_dataset(dataset_dir)
    interpolation = PROTOCOL_INTERPOLATION.get(dataset.layout, "step")
    database = set(dataset.database)
    report: dict[str, Any] = {"dataset": str(dataset_dir), "queries": len(dataset.queries),
                              "database": len(dataset.database), "rows": [], "features": {},
                              "machine": f"{platform.node()} {os.cpu_count()} CPU cores, workers={workers}",
                              "date": datetime.date.today().isoformat()}
    distractor_files = [Path(p) for p in list_images(distractors)] if distractors else []
    for feature in features:
        index_dir = work / f"index-{feature}.vlad"
        if index_dir.exists():
            shutil.rmtree(index_dir)
        start = time.perf_counter()
        index = Index.build(dataset.images_dir, features=feature, workers=workers, progress=False, keep_features=1024)
        build_seconds = time.perf_counter() - start
        index.save(index_dir)
        indexed = len(index.image_paths())
        cache = _features_dir_bytes(index_dir)
        info = {"build_seconds": build_seconds, "images": indexed, "feature_cache_bytes": cache,
                "feature_cache_kib_per_image": cache / 1024 / max(indexed, 1),
                "clusters": index.params.clusters}
        report["features"][feature] = info
        settings = [("VLAD", 0, 0)] + [(f"rerank {n}", n, 0) for n in reranks]
        if qe:
            settings += [(f"QE {qe}", 0, qe), (f"rerank {verify_depth} + QE {qe}", verify_depth, qe)]
        base_ms = None
        for label, rerank, expansion in settings:
            result = evaluate(dataset_dir, features=feature, rerank=rerank, query_expansion=expansion,
                              index_dir=index_dir, progress=False, workers=workers)
            row = _summary_row(f"{feature} {label}", result, result["timings"]["per_query_ms"])
            base_ms = row["per_query_ms"] if label == "VLAD" else base_ms
            row["added_ms"] = row["per_query_ms"] - base_ms
            report["rows"].append(row)
            print(_format_row(row), flush=True)
        # --verified-only: true copies verified at rank 1, and false positives on distractors
        with tempfile.TemporaryDirectory(prefix="compare-pimmi-") as scratch:
            files = _query_files(dataset.queries, Path(scratch))
            results = index.search(files, top=verify_depth, rerank=verify_depth, verified_only=True, workers=workers)
        kept = [[m.image for m in r.matches if m.image not in q.ignore] for q, r in zip(dataset.queries, results)]
        top1 = [bool(k) and k[0] in q.positives for q, k in zip(dataset.queries, kept)]
        anything = [bool(k) for k in kept]
        verified = {"depth": verify_depth, "queries": len(results),
                    "top1_verified_positive": sum(top1) / max(len(top1), 1),
                    "any_verified": sum(anything) / max(len(anything), 1)}
        if distractor_files:
            # verified_only=False to see the inliers of the rejected candidates too; filtered below
            results = index.search(distractor_files, top=verify_depth, rerank=verify_depth, workers=workers)
            verified_matches = [[m for m in r.matches if m.verified] for r in results]
            hits = [(str(f), v[0].image, v[0].inliers) for f, v in zip(distractor_files, verified_matches) if v]
            verified.update({"distractors": len(distractor_files), "false_positives": len(hits),
                             "false_positive_rate": len(hits) / len(distractor_files),
                             "false_positive_examples": hits[:10],
                             "max_inliers_on_distractors": max((m.inliers or 0 for r in results for m in r.matches),
                                                               default=0),
                             "verified_at_inliers": DEFAULT_MIN_INLIERS})
        info["verified_only"] = verified
        print(f"{feature} --rerank {verify_depth} --verified-only: {json.dumps(verified)}", flush=True)

    if pimmi:
        with tempfile.TemporaryDirectory(prefix="compare-pimmi-") as scratch:
            files = _query_files(dataset.queries, Path(scratch))
            pimmi_db = [(name, dataset.images_dir / name) for name in dataset.database]
            out = run_pimmi(pimmi, pimmi_db, files + distractor_files, work / "pimmi", workers, pimmi_index_type)
        per_query = []
        for query, ranked in zip(dataset.queries, out["rankings"]):
            ranked = [name for name in ranked if name in database]
            per_query.append(score_query(query.name, ranked, query.positives, query.ignore, interpolation))
        row = _summary_row(f"PIMMI ({out['index_type']})", summarize(per_query), out["per_query_ms"])
        row["fill_seconds"] = out["fill_seconds"]
        report["rows"].append(row)
        matched = [any(name not in q.ignore for name in r) for q, r in zip(dataset.queries, out["rankings"])]
        pimmi_info = {"index_type": out["index_type"], "fill_seconds": out["fill_seconds"],
                      "any_match": sum(matched) / max(len(matched), 1),
                      "top1_positive": sum(1 for row in per_query if row["recall@1"] == 1) / max(len(per_query), 1)}
        if distractor_files:
            fp = [bool(r) for r in out["rankings"][len(dataset.queries):]]
            pimmi_info.update({"distractors": len(fp), "false_positives": sum(fp),
                               "false_positive_rate": sum(fp) / len(fp)})
        report["pimmi"] = pimmi_info
        print(_format_row(row), flush=True)
        print(f"PIMMI: {json.dumps(pimmi_info)}", flush=True)
    return report


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _format_row(row: dict[str, Any]) -> str:
    groups = "  ".join(f"{g} {_fmt(m['mAP'])}/{_fmt(m['recall@1'])}" for g, m in row["groups"].items())
    return (f"{row['method']:28s} mAP {_fmt(row['mAP'])} R@1 {_fmt(row['recall@1'])} "
            f"{row['per_query_ms']:8.1f} ms/q  {groups}")


def markdown(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table: overall and per group mAP / R@1, latency per query."""
    groups = sorted({g for row in report["rows"] for g in row["groups"]})
    head = ["method", "mAP", "R@1"] + [f"{g} mAP / R@1" for g in groups] + ["ms/query", "added ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        cells = [row["method"], _fmt(row["mAP"]), _fmt(row["recall@1"])]
        for g in groups:
            m = row["groups"].get(g)
            cells.append(f"{_fmt(m['mAP'])} / {_fmt(m['recall@1'])}" if m else "")
        cells += [f"{row['per_query_ms']:.0f}", f"{row['added_ms']:+.0f}" if "added_ms" in row else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, metavar="DATASET_DIR")
    parser.add_argument("--features", default="sift", help="comma-separated feature types (default sift)")
    parser.add_argument("--rerank", default="20,50,100", help="rerank depths to try (default 20,50,100)")
    parser.add_argument("--qe", type=int, default=3, help="αQE neighbours (0: skip QE rows; default 3)")
    parser.add_argument("--verify-depth", type=int, default=50,
                        help="rerank depth for the QE+rerank row and the --verified-only counts (default 50)")
    parser.add_argument("--pimmi", default=DEFAULT_PIMMI, help=f"the pimmi executable (default {DEFAULT_PIMMI}); "
                                                                "'' to skip PIMMI")
    parser.add_argument("--pimmi-index-type", default="IVF1024,Flat",
                        help="PIMMI's faiss index (default its own default, IVF1024,Flat, searched with nprobe 1; "
                             "'IDMap,Flat' is exact)")
    parser.add_argument("--distractors", type=Path, help="folder of photos not in the collection (false positives)")
    parser.add_argument("--workers", type=int, default=2, help="processes / PIMMI threads (default 2)")
    parser.add_argument("--work", type=Path, help="scratch folder for the indexes (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the full report as JSON here")
    args = parser.parse_args(argv)
    features = [f.strip() for f in args.features.split(",") if f.strip()]  # '' : PIMMI only
    reranks = [int(n) for n in args.rerank.split(",") if n.strip()]
    pimmi = args.pimmi or None
    if pimmi and not Path(pimmi).exists():
        print(f"error: {pimmi} not found; install PIMMI in its own venv "
              "(python3 -m venv /work/pimmi-venv && /work/pimmi-venv/bin/pip install pimmi requests) "
              "or pass --pimmi ''", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="compare-pimmi-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        report = compare(args.dataset, features, reranks, args.qe, pimmi, work, args.workers, args.distractors,
                         args.verify_depth, args.pimmi_index_type)
    print()
    print(markdown(report))
    for feature, info in report["features"].items():
        print(f"\n{feature}: K={info['clusters']}, build {info['build_seconds']:.1f} s, feature cache "
              f"{info['feature_cache_kib_per_image']:.0f} KiB per image ({info['images']} images)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
