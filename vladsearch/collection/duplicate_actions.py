"""Safe actions on duplicate groups: move the extras aside, complete an interrupted move, undo.

    vladsearch duplicates INDEX --move-to DIR [--dry-run] [--manifest FILE] [--prefer FOLDER]
    vladsearch undo MANIFEST        # every moved file back, byte-identical; the index follows
    vladsearch resume MANIFEST      # finish a move (or an undo) that a crash or kill -9 cut short

Every group member except its keep moves under DIR at its path relative to the index's root
(an image indexed by absolute path goes under DIR/_absolute/...). The index keeps each moved
image's entry under its new path (`Index.rename`: no extraction). Nothing is deleted: the
manifest (file_moves.py) is written before the first move and after every batch, each move
never overwrites, and a file whose SHA-1 is not the one indexed is left where it is. The
command line, the HTML report's command and the server's POST /api/duplicates/move and
/api/undo all go through `plan_moves` and `apply`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vladsearch.collection.file_moves import (
    CHANGED,
    CONFLICT,
    LEFT_ALONE,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    MISSING,
    MOVED,
    PLANNED,
    RESTORED,
    SYMLINK,
    MoveRefused,
    count_states,
    default_manifest_path,
    file_sha1,
    manifest_lock,
    read_manifest,
    settle,
    where_is,
    write_manifest,
)
from vladsearch.store import catalog
from vladsearch.store.moves import indexed_file

if TYPE_CHECKING:
    from vladsearch.index import Index

ABSOLUTE_FOLDER = "_absolute"  # under DIR: images indexed by absolute path (added from elsewhere)
BATCH = 64  # moves between two index commits and manifest writes


def indexed_name(path: Path, root: Path) -> str:
    """The index's name for a file at `path`: relative to the root when under it, else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return absolute.as_posix()


def target_for(name: str, move_to: Path) -> Path:
    """Where an indexed image goes under DIR: its relative path kept."""
    if os.path.isabs(name):
        path = Path(name)
        return move_to / ABSOLUTE_FOLDER / path.relative_to(path.anchor)
    return move_to / name


def check_move_to(move_to: Path, index: Index) -> Path:
    """DIR as an absolute path; ValueError when it is the photos' folder itself or inside the index."""
    move_to = Path(os.path.abspath(move_to))
    root, index_dir = Path(os.path.abspath(index.root)), Path(os.path.abspath(index.path))
    if move_to == root:
        raise ValueError(f"--move-to {move_to} is the photos' folder itself: give another folder "
                         "(e.g. a sibling such as ../duplicates)")
    if move_to == index_dir or index_dir in move_to.parents:
        raise ValueError(f"--move-to {move_to} is inside the index directory {index_dir}: give another folder")
    return move_to


