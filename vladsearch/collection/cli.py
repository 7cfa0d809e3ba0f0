"""The `vladsearch duplicates` verb's command line: its flags, the `--move-to` command it suggests, and its run.

What it prints is report.py's; the groups are duplicates.py's; moving the extras aside is
duplicate_actions.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vladsearch.collection.duplicates import (
    DEFAULT_MIN_INLIERS,
    DEFAULT_MIN_SIMILARITY,
    DEFAULT_NEIGHBORS,
    DEFAULT_SCREEN_INLIERS,
    DEFAULT_SCREEN_KEYPOINTS,
    GROUPINGS,
    find_duplicates,
)
from vladsearch.collection.knn import KNN_MODES
from vladsearch.collection.report import report_to_csv, report_to_dict, report_to_table, write_html
from vladsearch.io.arguments import non_negative_int, output_file, positive_int


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `duplicates` subcommand on an argparse subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "duplicates", help="find every group of near-duplicate images in an index",
        description="Group the indexed images that are copies of each other (exact, rescaled, cropped, rotated, "
                    "mirrored, captioned, recoloured) and suggest which one to keep in each group (the original: "
                    "un-turned, un-mirrored, largest, richest EXIF, oldest). Nothing is deleted; --move-to moves "
                    "the others aside, and `vladsearch undo MANIFEST` puts them back.")
    parser.add_argument("index", metavar="INDEX")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the groups as JSON")
    output.add_argument("--csv", action="store_true", help="print one line per image: group, path, keep, size")
    parser.add_argument("--html", type=output_file, metavar="REPORT.html", help="also write a one-page report with thumbnails")
    parser.add_argument("--neighbors", type=positive_int, default=DEFAULT_NEIGHBORS, metavar="K",
                        help=f"nearest images of each image that are verified (default {DEFAULT_NEIGHBORS})")
    parser.add_argument("--min-inliers", type=positive_int, default=DEFAULT_MIN_INLIERS, metavar="N",
                        help=f"homography inliers for a verified pair (default {DEFAULT_MIN_INLIERS})")
    parser.add_argument("--min-similarity", type=float, default=DEFAULT_MIN_SIMILARITY, metavar="S",
                        help=f"skip neighbours whose VLAD similarity is below S (default {DEFAULT_MIN_SIMILARITY})")
    parser.add_argument("--screen", type=non_negative_int, default=DEFAULT_SCREEN_KEYPOINTS, metavar="N",
                        help=f"first match only the N strongest features of each image; pairs under "
                             f"--screen-inliers there are rejected (default {DEFAULT_SCREEN_KEYPOINTS}; 0: off)")
    parser.add_argument("--screen-inliers", type=non_negative_int, default=DEFAULT_SCREEN_INLIERS, metavar="M",
                        help=f"inliers the first pass needs (default {DEFAULT_SCREEN_INLIERS})")
    parser.add_argument("--grouping", choices=GROUPINGS, default="keep",
                        help="keep: every member verified against the kept image (default); "
                             "components: connected components of verified pairs")
    parser.add_argument("--no-mirror", action="store_true", help="do not verify mirrored copies (SIFT)")
    parser.add_argument("--nprobe", type=positive_int, default=None, help="IVF indexes: lists to visit per query")
    parser.add_argument("--knn", choices=KNN_MODES, default="auto",
                        help="how each image's neighbours are found: auto (over 5,000 images through binary "
                             "codes of the stored vectors, else the index itself; default), index (always the "
                             "index as built, e.g. --preset large's compact codes), or codes")
    parser.add_argument("--root", metavar="PHOTOS_DIR", help="where the indexed photos are now")
    parser.add_argument("--workers", type=positive_int, default=None, help="processes (default: all cores)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    actions = parser.add_argument_group("safe actions (docs/DUPLICATES.md; nothing is ever deleted)")
    actions.add_argument("--prefer", action="append", default=[], metavar="FOLDER",
                         help="keep the image under this folder (an album) when a group has one; repeat: the "
                              "first folder given wins")
    actions.add_argument("--move-to", metavar="DIR", help="move every image but the kept one of each group under DIR "
                                                         "(its path relative to the photos' folder kept); the index "
                                                         "follows; `vladsearch undo MANIFEST` puts them back")
    actions.add_argument("--dry-run", action="store_true", help="with --move-to: show what would move, change nothing")
    actions.add_argument("--manifest", metavar="FILE", help="with --move-to: where to write the manifest (default: "
                                                           "DIR/vladsearch-moves-DATE.json)")
    parser.set_defaults(func=run_cli)
    return parser


def move_command(args: argparse.Namespace, move_to: str) -> str:
    """The `duplicates … --move-to` command line that finds the same groups again and moves their extras."""
    import shlex

    words = ["vladsearch", "duplicates", os.path.abspath(args.index)]
    for flag, value, default in (("--root", args.root and os.path.abspath(args.root), None),
                                 ("--neighbors", args.neighbors, DEFAULT_NEIGHBORS),
                                 ("--min-inliers", args.min_inliers, DEFAULT_MIN_INLIERS),
                                 ("--min-similarity", args.min_similarity, DEFAULT_MIN_SIMILARITY),
                                 ("--screen", args.screen, DEFAULT_SCREEN_KEYPOINTS),
                                 ("--screen-inliers", args.screen_inliers, DEFAULT_SCREEN_INLIERS),
                                 ("--grouping", args.grouping, "keep"), ("--knn", args.knn, "auto"),
                                 ("--nprobe", args.nprobe, None)):
        if value != default:
            words += [flag, str(value)]
    words += ["--no-mirror"] if args.no_mirror else []
    for folder in args.prefer:
        words += ["--prefer", os.path.abspath(folder) if os.path.isdir(folder) else folder]
    return shlex.join(words + ["--move-to", os.path.abspath(move_to)])


def _suggested_move_to(root: Path) -> str:
    """A folder beside the photos' folder (outside it, so that `add` of the photos does not bring the extras back)."""
    root = Path(os.path.abspath(root))
    return str(root.parent / f"{root.name}-duplicates")


