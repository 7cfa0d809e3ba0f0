"""Which image of a duplicate group to keep: the original before its edited copies.

The order, best first (`keep_order`):
1. an image under a `--prefer` folder (the first such folder wins);
2. the orientation most of the group shares: a verified copy pair knows whether one side is
   mirrored and by how many quarter turns the other is turned (pair_verification), so every
   member's orientation relative to one of them follows along the copy edges; the members in
   the most common orientation (counting byte-identical copies) are un-rotated and un-mirrored,
   the others are the turned or flipped copies. A tie (two images, one turned) says nothing;
3. most pixels (a crop or a downscale is smaller);
4. richer EXIF (more tags: editors and messengers drop them), then the older capture date
   (EXIF DateTimeOriginal), for the files whose EXIF sits in their header (JPEG, TIFF, WebP);
5. the older file (modification time: a copy is written after its original), then the larger
   file, then the path.
An overlaid caption or logo is not recognised (it changes neither orientation nor size).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vladsearch.query.pair_verification import PairVerdict

EXIF_IFD = 0x8769
DATE_TIME_ORIGINAL = 0x9003
_EXIF_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".webp"}
NO_DATE = "9999"  # sorts after every "YYYY:MM:DD HH:MM:SS"


def keep_order(row: Mapping[str, Any], orientation: int = 0, prefer: int = 0,
               exif: tuple[int, str | None] = (0, None)) -> tuple:
    """Sort key, best first (module docstring). orientation: 0 in the group's common orientation,
    1 turned or mirrored against it; prefer: the rank of the first --prefer folder holding it
    (0 when no folder is preferred); exif: (tag count, DateTimeOriginal or None)."""
    pixels = (row.get("width") or 0) * (row.get("height") or 0)
    return (prefer, orientation, -pixels, -exif[0], exif[1] or NO_DATE, row.get("mtime") or 0.0,
            -(row.get("file_size") or 0), row["path"])


def exif_summary(path: str | os.PathLike) -> tuple[int, str | None]:
    """(number of EXIF tags, DateTimeOriginal) from the file's header; (0, None) without EXIF."""
    if Path(path).suffix.lower() not in _EXIF_SUFFIXES:
        return 0, None
    try:
        from PIL import Image

        with Image.open(path) as image:
            exif = image.getexif()
            details = exif.get_ifd(EXIF_IFD)
            date = details.get(DATE_TIME_ORIGINAL) or exif.get(DATE_TIME_ORIGINAL)
            return len(exif) + len(details), (str(date).strip() or None) if date else None
    except Exception:  # noqa: BLE001 - unreadable EXIF is no EXIF
        return 0, None


def normalise_prefer(folders: Iterable[str | os.PathLike], root: Path) -> list[str]:
    """--prefer folders as indexed-name prefixes: an existing folder relative to the root when under
    it (else absolute); any other text as written (an indexed folder name such as `albums/2019`)."""
    prefixes = []
    for folder in folders:
        text = str(folder).replace(os.sep, "/").rstrip("/")
        path = Path(folder)
        if path.is_dir():
            absolute = Path(os.path.abspath(path))
            try:
                text = absolute.relative_to(os.path.abspath(root)).as_posix()
            except ValueError:
                text = absolute.as_posix()
        prefixes.append("" if text in (".", "") else text)
    return prefixes


def prefer_rank(path: str, prefixes: Sequence[str]) -> int:
    """0 for the first preferred folder holding `path`, 1 for the second, …; len(prefixes) for none."""
    for rank, prefix in enumerate(prefixes):
        if prefix == "" or path == prefix or path.startswith(prefix + "/"):
            return rank
    return len(prefixes)


# --- orientation ---------------------------------------------------------------------------
# An element of the dihedral group of the square, (k, m): position_b = R^k · M^m · position_a,
# R a quarter turn, M the mirror x -> -x (M R = R⁻¹ M).
Turn = tuple[int, int]


def _compose(second: Turn, first: Turn) -> Turn:
    """second ∘ first."""
    k2, m2 = second
    k1, m1 = first
    return ((k2 + (-k1 if m2 else k1)) % 4, (m1 + m2) % 2)


def _inverse(turn: Turn) -> Turn:
    k, m = turn
    return turn if m else ((-k) % 4, 0)


def pair_turn(verdict: PairVerdict) -> Turn:
    """The quarter turns and mirror that take a's picture onto b's."""
    return (round(getattr(verdict, "rotation", 0.0) / 90.0) % 4, int(bool(verdict.mirrored)))


def orientation_ranks(component: Sequence[int], verdicts: Mapping[tuple[int, int], PairVerdict],
                      weight: Callable[[int], int] = lambda _: 1) -> dict[int, int]:
    """0 for the members in the orientation most of the component shares (ties: all of them), 1 for the rest.

    verdicts: copy pairs (a, b) -> their verdict; members are reached along them from the first.
    """
    members = set(component)
    neighbours: dict[int, list[tuple[int, Turn]]] = defaultdict(list)
    for (a, b), verdict in verdicts.items():
        if a in members and b in members:
            turn = pair_turn(verdict)
            neighbours[a].append((b, turn))
            neighbours[b].append((a, _inverse(turn)))
    relative: dict[int, Turn] = {}
    for start in component:  # each connected part on its own (they are one when called per component)
        if start in relative:
            continue
        relative[start] = (0, 0)
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for other, turn in neighbours[node]:
                if other not in relative:
                    relative[other] = _compose(turn, relative[node])
                    queue.append(other)
    totals = Counter()
    for node, turn in relative.items():
        totals[turn] += weight(node)
    best = max(totals.values(), default=0)
    return {node: 0 if totals[turn] == best else 1 for node, turn in relative.items()}


def keep_orders(components: Sequence[Sequence[int]], verdicts: Mapping[tuple[int, int], PairVerdict],
                rows: Mapping[int, Mapping[str, Any]], exact: Mapping[int, Sequence[int]],
                file_of: Callable[[str], Path], prefer: Sequence[str] = ()) -> dict[int, tuple]:
    """`keep_order` keys of every member of `components` and of every byte-identical copy of one.

    exact: representative id -> the ids with its content (a representative stands for them in
    components); file_of: indexed path -> file (for the EXIF); prefer: normalised folders.
    """
    orientation: dict[int, int] = {}
    for component in components:
        orientation.update(orientation_ranks(component, verdicts, lambda n: len(exact.get(n, (n,)))))
    ids = {i for c in components for n in c for i in exact.get(n, (n,))} | {i for ids in exact.values() for i in ids}
    turn_of = {i: orientation.get(rep, 0) for rep, copies in exact.items() for i in copies}
    orders = {}
    for i in ids:
        path = rows[i]["path"]
        orders[i] = keep_order(rows[i], orientation.get(i, turn_of.get(i, 0)), prefer_rank(path, prefer) if prefer
                               else 0, exif_summary(file_of(path)))
    return orders