# --- the plan ----------------------------------------------------------------------------
def plan_moves(index: Index, groups: Sequence[tuple[str, Sequence[str]]], move_to: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a move (nothing changed yet): groups are (keep, [extras]) in indexed names.

    Each extra is hashed now: one whose SHA-1 differs from the catalog's (changed since it was
    indexed), whose file is missing or a symbolic link, or whose target exists, is recorded as
    left alone with the reason.
    """
    move_to = check_move_to(Path(move_to), index)
    root = Path(os.path.abspath(index.root))
    db = catalog.connect(index.path, readonly=True)
    inside = [(keep, name) for keep, extras in groups for name in extras]
    waiting = [(keep, name) for keep, name in inside if move_to not in indexed_file(root, name).parents]
    try:  # an extra already under DIR (moved there before, still indexed there) stays where it is
        entries = [_plan_entry(db, root, move_to, keep, name) for keep, name in waiting]
    finally:
        db.close()
    taken: set[str] = set()
    for entry in entries:  # two extras cannot share a target (e.g. "_absolute/…" indexed both ways)
        if entry["state"] == PLANNED and entry["new"] in taken:
            entry.update(state=CONFLICT, reason=f"{entry['new']} is the target of another image too")
        taken.add(entry["new"])
    return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "action": "move-extras",
            "state": "planned", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "index": str(Path(os.path.abspath(index.path))), "root": str(root), "move_to": str(move_to),
            "already_there": len(inside) - len(waiting), "entries": entries}


def _plan_entry(db, root: Path, move_to: Path, keep: str, name: str) -> dict[str, Any]:
    old, new = indexed_file(root, name), target_for(name, move_to)
    row = catalog.find_image(db, name)
    sha1 = (row or {}).get("sha1")
    entry = {"image": name, "new_image": indexed_name(new, root), "old": str(old), "new": str(new),
             "sha1": sha1, "size": (row or {}).get("file_size"), "keep": keep, "state": PLANNED}
    if row is None or not sha1:
        return {**entry, "state": MISSING, "reason": f"{name} is not in the index (or has no content hash)"}
    if os.path.islink(old):
        return {**entry, "state": SYMLINK, "reason": f"{old} is a symbolic link: left alone"}
    if not old.is_file():
        return {**entry, "state": MISSING, "reason": f"{old} does not exist"}
    try:
        current = file_sha1(old)
    except OSError as exc:
        return {**entry, "state": MISSING, "reason": f"cannot read {old}: {exc}"}
    if current != sha1:
        return {**entry, "state": CHANGED, "reason": f"{name} changed since it was indexed (SHA-1 {current[:12]}… "
                                                     f"instead of {sha1[:12]}…): left alone; `vladsearch add` it first"}
    if os.path.lexists(new):
        return {**entry, "state": CONFLICT, "reason": f"{new} already exists: not overwritten"}
    return entry


# --- doing it ----------------------------------------------------------------------------
def apply(manifest: dict[str, Any], manifest_path: Path, index: Index, direction: str = "forward",
          fresh: bool = False) -> dict[str, Any]:
    """Move every entry's file (forward: old → new; back: new → old), then its index entry, in batches.

    The manifest is written before the first file moves and after every batch. fresh: the
    plan was hashed just now (forward moves need not hash the sources again).
    """
    if direction not in ("forward", "back"):
        raise ValueError(f"direction must be 'forward' or 'back', not {direction!r}")
    with manifest_lock(manifest_path):
        return _apply(manifest, manifest_path, index, direction, fresh)


def _apply(manifest: dict[str, Any], manifest_path: Path, index: Index, direction: str, fresh: bool) -> dict[str, Any]:
    manifest["state"] = "moving" if direction == "forward" else "undoing"
    write_manifest(manifest_path, manifest)  # durable before anything moves
    active = [e for e in manifest["entries"] if e["state"] not in LEFT_ALONE]
    for start in range(0, len(active), BATCH):
        batch = active[start:start + BATCH]
        done = [e for e in batch if _settle_entry(e, direction, fresh)]
        _rename_in_index(index, done, direction)
        write_manifest(manifest_path, manifest)
    manifest["state"] = "moved" if direction == "forward" else "undone"
    write_manifest(manifest_path, manifest)
    return summary(manifest, manifest_path, direction=direction)


def _settle_entry(entry: dict[str, Any], direction: str, fresh: bool) -> bool:
    """Bring one entry's file to its side; True when it lies there now."""
    if direction == "forward":
        source, target, done_state = Path(entry["old"]), Path(entry["new"]), MOVED
    else:
        source, target, done_state = Path(entry["new"]), Path(entry["old"]), RESTORED
        if where_is(entry) == "old":  # never moved, or already back
            entry["state"] = RESTORED if entry["state"] in (MOVED, RESTORED) else entry["state"]
            return entry["state"] == RESTORED
    try:
        # back: restore even a file edited after the move (it is the user's; the index re-reads it on add)
        settle(source, target, entry["sha1"], checked=fresh or direction == "back")
    except MoveRefused as refused:
        if direction == "back" or refused.state != CHANGED or entry["state"] != PLANNED:
            entry["problem"] = str(refused)  # the entry stays actionable: a later run may finish it
            return False
        entry.update(state=refused.state, reason=str(refused))
        return False
    except OSError as exc:
        entry["problem"] = f"{source}: {exc}"
        return False
    entry.pop("problem", None)
    entry["state"] = done_state
    return True


def _rename_in_index(index: Index, entries: list[dict[str, Any]], direction: str) -> None:
    """Rename the index entries of files that moved, where the catalog still has the other name."""
    pairs = [(e["image"], e["new_image"]) if direction == "forward" else (e["new_image"], e["image"]) for e in entries]
    if not pairs:
        return
    db = catalog.connect(index.path, readonly=True)
    try:
        moves = {old: new for old, new in pairs
                 if catalog.find_image(db, old) is not None and catalog.find_image(db, new) is None}
    finally:
        db.close()
    if moves:
        index.rename(moves)


