"""What the `vladsearch duplicates` verb prints: JSON, CSV, a table, a self-contained HTML page.

Paths are the indexed names, as `search` prints them. The HTML report is one file (thumbnails
are small base64 JPEGs inside it) that a person reads to decide what to delete: one card per
group, the suggested keep image first and marked, each image's pixel size, file size and the
verification that links it to the kept image.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vladsearch.collection.duplicates import DuplicateReport

THUMBNAIL_SIDE = 160


def _pair_json(pair, rows: dict[int, dict[str, Any]]) -> dict[str, Any]:
    out = {"a": rows[pair.a]["path"], "b": rows[pair.b]["path"], "inliers": pair.inliers, "score": pair.score}
    if pair.exact:
        out["exact"] = True
    if pair.mirrored:
        out["mirrored"] = True
    return out


def report_to_dict(report: DuplicateReport) -> dict[str, Any]:
    rows = report.rows
    groups = [{"images": [rows[i]["path"] for i in g.ids], "keep": rows[g.keep]["path"],
               "remove": [rows[i]["path"] for i in g.ids if i != g.keep],
               "identical": {rows[i]["path"]: rows[twin]["path"] for i, twin in identical_members(g, rows).items()},
               "pairs": [_pair_json(p, rows) for p in g.pairs]} for g in report.groups]
    return {"groups": groups, "candidate_pairs": report.candidates, "verified_pairs": report.verified,
            "unreadable": report.unreadable, "timings": {k: round(v, 3) for k, v in report.timings.items()}}


def report_to_json(report: DuplicateReport) -> str:
    return json.dumps(report_to_dict(report), indent=2, ensure_ascii=False)


def report_to_csv(report: DuplicateReport) -> str:
    """One line per grouped image: group number, path, keep (1/0), width, height, file size."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["group", "image", "keep", "width", "height", "file_size"])
    for number, group in enumerate(report.groups, 1):
        for i in group.ids:
            row = report.rows[i]
            writer.writerow([number, row["path"], int(i == group.keep), row["width"], row["height"], row["file_size"]])
    return buffer.getvalue()


def identical_members(group, rows: dict[int, dict[str, Any]]) -> dict[int, int]:
    """Member id -> the member with its exact bytes (same SHA-1) it is shown against: the keep
    image when they share them, else the first such member (the keep image itself is not listed)."""
    first: dict[str, int] = {}
    for i in group.ids:  # the keep image comes first
        sha1 = rows[i].get("sha1")
        if sha1:
            first.setdefault(sha1, i)
    return {i: first[rows[i]["sha1"]] for i in group.ids
            if i != group.keep and rows[i].get("sha1") and first[rows[i]["sha1"]] != i}


def report_to_table(report: DuplicateReport) -> str:
    lines = []
    for number, group in enumerate(report.groups, 1):
        lines.append(f"group {number}: {len(group.ids)} images")
        identical = identical_members(group, report.rows)
        for i in group.ids:
            row = report.rows[i]
            mark = "keep  " if i == group.keep else "remove"
            twin = identical.get(i)
            same = "" if twin is None else ", identical to " + ("the keep" if twin == group.keep
                                                                   else report.rows[twin]["path"])
            lines.append(f"  {mark} {row['path']}  ({row['width']}×{row['height']}, {_size(row['file_size'])}{same})")
    removable = sum(len(g.ids) - 1 for g in report.groups)
    lines.append(f"{len(report.groups)} groups; {removable} images could be removed "
                 f"({report.candidates} candidate pairs, {report.verified} verified). Nothing was deleted.")
    if report.unreadable:
        lines.append(f"{len(report.unreadable)} images were not verified: no cached features and the file could "
                     f"not be decoded again (moved, deleted or damaged): {', '.join(report.unreadable[:10])}"
                     + (" …" if len(report.unreadable) > 10 else ""))
    return "\n".join(lines)