def run_cli(args: argparse.Namespace) -> int:
    from vladsearch.collection import duplicate_actions
    from vladsearch.index import Index

    if (args.dry_run or args.manifest) and not args.move_to:
        raise ValueError("--dry-run and --manifest go with --move-to DIR (the folder that receives the extras)")
    index = Index.open(args.index, root=args.root)
    if args.move_to:
        duplicate_actions.check_move_to(Path(args.move_to), index)  # before the long part
    report = find_duplicates(index, neighbors=args.neighbors, min_inliers=args.min_inliers,
                             min_similarity=args.min_similarity, grouping=args.grouping,
                             mirror=False if args.no_mirror else None, workers=args.workers,
                             progress=not args.quiet, nprobe=args.nprobe,  # bars go to stderr
                             screen=args.screen, screen_inliers=args.screen_inliers, knn=args.knn,
                             prefer=args.prefer)
    if args.html:
        write_html(report, Path(args.html), index.root,
                   command=move_command(args, args.move_to or _suggested_move_to(index.root)))
    data = report_to_dict(report)
    actions = None
    if args.move_to:
        actions = duplicate_actions.run(index, duplicate_actions.groups_of(data), args.move_to, args.manifest,
                                        dry_run=args.dry_run)
    if args.json:
        print(json.dumps({**data, "actions": actions} if actions else data, indent=2, ensure_ascii=False))
    elif args.csv:
        sys.stdout.write(report_to_csv(report))
        if actions:
            print(duplicate_actions.summary_to_text(actions), file=sys.stderr)
    else:
        print(report_to_table(report))
        if actions:
            print(duplicate_actions.summary_to_text(actions))
        if args.html:
            print(f"wrote {args.html}")
    return 1 if actions and any(e.get("problem") for e in actions["entries"]) else 0