def run(index: Index, groups: Sequence[tuple[str, Sequence[str]]], move_to: str | os.PathLike,
        manifest_path: str | os.PathLike | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Plan and (unless dry_run) move the extras of `groups`; the summary (see `summary`)."""
    manifest = plan_moves(index, groups, move_to)
    path = Path(manifest_path) if manifest_path else default_manifest_path(Path(manifest["move_to"]))
    if dry_run:
        return summary(manifest, None, dry_run=True)
    if path.exists():
        raise ValueError(f"manifest {path} already exists: give another --manifest (it records an earlier action)")
    return apply(manifest, Path(os.path.abspath(path)), index, "forward", fresh=True)


def open_manifest_index(manifest: dict[str, Any]) -> Index:
    from vladsearch.index import Index

    return Index.open(manifest["index"], root=manifest.get("root"))


def undo(manifest_path: str | os.PathLike, index: Index | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Put every file a manifest moved back where it was, byte-identical, and rename its index entry back."""
    manifest = read_manifest(manifest_path)
    if dry_run:
        return summary(manifest, Path(manifest_path), dry_run=True, direction="back")
    return apply(manifest, Path(manifest_path), index or open_manifest_index(manifest), "back")


def resume(manifest_path: str | os.PathLike, index: Index | None = None) -> dict[str, Any]:
    """Finish what a manifest's last action began (a move, or an undo) after a crash or kill -9."""
    manifest = read_manifest(manifest_path)
    direction = "back" if manifest.get("state") in ("undoing", "undone") else "forward"
    return apply(manifest, Path(manifest_path), index or open_manifest_index(manifest), direction)


def summary(manifest: dict[str, Any], manifest_path: Path | None, dry_run: bool = False,
            direction: str = "forward") -> dict[str, Any]:
    """What an action did (or, dry run, would do): counts per state, each entry, the manifest's path."""
    entries = manifest["entries"]
    return {"manifest": str(manifest_path) if manifest_path else None, "dry_run": dry_run,
            "state": manifest.get("state"), "direction": direction, "move_to": manifest.get("move_to"),
            "index": manifest.get("index"), "counts": count_states(entries),
            "entries": [{k: e.get(k) for k in ("image", "new_image", "old", "new", "sha1", "keep", "state",
                                                "reason", "problem") if e.get(k) is not None} for e in entries]}


def summary_to_text(result: dict[str, Any]) -> str:
    """Lines for a person: each move, each file left alone and why, where the manifest is, how to undo."""
    lines = []
    dry = result["dry_run"]
    forward = result["direction"] == "forward"
    for e in result["entries"]:
        if e["state"] in LEFT_ALONE:
            lines.append(f"  left alone: {e['image']}: {e.get('reason', e['state'])}")
        elif e.get("problem"):
            lines.append(f"  not done:   {e['image']}: {e['problem']}")
        elif forward:
            lines.append(f"  {'would move' if dry else 'moved'}: {e['old']} -> {e['new']}")
        else:
            lines.append(f"  {'would restore' if dry else 'restored'}: {e['new']} -> {e['old']}")
    counts = result["counts"]
    unfinished = sum(1 for e in result["entries"] if e.get("problem"))
    if dry:
        todo = counts.get(PLANNED, 0) if forward else counts.get(MOVED, 0)
        lines.append(f"dry run: {todo} files would {'move under ' + str(result['move_to']) if forward else 'go back'}; "
                     "nothing was changed.")
    elif forward:
        lines.append(f"moved {counts.get(MOVED, 0)} files under {result['move_to']} (the index follows them); "
                     f"manifest: {result['manifest']}")
        lines.append(f"undo with: vladsearch undo {result['manifest']}")
    else:
        lines.append(f"restored {counts.get(RESTORED, 0)} files to their old paths (the index follows them); "
                     f"manifest: {result['manifest']}")
    left = sum(counts.get(s, 0) for s in LEFT_ALONE)
    if left:
        lines.append(f"{left} files were left alone (reasons above). Nothing was deleted.")
    if unfinished and not dry:
        lines.append(f"{unfinished} files could not be moved yet (above); fix the cause and run "
                     f"`vladsearch resume {result['manifest']}`. Nothing was deleted.")
    return "\n".join(lines)


def groups_of(report_dict: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(keep, extras) of each group of `duplicates --json` (or GET /api/duplicates)."""
    return [(g["keep"], list(g["remove"])) for g in report_dict["groups"]]


# --- command line ------------------------------------------------------------------------
def add_cli(subparsers) -> None:
    """Register `undo` and `resume` on an argparse subparsers object."""
    for name, text in (("undo", "put back every file a `duplicates --move-to` moved (from its manifest), "
                                "byte-identical, and rename its index entries back"),
                       ("resume", "finish a `duplicates --move-to` (or an undo) that a crash or kill cut short, "
                                  "from its manifest")):
        parser = subparsers.add_parser(name, help=text, description=text + ". Nothing is ever deleted.")
        parser.add_argument("manifest", metavar="MANIFEST", help="the JSON manifest the move printed")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
        if name == "undo":
            parser.add_argument("--dry-run", action="store_true", help="show what would go back; change nothing")
        parser.set_defaults(func=run_undo_cli if name == "undo" else run_resume_cli)


def run_undo_cli(args) -> int:
    return _print(undo(args.manifest, dry_run=args.dry_run), args.json)


def run_resume_cli(args) -> int:
    return _print(resume(args.manifest), args.json)


def _print(result: dict[str, Any], as_json: bool) -> int:
    import json

    print(json.dumps(result, indent=2, ensure_ascii=False) if as_json else summary_to_text(result))
    return 1 if any(e.get("problem") for e in result["entries"]) else 0
