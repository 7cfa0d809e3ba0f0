"""Image pairs for 3D reconstruction: what hloc's `pairs_from_retrieval` and COLMAP's matchers read.

    vladsearch pairs INDEX --top K --output pairs.txt [--sequential N] [--verified]

Each indexed image is paired with K other images: from its `--shortlist S` (40) nearest by VLAD
(a batched kNN search of every vector against the index), the K with the most geometric inliers
(ties in VLAD order); `--shortlist 0`: simply the K nearest. `--sequential N` adds each image's N next images in name order
(video frames, COLMAP's sequential matcher); the retrieval pairs stay as loop closures (hloc
PR #441). The file has one `name0 name1` line per pair, names as indexed (relative to the
photos' folder: hloc's and COLMAP's image names when that folder is their image root), no
image paired with itself, and each unordered pair once. `--verified` keeps only pairs that
verify geometrically (fundamental matrix by default: the right model for a 3D scene).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vladsearch.io.arguments import non_negative_int, output_file, positive_int
from vladsearch.query.rerank import DEFAULT_MIN_INLIERS_BY_MODEL, MIN_SAMPLE
from vladsearch.store import catalog

if TYPE_CHECKING:
    from vladsearch.index import Index

QUERY_BLOCK = 1024
# Nearest images per image that are verified to choose its --top pairs (0: plain VLAD ranking).
# Measured in docs/BENCHMARKS.md ("pairs"): partner rate on homogr_pairs, oxford, corridor.
DEFAULT_SHORTLIST = 40


def sequential_pairs(count: int, window: int) -> list[tuple[int, int]]:
    """(i, j) positions with 0 < j - i ≤ window, for `count` images in name order."""
    return [(i, j) for i in range(count) for j in range(i + 1, min(count, i + window + 1))]


def unique_pairs(pairs) -> list[tuple[int, int]]:
    """Drop self pairs and repeats of an unordered pair; the first orientation seen is kept."""
    seen: set[tuple[int, int]] = set()
    out = []
    for a, b in pairs:
        key = (min(a, b), max(a, b))
        if a != b and key not in seen:
            seen.add(key)
            out.append((a, b))
    return out


def neighbour_lists(index: Index, ids: np.ndarray, depth: int, nprobe: int | None = None,
                    block: int = QUERY_BLOCK) -> Iterator[list[tuple[int, list[int]]]]:
    """Per block of queries: (query id, its `depth` nearest other images, best first)."""
    from vladsearch.collection.knn import CollectionSearch

    searcher = CollectionSearch(index, nprobe=nprobe)
    k = min(len(ids), depth + 1)
    for start in range(0, len(ids), block):
        chunk = ids[start:start + block]
        _, I = searcher.search_indexed(chunk, k)
        yield [(int(a), [int(b) for b in found if b >= 0 and b != a][:depth]) for a, found in zip(chunk, I)]


def retrieval_pairs(index: Index, ids: np.ndarray, top: int, nprobe: int | None = None,
                    block: int = QUERY_BLOCK) -> list[tuple[int, int]]:
    """(query id, neighbour id): each image's `top` nearest other images, best first."""
    return [(a, b) for lists in neighbour_lists(index, ids, top, nprobe, block) for a, others in lists
            for b in others]


def verified_first(others: list[int], inliers: dict[tuple[int, int], int], a: int, top: int) -> list[int]:
    """The `top` of a VLAD-ordered shortlist reranked by inliers (most first; ties keep the VLAD order)."""
    counts = [inliers.get((min(a, b), max(a, b)), 0) for b in others]
    return [others[r] for r in sorted(range(len(others)), key=lambda r: (-counts[r], r))[:top]]


def shortlist_pairs(index: Index, ids: np.ndarray, top: int, shortlist: int, model: str,
                    workers: int | None, nprobe: int | None = None,
                    block: int = QUERY_BLOCK) -> list[tuple[int, int]]:
    """(query id, neighbour id): each image's `top` pairs from its `shortlist` nearest, verified first.

    Every unordered pair of the shortlists is verified once (features from the cache, or
    re-extracted for each block of queries); an image's pairs are its shortlisted images
    with the most inliers (spatial reranking; ties, e.g. none at all, keep the VLAD order).
    Ranked, not thresholded: a hard wide-baseline partner may have only 7-24 fundamental
    inliers, barely above an unrelated image's 9-17, yet still the most.
    """
    from vladsearch.query.pair_verification import verify_pairs
    from vladsearch.query.verification import FeatureSource

    rows = {r["id"]: r for r in catalog.image_rows(index.snapshot.table) if r["segment"] is not None}
    source = FeatureSource.of_index(index, rows, workers)
    inliers: dict[tuple[int, int], int] = {}
    out = []
    for lists in neighbour_lists(index, ids, max(top, shortlist), nprobe, block):
        todo = list(dict.fromkeys((min(a, b), max(a, b)) for a, others in lists for b in others))
        todo = [p for p in todo if p not in inliers]
        for start in range(0, len(todo), 4 * QUERY_BLOCK):  # bounded memory without a feature cache
            chunk = todo[start:start + 4 * QUERY_BLOCK]
            source.load({i for pair in chunk for i in pair})
            for v in verify_pairs(chunk, source, workers, model=model):
                inliers[(v.a, v.b)] = v.inliers
        out += [(a, b) for a, others in lists for b in verified_first(others, inliers, a, top)]
    return out


