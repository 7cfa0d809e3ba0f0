"""`vladsearch check`: verify an index's catalog, segments, ids and counts; name what is damaged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from vladsearch.encoding.encoder import BuildParams, Encoder
from vladsearch.store import catalog, migration, segments
from vladsearch.store.feature_store import COMPACT_KEYPOINT_DTYPE, KEYPOINT_DTYPE


def check_index(index_dir: str | Path) -> tuple[list[str], dict[str, int]]:
    """(problems, counts): every problem names the file or row at fault; none means sound."""
    index_dir = Path(index_dir)
    if migration.is_format1(index_dir):
        return ["format 1 index: it opens as is; run `vladsearch compact` to migrate it, then check again"], {}
    db = catalog.connect(index_dir, readonly=True)
    problems: list[str] = []
    try:
        verdict = db.execute("PRAGMA integrity_check").fetchall()
        if verdict != [("ok",)]:
            problems += [f"{catalog.catalog_path(index_dir)}: {row[0]}" for row in verdict[:20]]
        meta = catalog.read_meta(db)
        encoder = Encoder(BuildParams.from_dict(meta["params"]), meta["features"])
        try:
            encoder.load_blobs(catalog.read_blob(db, "codebook.npy"), catalog.read_blob(db, "pca.npz"),
                               descriptor_pq=catalog.read_blob(db, "descriptor_pq.faiss"))
        except (TypeError, ValueError, OSError) as exc:
            problems.append(f"{catalog.catalog_path(index_dir)}: codebook or projection unreadable ({exc})")
            return problems, {}
        dim, feature_dim = meta["dim"], int(meta["features"].get("dim") or 0) or None
        live = {s["name"]: s for s in catalog.live_segments(db)}
        for segment in live.values():
            problems += segments.verify_segment(index_dir, segment, dim, feature_dim, encoder.descriptor_codec)
        keypoint_bytes = 2 * (COMPACT_KEYPOINT_DTYPE if encoder.descriptor_codec is not None else KEYPOINT_DTYPE).itemsize
        problems += _check_rows(db, index_dir, live, feature_dim, keypoint_bytes)
        on_disk = {p.name for p in (index_dir / segments.SEGMENTS_DIR).iterdir()} \
            if (index_dir / segments.SEGMENTS_DIR).is_dir() else set()
        known = {name for (name,) in db.execute("SELECT name FROM segments")}
        counts = {"images": catalog.count_images(db), "segments": len(live),
                  "vectors": db.execute("SELECT COUNT(*) FROM images WHERE segment IS NOT NULL").fetchone()[0],
                  "deletions": db.execute("SELECT COUNT(*) FROM deletions").fetchone()[0],
                  "leftover_folders": len(on_disk - known)}
    except sqlite3.DatabaseError as exc:
        problems.append(f"{catalog.catalog_path(index_dir)}: unreadable ({exc})")
        return problems, {}
    finally:
        db.close()
    return problems, counts


def _check_rows(db: sqlite3.Connection, index_dir: Path, live: dict, feature_dim: int | None,
                keypoint_bytes: int = 8) -> list[str]:
    problems = []
    seen: set[tuple[str, int]] = set()
    for row in catalog.image_rows(db):
        where = f"image {row['id']} ({row['path']})"
        if row["segment"] is None:
            if row["status"] != catalog.STATUS_SKIPPED:
                problems.append(f"{where}: indexed but in no segment")
            continue
        segment = live.get(row["segment"])
        if segment is None:
            problems.append(f"{where}: names segment {row['segment']}, which is not live")
            continue
        if row["row"] is None or not 0 <= row["row"] < segment["vectors"]:
            problems.append(f"{where}: row {row['row']} outside segment {row['segment']} ({segment['vectors']} rows)")
        if (row["segment"], row["row"]) in seen:
            problems.append(f"{where}: shares row {row['row']} of {row['segment']} with another image")
        seen.add((row["segment"], row["row"]))
        if row["feat_count"] is not None and segment["features"] and feature_dim:
            store = segments.segment_dir(index_dir, row["segment"])
            rows_there = (store / "keypoints.bin").stat().st_size // keypoint_bytes if (store / "keypoints.bin").exists() else 0
            if row["feat_offset"] + row["feat_count"] > rows_there:
                problems.append(f"{where}: cached features beyond the end of {store / 'keypoints.bin'}")
    return problems
