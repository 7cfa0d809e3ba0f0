"""The `vladsearch` command line: build, search, add, remove, compact, check, info, evaluate.

The top layer, and thin: each verb parses its flags and calls the layers below. The verbs of
other layers register their own flags: evaluate (evaluation/evaluate.py), serve (server/cli.py),
duplicates (collection/cli.py), undo and resume (collection/duplicate_actions.py), pairs
(collection/pairs.py), watch (live/cli.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import warnings

from vladsearch.encoding.encoder import DEFAULT_FEATURE_CODES, DEFAULT_KEEP_FEATURES, PRESETS, preset_with
from vladsearch.executors.ray import executor_report
from vladsearch.features import EXTRACTORS
from vladsearch.io.arguments import non_negative_int, positive_int
from vladsearch.io.images import DEFAULT_MAX_PIXELS
from vladsearch.query.results import results_to_csv, results_to_json, results_to_table
from vladsearch.query.search import DEFAULT_TOP, DEFAULT_VERIFY_DEPTH, SearchOptions
from vladsearch.version import __version__

EPILOG = """examples:
  vladsearch build photos/ --index photos.vlad
  vladsearch search photos.vlad query.jpg          # identical / copy / same scene, or not in the collection
  vladsearch search photos.vlad queries/ --json > results.json
  vladsearch search photos.vlad query.jpg --unverified --top 20   # + the candidates not confirmed
  vladsearch search photos.vlad query.jpg --rerank 0              # the plain VLAD neighbours
  vladsearch add photos.vlad more_photos/
  vladsearch remove photos.vlad holiday/IMG_0001.jpg
  vladsearch compact photos.vlad
  vladsearch check photos.vlad
  vladsearch info photos.vlad