def image_pairs(index: Index, top: int, sequential: int = 0, verified: bool = False, model: str = "fundamental",
                min_inliers: int | None = None, workers: int | None = None,
                nprobe: int | None = None, shortlist: int = DEFAULT_SHORTLIST) -> list[tuple[str, str]]:
    """The pairs as (name0, name1), names as indexed; see the module docstring."""
    if top < 0 or sequential < 0 or shortlist < 0:
        raise ValueError("--top, --sequential and --shortlist take a number of images ≥ 0")
    if top == 0 and sequential == 0:
        raise ValueError("nothing to pair: give --top K and/or --sequential N")
    if model not in MIN_SAMPLE:
        raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(MIN_SAMPLE)}")
    ids = index.snapshot.loaded_ids
    names = index.snapshot.paths_of([int(i) for i in ids])
    by_name = sorted(names, key=names.__getitem__)
    candidates = []
    if sequential:
        candidates += [(by_name[i], by_name[j]) for i, j in sequential_pairs(len(by_name), sequential)]
    if top and shortlist > top:
        candidates += shortlist_pairs(index, ids, top, shortlist, model, workers, nprobe)
    elif top:
        candidates += retrieval_pairs(index, ids, top, nprobe)
    pairs = unique_pairs(candidates)
    if verified:
        pairs = _verified(index, pairs, model, min_inliers, workers)
    position = {image_id: p for p, image_id in enumerate(by_name)}
    pairs.sort(key=lambda p: (position[p[0]], position[p[1]]) if position[p[0]] < position[p[1]]
               else (position[p[1]], position[p[0]]))
    return [(names[a], names[b]) for a, b in pairs]


def _verified(index: Index, pairs: list[tuple[int, int]], model: str, min_inliers: int | None,
              workers: int | None) -> list[tuple[int, int]]:
    from vladsearch.query.pair_verification import verify_pairs
    from vladsearch.query.verification import FeatureSource

    if min_inliers is None:
        min_inliers = DEFAULT_MIN_INLIERS_BY_MODEL[model]
    rows = {r["id"]: r for r in catalog.image_rows(index.snapshot.table) if r["segment"] is not None}
    source = FeatureSource.of_index(index, rows, workers)
    kept = []
    for start in range(0, len(pairs), 4 * QUERY_BLOCK):  # bounded memory without a feature cache
        chunk = pairs[start:start + 4 * QUERY_BLOCK]
        source.load({i for pair in chunk for i in pair})
        verdicts = verify_pairs(chunk, source, workers, min_inliers=min_inliers, model=model)
        kept += [pair for pair, v in zip(chunk, verdicts) if v.inliers >= min_inliers]
    return kept


def write_pairs(pairs: list[tuple[str, str]], output: Path) -> None:
    """One `name0 name1` line per pair. Names with spaces cannot be written in this format."""
    spaced = [name for pair in pairs for name in pair if any(c.isspace() for c in name)]
    if spaced:
        raise ValueError(f"{len(spaced)} image names contain white space, which the pairs format cannot hold "
                         f"(e.g. {spaced[0]!r}); rename those files or folders")
    Path(output).write_text("".join(f"{a} {b}\n" for a, b in pairs), encoding="utf-8")


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `pairs` subcommand on an argparse subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "pairs", help="write image pairs to match for 3D reconstruction (hloc / COLMAP pairs file)",
        description="Write one 'name0 name1' line per image pair: each image with its K nearest other images, "
                    "optionally its N neighbours in name order; names as indexed; each pair once.")
    parser.add_argument("index", metavar="INDEX")
    parser.add_argument("--top", "-k", type=non_negative_int, default=20, metavar="K",
                        help="nearest other images per image (default 20; 0 with --sequential: none)")
    parser.add_argument("--output", "-o", type=output_file, required=True, metavar="PAIRS.txt")
    parser.add_argument("--shortlist", type=non_negative_int, default=DEFAULT_SHORTLIST, metavar="S",
                        help=f"choose each image's K pairs among its S nearest, reranked by geometric inliers "
                             f"(default {DEFAULT_SHORTLIST}; 0: the K nearest by VLAD alone, no verification)")
    parser.add_argument("--sequential", type=non_negative_int, default=0, metavar="N",
                        help="also pair each image with its N next images in name order (video frames)")
    parser.add_argument("--verified", action="store_true", help="keep only pairs that verify geometrically")
    parser.add_argument("--model", choices=list(MIN_SAMPLE), default="fundamental",
                        help="the geometric model of --verified and --shortlist (default fundamental)")
    parser.add_argument("--min-inliers", type=positive_int, default=None, metavar="N",
                        help="with --verified: inliers needed (default 30 for fundamental, 15 for homography)")
    parser.add_argument("--nprobe", type=positive_int, default=None, help="IVF indexes: lists to visit per query")
    parser.add_argument("--root", metavar="PHOTOS_DIR", help="where the indexed photos are now")
    parser.add_argument("--workers", type=positive_int, default=None, help="processes (default: all cores)")
    parser.set_defaults(func=run_cli)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    from vladsearch.index import Index

    index = Index.open(args.index, root=args.root)
    pairs = image_pairs(index, args.top, args.sequential, args.verified, args.model, args.min_inliers,
                        args.workers, args.nprobe, args.shortlist)
    write_pairs(pairs, Path(args.output))
    print(f"wrote {len(pairs)} pairs of {len(index.snapshot.loaded_ids)} images to {args.output}")
    return 0
