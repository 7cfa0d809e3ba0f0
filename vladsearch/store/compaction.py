"""Merging segments: fewer files, deleted vectors dropped (Lucene's merge, on our commit protocol).

A merge reads the live rows of some segments (opened under the readers lock, so no other
merge can delete them under it), writes them into one new staged segment, and commits in
one transaction: the images point to their new rows, the old segments are marked
dropped, and their files go once no reader is taking a snapshot. Rows deleted while the
merge ran stay dead: readers load only rows that the image table names.

After each build and add the orchestrator merges by a log policy (Lucene's LogMergePolicy): segments
whose sizes share a power of MERGE_FACTOR form a level; a level holding MERGE_FACTOR
segments merges into one of the next level. Each vector is thus rewritten about
log_MERGE_FACTOR(N) times in all, and a collection never holds more than about
(MERGE_FACTOR - 1) segments per level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vladsearch.encoding.encoder import Encoder
from vladsearch.features.base import Features
from vladsearch.store import catalog, segments
from vladsearch.store.transaction import transaction

MERGE_FACTOR = 10


@dataclass
class MergeReport:
    merged_segments: int = 0
    vectors: int = 0
    dropped_vectors: int = 0


def _level(vectors: int) -> int:
    return int(math.log(max(vectors, 1), MERGE_FACTOR))


def segments_to_merge(live: list[dict]) -> list[str]:
    """The lowest level that holds MERGE_FACTOR segments (empty: nothing to merge)."""
    levels: dict[int, list[str]] = {}
    for segment in live:
        levels.setdefault(_level(segment["vectors"]), []).append(segment["name"])
    for level in sorted(levels):
        if len(levels[level]) >= MERGE_FACTOR:
            return levels[level][:MERGE_FACTOR]
    return []


def merge(index_dir: Path, encoder: Encoder, names: list[str] | None = None) -> MergeReport:
    """Merge the named live segments (None: all of them) into one; returns what moved.

    encoder: the index's, which says how its segments are laid out: vector dimension and
    type (float32, or float16 for --preset large), local-feature cache and its codec, and
    compact codes (copied, not recomputed).
    """
    index_dir = Path(index_dir)
    p = encoder.params
    dim, dtype, keep_features, feature_codec = encoder.dim, p.vector_dtype, p.keep_features, encoder.descriptor_codec
    feature_dim = encoder.feature_dim if keep_features else None
    code_size = encoder.coder.code_size if encoder.coder is not None else 0
    db = catalog.connect(index_dir)
    try:
        db.execute("BEGIN")  # one read snapshot of segments and rows
        live = {s["name"]: s for s in catalog.live_segments(db)}
        chosen = [n for n in (names if names is not None else list(live)) if n in live]
        rows = {n: db.execute("SELECT id, row, feat_offset, feat_count FROM images WHERE segment = ? ORDER BY row",
                              (n,)).fetchall() for n in chosen}
        deleted = sum(db.execute("SELECT COUNT(*) FROM deletions WHERE segment = ?", (n,)).fetchone()[0]
                      for n in chosen)
        db.execute("COMMIT")
        if len(chosen) < 2 and not deleted:
            return MergeReport()
        with catalog.readers_lock(index_dir):
            sources = {n: segments.open_vectors(index_dir, n, dim, live[n]["vectors"], dtype) for n in chosen}
            codes = {n: segments.open_codes(index_dir, n, live[n]["vectors"], code_size) for n in chosen} \
                if code_size else {}
            stores = {n: segments.open_features(index_dir, n, feature_dim, feature_codec) for n in chosen
                      if live[n]["features"] and feature_dim}
        report = MergeReport(len(chosen))
        with segments.Staging(index_dir) as staging:
            writer = staging.new_segment(dim, feature_dim if stores else None, keep_features or None, dtype,
                                         feature_codec=feature_codec)
            moves = []
            for name in chosen:
                live_rows = np.array(rows[name], dtype=object).reshape(-1, 4)
                for start in range(0, len(live_rows), 4096):
                    chunk = live_rows[start:start + 4096]
                    rows_here = chunk[:, 1].astype(np.int64)
                    first = writer.append(np.asarray(sources[name][rows_here], np.float32),
                                          codes=codes[name][rows_here] if codes else None)
                    for k, (image_id, _, offset, count) in enumerate(chunk):
                        new_offset = new_count = None
                        if name in stores and count is not None:
                            keypoints, descriptors = stores[name].get(int(offset), int(count))
                            order = -np.arange(len(keypoints), dtype=np.float32)  # keep the stored order
                            new_offset, new_count = writer.features.append(
                                Features(keypoints, descriptors, order, (0, 0)), max_keypoints=None)
                        moves.append((writer.name, first + k, new_offset, new_count, int(image_id), name))
                report.vectors += len(live_rows)
                report.dropped_vectors += live[name]["vectors"] - len(live_rows)
            staged = writer.finish()
            _commit_merge(index_dir, db, staged, chosen, moves)
        return report
    finally:
        db.close()


def _commit_merge(index_dir: Path, db, staged: segments.StagedSegment, chosen: list[str], moves: list) -> None:
    with transaction(index_dir, "merge", db) as tx:
        still_live = {s["name"] for s in catalog.live_segments(db)}
        if not set(chosen) <= still_live:
            tx.record = False
            return  # another merge took these segments first: ours is discarded with the staging area
        tx.publish([staged])
        db.executemany("UPDATE images SET segment = ?, row = ?, feat_offset = ?, feat_count = ? "
                       "WHERE id = ? AND segment = ?", moves)
        tx.drop_segments(chosen)
        marks = ", ".join("?" * len(chosen))
        # Rows deleted while we merged were copied: their deletions now concern the new segment.
        db.executemany(f"UPDATE deletions SET segment = ? WHERE id = ? AND segment IN ({marks})",
                       [(staged.name, move[4], *chosen) for move in moves])
        db.execute(f"DELETE FROM deletions WHERE segment IN ({marks})", chosen)


def auto_merge(index_dir: Path, encoder: Encoder) -> int:
    """Merge by the log policy until no level is full; returns the merges done (encoder: see `merge`)."""
    merges = 0
    while True:
        db = catalog.connect(index_dir, readonly=True)
        try:
            chosen = segments_to_merge(catalog.live_segments(db))
        finally:
            db.close()
        if not chosen:
            return merges
        merge(index_dir, encoder, chosen)
        merges += 1