def _size(n: int | None) -> str:
    if not n:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def thumbnail(path: Path, side: int = THUMBNAIL_SIDE) -> str | None:
    """A data: URI of a small JPEG of the image, or None when it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_2) if path.suffix.lower() in (".jpg", ".jpeg") else None
    if image is None:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return None
    h, w = image.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale < 1:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, 75])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii") if ok else None


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#f4f4f4;color:#222}
h1{font-size:1.4em} .summary{margin-bottom:1em}
.group{background:#fff;border-radius:6px;padding:.8em;margin-bottom:1.2em;box-shadow:0 1px 3px #0002}
.group h2{font-size:1.05em;margin:0 0 .6em}
.images{display:flex;flex-wrap:wrap;gap:.8em}
figure{margin:0;width:180px;padding:6px;border:3px solid #ddd;border-radius:6px;background:#fafafa}
figure.keep{border-color:#2a8a2a;background:#eef8ee}
figure img{display:block;max-width:160px;max-height:160px;margin:auto}
figcaption{font-size:.78em;word-break:break-all;margin-top:4px}
.badge{display:inline-block;font-weight:bold;padding:1px 6px;border-radius:3px;color:#fff;background:#b33}
.keep .badge{background:#2a8a2a}
.missing{width:160px;height:100px;display:flex;align-items:center;justify-content:center;color:#888}
.command code{display:inline-block;background:#fff;padding:.3em .5em;border-radius:4px;user-select:all}
"""


def render_html(report: DuplicateReport, root: Path, title: str = "Duplicate images",
                command: str | None = None) -> str:
    """The whole report page as a string (see the module docstring); command: the `duplicates --move-to`
    command line that moves this report's extras aside (shown to copy)."""
    rows = report.rows
    removable = sum(len(g.ids) - 1 for g in report.groups)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             (f"<p class='summary'>{len(report.groups)} groups; {removable} images could be removed. "
              "The image marked KEEP is suggested (the original before its turned, mirrored, smaller or "
              "newer copies). vladsearch deleted nothing.</p>")]
    if command:
        parts.append("<p class='command'>To move every <b>remove?</b> image aside (nothing is deleted; a manifest "
                     "records each move and <code>vladsearch undo MANIFEST</code> puts them back), first check "
                     "with <code>--dry-run</code>, then run:<br>"
                     f"<code id='move-command'>{html.escape(command)}</code></p>")
    for number, group in enumerate(report.groups, 1):
        links = {}
        for pair in group.pairs:
            for x, y in ((pair.a, pair.b), (pair.b, pair.a)):
                if x == group.keep:
                    links[y] = pair
        identical = identical_members(group, rows)
        parts.append(f"<section class='group' id='group-{number}'><h2>Group {number}: {len(group.ids)} images</h2>"
                     "<div class='images'>")
        for i in group.ids:
            row = rows[i]
            path = Path(row["path"]) if os.path.isabs(row["path"]) else root / row["path"]
            uri = thumbnail(path)
            picture = (f"<img src='{uri}' alt='{html.escape(row['path'])}'>" if uri
                       else "<div class='missing'>not readable</div>")
            keep = i == group.keep
            pair = links.get(i)
            if keep:
                evidence = "suggested to keep"
            elif i in identical:
                twin = "the kept file" if identical[i] == group.keep else rows[identical[i]]["path"]
                evidence = f"identical: the same bytes as {twin} (same SHA-1)"
            elif pair is None:
                evidence = "linked through the group"
            elif pair.exact:
                evidence = "identical file (same SHA-1)"
            else:
                evidence = (f"{pair.inliers} inliers{' (mirrored)' if pair.mirrored else ''}, "
                            f"similarity {pair.score:.2f}")
            parts.append(f"<figure class='{'keep' if keep else 'remove'}'>{picture}<figcaption>"
                         f"<span class='badge'>{'KEEP' if keep else 'remove?'}</span> "
                         f"{html.escape(row['path'])}<br>{row['width']}×{row['height']} px, "
                         f"{_size(row['file_size'])}<br>{html.escape(evidence)}</figcaption></figure>")
        parts.append("</div></section>")
    parts.append("</body></html>")
    return "".join(parts)


def write_html(report: DuplicateReport, path: Path, root: Path, command: str | None = None) -> Path:
    path = Path(path)
    path.write_text(render_html(report, Path(root), command=command), encoding="utf-8")
    return path
