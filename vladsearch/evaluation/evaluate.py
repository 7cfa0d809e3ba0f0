"""Evaluate retrieval on a dataset with ground truth: mAP and recall@1/5/10, overall and per group.

The index is searched over the whole database (top = every indexed image), so AP is
computed over the full ranking. Indexed images that are not database images of the
dataset (e.g. the query photos kept in revisited Oxford's jpg/) are dropped from the
ranking before scoring. Queries with a bounding box (revisited Oxford/Paris) are cropped
to it first, as the standard protocol does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2

from vladsearch.evaluation.datasets import PROTOCOLS, Dataset, Query, load_dataset
from vladsearch.evaluation.metrics import METRIC_KEYS, score_query, summarize
from vladsearch.features import EXTRACTORS
from vladsearch.io.arguments import non_negative_int, positive_int
from vladsearch.query.search import RERANK_KEYPOINTS

# AP interpolation of each layout's official evaluation code: Oxford's compute_ap and
# Holidays' holidays_map.py both use the trapezoid rule; our layout reports the step AP.
PROTOCOL_INTERPOLATION = {"revisited": "trapezoid", "holidays": "trapezoid"}


def _open_or_build(dataset: Dataset, index_dir: str | Path | None, features: str, clusters: int | None,
                   workers: int | None, progress: bool, build_params: dict[str, Any]):
    """(index, build seconds, reused?) — reuse `index_dir` when it holds an index, else build (and save there)."""
    from vladsearch.index import Index
    if index_dir is not None and Path(index_dir).exists():
        index = Index.open(index_dir)  # a clear error if the folder is not an index
        built_on = Path(index.root).resolve()
        if built_on != dataset.images_dir.resolve():
            raise ValueError(f"the index {index_dir} was built from {built_on}, not from this dataset's "
                             f"{dataset.images_dir}; pass another --index or delete it")
        if index.params.features != features or (clusters is not None and index.params.clusters != clusters):
            raise ValueError(f"the index {index_dir} uses {index.params.features} with {index.params.clusters} "
                             f"clusters; pass --features {index.params.features} --clusters "
                             f"{index.params.clusters}, or another --index")
        return index, 0.0, True
    options = dict(build_params)
    if clusters is not None:
        options["clusters"] = clusters
    start = time.perf_counter()
    index = Index.build(dataset.images_dir, index=index_dir, features=features, workers=workers, progress=progress,
                        **options)
    seconds = time.perf_counter() - start
    return index, seconds, False


def _query_files(queries: list[Query], scratch: Path) -> list[Path]:
    """The file to search with for each query: the image itself, or its bounding-box crop (PNG, lossless)."""
    files = []
    for number, query in enumerate(queries):
        if query.bbox is None:
            files.append(query.path)
            continue
        image = cv2.imread(str(query.path), cv2.IMREAD_COLOR)
        if image is None:
            files.append(query.path)  # search reports the decoding error for this query
            continue
        height, width = image.shape[:2]
        x1, y1, x2, y2 = query.bbox
        x1, y1 = max(0, math.floor(x1)), max(0, math.floor(y1))
        x2, y2 = min(width, math.ceil(x2)), min(height, math.ceil(y2))
        crop = image[y1:y2, x1:x2] if x2 > x1 and y2 > y1 else image
        target = scratch / f"{number:06d}_{Path(query.name).stem}.png"
        cv2.imwrite(str(target), crop)
        files.append(target)
    return files


def evaluate(dataset_path: str | Path, features: str = "sift", clusters: int | None = None, rerank: int = 0,
             query_expansion: int = 0, mirrored: bool = False, index_dir: str | Path | None = None, top: int | None = None, progress: bool = True,
             protocol: str = "medium", interpolation: str | None = None, workers: int | None = None,
             details: bool = False, **build_params: Any) -> dict[str, Any]:
    """Build (or reuse) an index over a dataset's database, run its queries, score the rankings.

    clusters: None = the index's default. rerank: geometric re-ranking depth (0 = off);
    a new index then caches local features (keep_features) so reranking never re-decodes.
    query_expansion: αQE with the N best (verified) neighbours (0 = off).
    mirrored: with rerank on sift/rootsift, also verify the mirrored query (flipped copies).
    index_dir: reuse the index there if present, else build and save it there.
    top: ranking depth; None = every indexed image (AP over the whole ranking).
    protocol: revisited Oxford/Paris "easy" | "medium" | "hard".
    interpolation: AP rule, "step" or "trapezoid"; None = the dataset's official one.
    build_params: further `Index.build` options (max_side, pca, factory, ...).
    returns {"dataset", "layout", "queries", "mAP", "recall@1", "recall@5", "recall@10",
             "groups": {group: {"queries", "mAP", "recall@1", ...}}, "unscored", "failed",
             "timings": {"build", "search", "per_query_ms"}, "index", "settings"}
             (+ "per_query" with details=True: each query's metrics and its 10 best database images)
    """
    if rerank < 0:
        raise ValueError(f"--rerank must be 0 (off) or a positive depth, got {rerank}")
    dataset = load_dataset(dataset_path, protocol=protocol)
    if rerank > 0:
        build_params.setdefault("keep_features", RERANK_KEYPOINTS)
    interpolation = interpolation or PROTOCOL_INTERPOLATION.get(dataset.layout, "step")
    index, build_seconds, reused = _open_or_build(dataset, index_dir, features, clusters, workers, progress,
                                                  build_params)
    indexed = index.image_paths()
    depth = top or len(indexed)
    search_options: dict[str, Any] = {"top": depth, "workers": workers, "progress": progress}
    # the whole ranking is scored: with verification, the confirmed matches first, then the rest
    search_options.update(rerank=rerank, query_expansion=query_expansion, mirrored=mirrored or None,
                          unverified=True)
    with tempfile.TemporaryDirectory(prefix="vladsearch-eval-") as scratch:
        files = _query_files(dataset.queries, Path(scratch))
        start = time.perf_counter()
        results = index.search(files, **search_options)
        search_seconds = time.perf_counter() - start

    database = set(dataset.database)
    per_query, failed = [], []
    for query, result in zip(dataset.queries, results):
        if result.error:
            failed.append({"query": query.name, "error": result.error})
        ranked = [match.image for match in result.matches if match.image in database]
        per_query.append(score_query(query.name, ranked, query.positives, query.ignore, interpolation))
        if details:
            per_query[-1]["top"] = ranked[:10]
    summary = summarize(per_query)
    out: dict[str, Any] = {
        "dataset": dataset.name, "layout": dataset.layout,
        **{key: summary[key] for key in ("queries",) + METRIC_KEYS},
        "groups": summary["groups"], "unscored": summary["unscored"], "failed": failed,
        "timings": {"build": build_seconds, "search": search_seconds,
                    "per_query_ms": 1000 * search_seconds / max(len(dataset.queries), 1)},
        "index": {"path": str(index_dir) if index_dir is not None else None, "reused": reused,
                  "images": len(indexed), "database": len(dataset.database)},
        "settings": {"features": index.params.features, "clusters": index.params.clusters, "rerank": rerank,
                     "query_expansion": query_expansion, "mirrored": mirrored, "top": depth, "interpolation": interpolation,
                     **({"protocol": protocol} if dataset.layout == "revisited" else {})},
    }
    if details:
        out["per_query"] = per_query
    return out


# --- command line ------------------------------------------------------------------
EVALUATE_EXAMPLES = """examples:
  vladsearch evaluate ../shared/data/corridor
  vladsearch evaluate holidays/ --features rootsift --clusters 256 --index holidays.vlad
  vladsearch evaluate roxford5k/ --protocol hard --json > roxford-hard.json
  python benchmarks/make_copy_benchmark.py photos/ copies/ --queries 300 && vladsearch evaluate copies/
"""


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `evaluate` subcommand on an argparse subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "evaluate", help="measure retrieval quality on a dataset with ground truth",
        description="Build (or reuse) an index over DATASET_DIR's database images, search with its queries "
                    "and report mAP and recall@1/5/10, overall and per query group (the query-name prefix "
                    "before '_'). Reads the vladsearch layout (images/, queries/, gt.json), INRIA Holidays, "
                    "UKBench and revisited Oxford/Paris.",
        epilog=EVALUATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", metavar="DATASET_DIR")
    parser.add_argument("--features", default="sift", choices=list(EXTRACTORS), help="local features (default sift)")
    parser.add_argument("--clusters", "-k", type=positive_int, default=None, help="visual words K (default: the index's)")
    parser.add_argument("--rerank", type=non_negative_int, default=0, metavar="N",
                        help="geometrically verify the N best candidates (default 0: off)")
    parser.add_argument("--query-expansion", "--qe", type=non_negative_int, default=0, metavar="N",
                        help="αQE: search again with the query averaged with its N best (verified) matches")
    parser.add_argument("--mirrored", action="store_true",
                        help="with --rerank on sift/rootsift: also verify the mirrored query (flipped copies)")
    parser.add_argument("--index", metavar="DIR",
                        help="reuse the index in DIR if present, else build and save it there")
    parser.add_argument("--max-side", type=non_negative_int, default=None, metavar="PX",
                        help="downscale images to this longer side (0: never; default: the index's)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="medium",
                        help="revisited Oxford/Paris protocol (default medium)")
    parser.add_argument("--interpolation", choices=("step", "trapezoid"), default=None,
                        help="AP rule (default: the dataset's official one; step for the vladsearch layout)")
    parser.add_argument("--workers", type=positive_int, default=None, help="processes for extraction (default: all cores)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_cli)
    return parser


def _json_safe(value: Any) -> Any:
    """NaN (no positives) becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def format_table(result: dict[str, Any]) -> str:
    """The result of `evaluate` as a readable table."""
    settings = result["settings"]
    protocol = f", {settings['protocol']} protocol" if "protocol" in settings else ""
    lines = [
        (f"dataset   {result['dataset']} ({result['layout']} layout): {result['queries']} queries scored, "
         f"{result['index']['database']} database images"),
        (f"settings  {settings['features']}, K={settings['clusters']}, rerank {settings['rerank'] or 'off'}, "
         f"{settings['interpolation']} AP{protocol}"),
        "",
        f"{'':14s} {'queries':>7s} {'mAP':>7s} {'R@1':>7s} {'R@5':>7s} {'R@10':>7s}",
    ]

    def row(label: str, metrics: dict[str, Any]) -> str:
        values = " ".join(f"{metrics[key]:7.3f}" for key in METRIC_KEYS)
        return f"{label:14s} {metrics['queries']:7d} {values}"

    lines.append(row("all", result))
    lines.extend(row(f"  {group}", metrics) for group, metrics in result["groups"].items())
    timings = result["timings"]
    built = "reused index" if result["index"]["reused"] else f"build {timings['build']:.1f} s"
    lines += ["", f"time      {built}, search {timings['search']:.1f} s ({timings['per_query_ms']:.1f} ms per query)"]
    if result["unscored"]:
        lines.append(f"note      {result['unscored']} queries have no positives and are not scored")
    for failure in result["failed"]:
        lines.append(f"failed    {failure['query']}: {failure['error']}")
    return "\n".join(lines)


def run_cli(args: argparse.Namespace) -> int:
    """Run `vladsearch evaluate` from parsed arguments; returns the exit status."""
    build_params = {}
    if args.max_side is not None:
        build_params["max_side"] = args.max_side or None
    result = evaluate(args.dataset, features=args.features, clusters=args.clusters, rerank=args.rerank,
                      query_expansion=args.query_expansion, mirrored=args.mirrored,
                      index_dir=args.index, progress=not args.quiet and not args.json, protocol=args.protocol,
                      interpolation=args.interpolation, workers=args.workers, **build_params)
    if args.json:
        print(json.dumps(_json_safe(result), indent=2, ensure_ascii=False))
    else:
        print(format_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vladsearch-evaluate")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *(sys.argv[1:] if argv is None else argv)])
    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())
