"""Index.rename: indexed images change their stored path in one commit, without extracting again."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from live_helpers import PROJECT, cli, make_images

from vladsearch import Index


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A built 12-image index (kept pristine: tests copy it)."""
    root = tmp_path_factory.mktemp("rename")
    make_images(root / "photos", 12, seed=3)
    cli("build", str(root / "photos"), "--index", str(root / "base.vlad"), "-k", "8", "-q", "--workers", "1")
    return root


def _copy(base: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(base / "photos", tmp_path / "photos")
    shutil.copytree(base / "base.vlad", tmp_path / "photos.vlad")
    return tmp_path / "photos.vlad", tmp_path / "photos"


def _rows(index_dir: Path) -> dict[str, tuple]:
    with sqlite3.connect(index_dir / "catalog.sqlite") as db:
        return {path: rest for path, *rest in db.execute("SELECT path, id, sha1, segment, row FROM images")}


def test_rename_keeps_the_entry_and_search_returns_the_new_name(base, tmp_path):
    index_dir, photos = _copy(base, tmp_path)
    before = _rows(index_dir)
    first = min(before)
    os.rename(photos / first, photos / "albums_renamed.jpg")
    index = Index.open(index_dir)
    assert index.rename({first: photos / "albums_renamed.jpg"}) == 1
    after = _rows(index_dir)
    assert first not in after and after["albums_renamed.jpg"] == before[first]  # same id, hash, vector row
    assert len(after) == len(before)
    best = index.search([photos / "albums_renamed.jpg"], top=1)[0].matches[0]
    assert (best.image, round(best.score, 4)) == ("albums_renamed.jpg", 1.0)
    assert Index.open(index_dir).backend.ntotal == len(before)


def test_names_can_swap_and_a_bad_rename_changes_nothing(base, tmp_path):
    index_dir, _ = _copy(base, tmp_path)
    a, b, c = sorted(_rows(index_dir))[:3]
    index = Index.open(index_dir)
    before = _rows(index_dir)
    assert index.rename({a: b, b: a}) == 2
    swapped = _rows(index_dir)
    assert swapped[a] == before[b] and swapped[b] == before[a]
    with pytest.raises(ValueError, match="already in the index"):
        index.rename({a: "fresh.jpg", b: c})
    with pytest.raises(ValueError, match="not in the index"):
        index.rename({a: "fresh.jpg", "nowhere.jpg": "other.jpg"})
    with pytest.raises(ValueError, match="same path"):
        index.rename({a: "fresh.jpg", b: "fresh.jpg"})
    assert _rows(index_dir) == swapped  # the valid first move of each was not applied either


READER = textwrap.dedent("""
    import sys, pathlib
    from vladsearch import Index
    index_dir, old, new, stop = sys.argv[1], set(sys.argv[2].split(",")), set(sys.argv[3].split(",")), sys.argv[4]
    index = Index.open(index_dir)
    reads, seen, bad = 0, set(), 0
    while not pathlib.Path(stop).exists():
        index.refresh()
        paths = set(index.image_paths())
        mine = frozenset(paths & (old | new))
        bad += mine not in (frozenset(old), frozenset(new))
        seen.add(mine == frozenset(new))
        reads += 1
        pathlib.Path(stop + ".ready").touch()
    print(bad, reads, len(seen))
""")


def test_a_concurrent_reader_sees_the_old_or_the_new_names_never_both_or_neither(base, tmp_path):
    index_dir, _ = _copy(base, tmp_path)
    old = sorted(_rows(index_dir))[:3]
    new = [f"moved/{name}" for name in old]
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(index_dir), ",".join(old), ",".join(new), str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(PROJECT)})
    try:
        index = Index.open(index_dir)
        while not Path(f"{stop}.ready").exists() and reader.poll() is None:
            time.sleep(0.05)
        for _ in range(40):
            assert index.rename(dict(zip(old, new))) == 3
            assert index.rename(dict(zip(new, old))) == 3
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=120)
    bad, reads, states = map(int, out.split())
    assert bad == 0, err
    assert reads > 1 and states >= 1


def test_add_of_a_folder_recognises_a_renamed_file_by_its_content(base, tmp_path):
    index_dir, photos = _copy(base, tmp_path)
    before = _rows(index_dir)
    first = min(before)
    (photos / "album").mkdir()
    shutil.move(photos / first, photos / "album" / "kept.jpg")
    new_files = make_images(photos, 1, seed=99)
    index = Index.open(index_dir)
    report = index.add([photos], progress=False, workers=1)
    assert (report.renamed, report.indexed) == (1, 1)  # only the really new photo was extracted
    after = _rows(index_dir)
    assert first not in after and after["album/kept.jpg"] == before[first]
    assert new_files[0].name in after
    vectors = index.vectors_of([before[first][0]])
    assert np.isfinite(vectors).all()
    assert index.search([photos / "album" / "kept.jpg"], top=1)[0].matches[0].image == "album/kept.jpg"