"""


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="processes for decoding and extraction (default: all cores)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="list every file left out with its reason (files that are not images too)")


def _add_ray(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run on a Ray cluster (pip install \"vladsearch[ray]\"): no ADDRESS starts a local "
                             "instance for this command; 'auto' or HOST:PORT joins a running cluster, whose "
                             "workers must see the photos and the index at the same paths (docs/RAY.md); "
                             "--workers is then the number of actors")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vladsearch", description="Find the images of a collection that show the same thing as a query.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vladsearch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    build = commands.add_parser("build", help="index every image under a folder",
                                description="Index every image under PHOTOS_DIR (recursively) into a new index directory.")
    build.add_argument("photos", metavar="PHOTOS_DIR", help="a folder, or a .txt file listing image paths")
    build.add_argument("--index", required=True, metavar="PATH", help="index directory to write (e.g. photos.vlad)")
    features_help = "; ".join(f"{name}: {desc}" for name, (_, _, desc) in EXTRACTORS.items())
    build.add_argument("--features", default=None, choices=list(EXTRACTORS),
                       help=f"local features (default sift, or the preset's; {features_help})")
    build.add_argument("--clusters", "-k", type=positive_int, default=None,
                       help="visual words K (default 64, or the preset's)")
    build.add_argument("--weights", metavar="PATH", help="weights file for learned features")
    build.add_argument("--max-side", type=int, default=None, metavar="PX",
                       help="downscale images so the longer side is at most PX (0: never; default 1024, "
                            "or the preset's)")
    build.add_argument("--max-keypoints", type=positive_int, default=None, help="keep the N strongest keypoints")
    build.add_argument("--pca", type=int, default=0, metavar="DIM", help="PCA-whiten VLAD vectors to DIM (default 0: off)")
    build.add_argument("--no-whiten", action="store_true", help="with --pca: project without whitening")
    build.add_argument("--no-intra", action="store_true", help="disable intra-normalisation")
    build.add_argument("--power", type=float, default=0.5, help="power-law exponent (default 0.5; 1 disables)")
    build.add_argument("--preset", default="exact", choices=list(PRESETS),
                       help="exact: every vector in RAM, exact search (default); large: a 64-byte code per image "
                            "in RAM, full vectors on disk re-rank the candidates (millions of images; docs/SCALE.md); "
                            "places: the same place under strong changes, learned features (docs/FEATURES.md)")
    build.add_argument("--factory", default="Flat",
                       help="faiss index factory string (default Flat = exact; e.g. IVF1024,Flat, IVF1024,PQ32np or HNSW32)")
    build.add_argument("--codebook-images", type=positive_int, default=500,
                       help="images sampled to train the codebook (default 500)")
    keep = build.add_mutually_exclusive_group()
    keep.add_argument("--keep-features", type=positive_int, nargs="?", const=DEFAULT_KEEP_FEATURES, default=None,
                      metavar="N",
                      help=f"cache the N strongest local features per image, so that searches verify without "
                           f"decoding photos again (default {DEFAULT_KEEP_FEATURES}, as {DEFAULT_FEATURE_CODES} codes: "
                           "about 33 KiB per image for SIFT; `info` reports the disk they take)")
    keep.add_argument("--no-keep-features", dest="keep_features", action="store_const", const=0,
                      help="cache no local features (smaller index; searches decode candidates again to verify)")
    build.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                       help=f"skip images larger than N pixels, read from the file header before decoding "
                            f"(decompression bombs; default {DEFAULT_MAX_PIXELS:,}; 0: no limit)")
    build.add_argument("--force", action="store_true", help="replace an index that already exists at --index")
    build.add_argument("--feature-codes", default=None, metavar="PQmxb",
                       help=f"how cached descriptors are stored: product-quantised codes, e.g. {DEFAULT_FEATURE_CODES} "
                            "(the default: 32 KiB per image at 1024 SIFT keypoints), or none: float16 (264 KiB)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--json", action="store_true", help="print the build report as JSON")
    _add_common(build)
    _add_verbose(build)
    _add_ray(build)

    search = commands.add_parser("search", help="is this image in the collection? confirmed matches, verified",
                                 description="Answer each query: the indexed images confirmed identical, copies or "
                                             "the same scene (verified on local features), or 'not in the collection'.")
    search.add_argument("index", metavar="INDEX")
    search.add_argument("queries", nargs="+", metavar="QUERY_IMAGE_OR_DIR")
    search.add_argument("--top", "-k", type=positive_int, default=DEFAULT_TOP,
                        help=f"matches per query (default {DEFAULT_TOP})")
    output = search.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON (keys: docs/ANSWERS.md)")
    output.add_argument("--csv", action="store_true", help="print CSV")
    search.add_argument("--rerank", type=non_negative_int, default=DEFAULT_VERIFY_DEPTH, metavar="N",
                        help="verify the N best VLAD candidates (and, for sift/rootsift, the mirrored query's N) "
                             f"by local feature matching and geometry (default {DEFAULT_VERIFY_DEPTH}); "
                             "0: no verification, the plain VLAD neighbours")
    search.add_argument("--unverified", action="store_true",
                        help="after the confirmed matches, also list the candidates that were not confirmed")
    search.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                        help="keep confirmed matches whose measured precision is at least P, in [0, 1] "
                             "(docs/ANSWERS.md has the table; default 0)")
    search.add_argument("--verified-only", action="store_true", help=argparse.SUPPRESS)  # the default since 0.3
    mirror = search.add_mutually_exclusive_group()
    mirror.add_argument("--mirrored", dest="mirrored", action="store_true", default=None,
                        help="also search and verify the mirrored query (default: on for sift/rootsift)")
    mirror.add_argument("--no-mirrored", dest="mirrored", action="store_false",
                        help="do not look for mirrored copies")
    search.add_argument("--query-expansion", "--qe", type=int, default=0, metavar="N",
                        help="search again with the query averaged with its N best (verified) matches (αQE)")
    search.add_argument("--nprobe", type=positive_int, default=None,
                        help="IVF indexes: lists to visit per query (more = slower, more exact)")
    search.add_argument("--weights", metavar="PATH", help="weights file (default: the one recorded at build)")
    search.add_argument("--root", metavar="PHOTOS_DIR", help="where the indexed photos are now (default: found "
                                                              "from the index; reranking reads them)")
    _add_common(search)

    add = commands.add_parser("add", help="add images to an index with its existing codebook")
    add.add_argument("index", metavar="INDEX")
    add.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR")
    add.add_argument("--weights", metavar="PATH")
    add.add_argument("--json", action="store_true", help="print the report as JSON")
    add.add_argument("--root", metavar="PHOTOS_DIR", help="the indexed photos' folder, if it moved apart from the index")
    add.add_argument("--no-merge", action="store_true", help="do not merge small segments after the commit")
    _add_common(add)
    _add_verbose(add)
    _add_ray(add)

    remove = commands.add_parser("remove", help="remove images from an index")
    remove.add_argument("index", metavar="INDEX")
    remove.add_argument("images", nargs="+", metavar="IMAGE", help="indexed path (as `search` prints it) or a file path")

    compact = commands.add_parser("compact", help="merge all segments into one, dropping deleted vectors "
                                                  "(also migrates a format 1 index)")
    compact.add_argument("index", metavar="INDEX")

    check = commands.add_parser("check", help="verify every segment, id and count of an index")
    check.add_argument("index", metavar="INDEX")
    check.add_argument("--json", action="store_true")

    info = commands.add_parser("info", help="describe an index")
    info.add_argument("index", metavar="INDEX")
    info.add_argument("--json", action="store_true")

    from vladsearch.evaluation.evaluate import add_cli as add_evaluate

    add_evaluate(commands)
    from vladsearch.server.cli import add_cli as add_serve

    add_serve(commands)
    from vladsearch.collection import cli as duplicates_cli
    from vladsearch.collection import duplicate_actions, pairs

    duplicates_cli.add_cli(commands)
    duplicate_actions.add_cli(commands)  # undo, resume
    pairs.add_cli(commands)
    from vladsearch.live import cli as watch_cli

    watch_cli.add_cli(commands)
    return parser


def _print_report(report, as_json: bool, extra: dict | None = None, verbose: bool = False) -> None:
    data = {**(extra or {}), "indexed": report.indexed, "unchanged": report.unchanged, "replaced": report.replaced,
            "renamed": getattr(report, "renamed", 0),
            "skipped": [{"path": p, "reason": r} for p, r in report.skipped],
            "no_keypoints": report.no_keypoints,
            "not_images": [{"path": p, "reason": r} for p, r in report.not_images]}
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    line = f"indexed {report.indexed} images"
    if report.replaced:
        line += f" ({report.replaced} replacing changed files)"
    if report.unchanged:
        line += f", {report.unchanged} unchanged"
    if getattr(report, "renamed", 0):
        line += f", {report.renamed} renamed (moved files, not extracted again)"
    print(line)
    if report.no_keypoints:
        print(f"{len(report.no_keypoints)} images have no keypoints (indexed with a zero vector):")
        for path in report.no_keypoints:
            print(f"  {path}")
    if report.skipped:
        print(f"skipped {len(report.skipped)} files:")
        for path, reason in report.skipped:
            print(f"  {path}: {reason}")
    _print_not_images(report.not_images, verbose)


def _print_not_images(not_images: list[tuple[str, str]], verbose: bool) -> None:
    """'3 files are not images (.docx, .txt)', each listed with its reason when verbose."""
    if not not_images:
        return
    suffixes = sorted({os.path.splitext(path)[1].lower() or "no extension" for path, _ in not_images})
    shown = ", ".join(suffixes[:8]) + (", …" if len(suffixes) > 8 else "")
    noun = "file is not an image" if len(not_images) == 1 else "files are not images"
    print(f"{len(not_images)} {noun} ({shown})" + (":" if verbose else "; --verbose lists them"))
    if verbose:
        for path, reason in not_images:
            print(f"  {path}: {reason}")


def _cmd_build(args) -> int:
    from vladsearch.executors.ray import build_index
    from vladsearch.index import Index

    build = Index.build if args.ray is None else functools.partial(build_index, address=args.ray)
    preset = preset_with(args.preset, features=args.features, clusters=args.clusters, max_side=args.max_side)
    index = build(
        args.photos, index=args.index, force=args.force, features=preset.pop("features"), clusters=preset.pop("clusters"),
        weights=args.weights, workers=args.workers, progress=not args.quiet, max_side=preset.pop("max_side") or None,
        max_keypoints=args.max_keypoints, pca=args.pca, whiten=not args.no_whiten, intra=not args.no_intra,
        power=args.power, factory=args.factory, codebook_images=args.codebook_images, seed=args.seed,
        **({} if args.keep_features is None else {"keep_features": args.keep_features}), max_pixels=args.max_pixels or None,
        **{**preset, **({"feature_codes": "" if args.feature_codes == "none" else args.feature_codes} if args.feature_codes else {})})
    timings = {k: round(v, 3) for k, v in index.timings.items()}
    _print_report(index.report, args.json, {"index": args.index, **executor_report(index), "timings": timings},
                  args.verbose)
    if not args.json:
        print(f"wrote {args.index} ({index.report.indexed} vectors of {index.encoder.dim} dimensions); "
              + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return 0


def _cmd_search(args) -> int:
    from vladsearch.index import Index

    index = Index.open(args.index, weights=args.weights, root=args.root)
    options = SearchOptions(top=args.top, rerank=args.rerank, unverified=args.unverified,
                            min_confidence=args.min_confidence, mirrored=args.mirrored,
                            query_expansion=args.query_expansion, nprobe=args.nprobe)
    if options.rerank and not index.params.keep_features:
        print(f"hint: {args.index} keeps no local features, so every search decodes its candidates again; "
              f"rebuild it to cache them: vladsearch build PHOTOS_DIR --index {args.index} --force", file=sys.stderr)
    results = index.search(args.queries, options=options, workers=args.workers,
                           progress=not args.quiet and not args.json and not args.csv)
    if args.json:
        print(results_to_json(results))
    elif args.csv:
        sys.stdout.write(results_to_csv(results))
    else:
        print(results_to_table(results))
    return 1 if all(r.error for r in results) else 0


def _cmd_add(args) -> int:
    from vladsearch.index import Index

    index = Index.open(args.index, weights=args.weights, root=args.root)
    if args.ray is None:
        report = index.add(args.paths, workers=args.workers, progress=not args.quiet, merge=not args.no_merge)
    else:
        from vladsearch.executors.ray import add_images

        report = add_images(index, args.paths, address=args.ray, workers=args.workers, progress=not args.quiet,
                            merge=not args.no_merge)
    _print_report(report, args.json, {"index": args.index, **executor_report(index)}, args.verbose)
    return 0


def _cmd_remove(args) -> int:
    from vladsearch.index import Index

    index = Index.open(args.index)
    missing = index.remove(args.images)
    for path in missing:
        print(f"not in the index: {path}", file=sys.stderr)
    removed = len(args.images) - len(missing)
    print(f"removed {removed} images; {len(index.snapshot.loaded_ids)} remain")
    return 1 if missing else 0


def _cmd_compact(args) -> int:
    from vladsearch.index import Index

    index = Index.open(args.index)
    report = index.compact()
    print(f"merged {report.merged_segments} segments: {report.vectors} vectors kept, "
          f"{report.dropped_vectors} deleted ones dropped; {len(index.info()['segments'])} segment(s) now")
    return 0


def _cmd_check(args) -> int:
    from vladsearch.store.check import check_index

    problems, counts = check_index(args.index)
    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems, "counts": counts}, indent=2, ensure_ascii=False))
    else:
        for problem in problems:
            print(f"damaged: {problem}")
        if not problems:
            print(f"ok: {counts['images']} images, {counts['vectors']} vectors in {counts['segments']} segments, "
                  f"{counts['deletions']} deletions waiting for a merge")
    return 1 if problems else 0


def _cmd_info(args) -> int:
    from vladsearch.index import Index

    info = Index.open(args.index).info()
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    counts, params = info["counts"], info["params"]
    print(f"index      {args.index} (format {info['format_version']}, vladsearch {info['created_by']}; "
          f"created {info['created']}, last commit {info['updated']})")
    print(f"root       {info['root']}")
    print(f"images     {counts['indexed']} indexed, {counts['no_keypoints']} without keypoints, "
          f"{counts['skipped']} skipped; {counts['vectors']} vectors of {info['dim']} dimensions")
    print(f"segments   {counts['segments']} ({counts['deletions']} deleted vectors waiting for a merge)")
    print(f"features   {info['features'].get('name')} {json.dumps(info['features'])}")
    cache = info["verification_features"]
    if cache["keypoints_per_image"]:
        print(f"verify     {cache['keypoints_per_image']} features per image cached ({cache['descriptors']}): "
              f"{cache['bytes'] / 2**20:.1f} MiB, {cache['bytes_per_image'] / 1024:.1f} KiB per image")
    else:
        print(f"verify     no cached features: searches decode candidates again "
              f"(rebuild with `vladsearch build PHOTOS_DIR --index {args.index} --force` to cache them)")
    print(f"vlad       K={params['clusters']} power={params['power']} intra={params['intra']} "
          f"pca={params['pca'] or 'off'} whiten={params['whiten']}; faiss {params['factory']}")
    for row in info["skipped_files"]:
        print(f"skipped    {row['path']}: {row['reason']}")
    for path in info["no_keypoint_files"]:
        print(f"no kpts    {path}")
    return 0


COMMANDS = {"build": _cmd_build, "search": _cmd_search, "add": _cmd_add, "remove": _cmd_remove,
            "compact": _cmd_compact, "check": _cmd_check, "info": _cmd_info}


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = lambda message, *rest: print(f"vladsearch: warning: {message}", file=sys.stderr)
    handler = COMMANDS.get(args.command) or args.func  # subcommands of other modules set func
    try:
        return handler(args)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"vladsearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vladsearch: interrupted; the index keeps its last commit", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
