"""The live index as users meet it: concurrent writers and readers, kill -9, moves, bad states."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from live_helpers import PROJECT, alive, children_of, cli, descendants_of, info, make_images, popen_cli

from vladsearch import Index
from vladsearch.store import catalog, segments
from vladsearch.store.catalog import IndexDamagedError, IndexFormatError
from vladsearch.store.check import check_index


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A built 24-image index (kept pristine: tests copy it)."""
    root = tmp_path_factory.mktemp("live")
    make_images(root / "photos", 24, seed=1)
    cli("build", str(root / "photos"), "--index", str(root / "base.vlad"), "-k", "16", "-q", "--workers", "1")
    return root


def _copy(base: Path, tmp_path: Path) -> Path:
    shutil.copytree(base / "photos", tmp_path / "photos")
    shutil.copytree(base / "base.vlad", tmp_path / "photos.vlad")
    return tmp_path / "photos.vlad"


def _each_image_once(index_dir: Path) -> list[str]:
    index = Index.open(index_dir)
    paths = index.image_paths()
    assert len(paths) == len(set(paths))
    assert index.backend.ntotal == len(paths)  # no vector without its row, none twice
    return paths


@pytest.mark.parametrize("gap", [0.0, 0.7, 2.0])
def test_two_concurrent_adds_keep_every_image_exactly_once(base, tmp_path, gap):
    index = _copy(base, tmp_path)
    make_images(tmp_path / "photos" / "a", 12, seed=2)
    make_images(tmp_path / "photos" / "b", 12, seed=3)
    make_images(tmp_path / "photos" / "both", 6, seed=4)  # given to both writers
    photos = tmp_path / "photos"
    first = popen_cli("add", str(index), str(photos / "a"), str(photos / "both"), "--json", "-q", "--workers", "1")
    time.sleep(gap)
    second = popen_cli("add", str(index), str(photos / "b"), str(photos / "both"), "--json", "-q", "--workers", "1")
    reports = []
    for process in (first, second):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        reports.append(json.loads(out))
    assert reports[0]["indexed"] + reports[1]["indexed"] == 30  # "both" counted once, by whoever committed first
    assert reports[0]["unchanged"] + reports[1]["unchanged"] == 6
    paths = _each_image_once(index)
    assert len(paths) == 24 + 30
    assert check_index(index)[0] == []


READER = textwrap.dedent("""
    import sys, time, traceback
    from pathlib import Path
    from vladsearch import Index
    index_dir, query, stop = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    ok = failures = 0
    while not stop.exists():
        try:
            index = Index.open(index_dir)
            result = index.search([query], top=1, workers=1)[0]
            assert result.matches and result.matches[0].image == Path(query).name, result
            ok += 1
        except Exception:
            failures += 1
            traceback.print_exc()
    print(ok, failures)
""")


def test_readers_never_fail_during_back_to_back_commits(base, tmp_path):
    index_dir = _copy(base, tmp_path)
    query = min((tmp_path / "photos").glob("*.jpg"))
    extra = make_images(tmp_path / "extra", 24, seed=5)
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(index_dir), str(query), str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(PROJECT)})
    try:
        index = Index.open(index_dir)
        for number, image in enumerate(extra):  # 24 commits, merges among them (every 10 segments)
            index.add([image], progress=False, workers=1)
            if number % 3 == 2:
                index.remove([extra[number - 1]])
            if number == 12:
                index.compact()
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=120)
    ok, failures = map(int, out.split())
    assert failures == 0, err
    assert ok > 0
    assert len(Index.open(index_dir).image_paths()) == 24 + 24 - 8


def _staging_lock_held(index_dir: Path) -> bool:
    """Whether some process holds a writer's staging lock (what the next writer checks)."""
    for lock in (index_dir / "staging").glob("*.lock"):
        with open(lock, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def test_kill_9_of_add_leaves_no_process_and_the_last_commit(base, tmp_path):
    index_dir = _copy(base, tmp_path)
    make_images(tmp_path / "many", 150, seed=6, size=(640, 480))
    writer = popen_cli("add", str(index_dir), str(tmp_path / "many"), "-q", "--workers", "2")
    deadline = time.time() + 60
    workers: list[int] = []
    while time.time() < deadline and len(workers) < 2:
        workers = children_of(writer.pid)
        time.sleep(0.1)
    assert workers, "the add never started its workers"
    time.sleep(1.0)  # let it extract and stage a while
    # every process that may hold the writer's staging lock (a pool started later, a worker's
    # own child): the next writer may clean the staging area only once they are all gone
    workers = sorted(set(workers) | set(descendants_of(writer.pid)))
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)
    assert len(_each_image_once(index_dir)) == 24
    assert any((index_dir / "staging").iterdir())  # the dead writer's leftovers …
    # A killed process shows as a zombie once its main thread is gone, but its files (the staging
    # lock) close only when its last thread has exited: under load, a moment later.
    deadline = time.time() + 10
    while time.time() < deadline and _staging_lock_held(index_dir):
        time.sleep(0.2)
    assert not _staging_lock_held(index_dir), "a process still holds the dead writer's staging lock"
    Index.open(index_dir).remove(["img_1_000.jpg"])
    assert not any((index_dir / "staging").iterdir())  # … removed by the next writer


def test_one_image_add_writes_the_batch_not_the_collection(base, tmp_path):
    index_dir = _copy(base, tmp_path)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
              for p in (index_dir / "segments").rglob("*") if p.is_file()}
    new = make_images(tmp_path / "one", 1, seed=7)
    report = Index.open(index_dir).add(new, progress=False, workers=1)
    assert report.indexed == 1 and report.segments == 1
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
             for p in (index_dir / "segments").rglob("*") if p.is_file()}
    assert {p: after[p] for p in before} == before  # no existing segment file was touched
    added = [p for p in after if p not in before and p.name == segments.VECTORS_FILE]
    assert len(added) == 1 and added[0].stat().st_size == 16 * 128 * 4  # one vector
    assert Index.open(index_dir).add(new, progress=False).indexed == 0  # nothing new: nothing written
    assert len(list((index_dir / "segments").iterdir())) == 2


def test_index_moved_with_its_photos_still_verifies_and_readds_nothing(base, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(base / "photos", project / "photos")
    cli("build", str(project / "photos"), "--index", str(project / "photos.vlad"), "-k", "16", "-q")
    moved = tmp_path / "moved"
    shutil.move(project, moved)
    query = moved / "photos" / "img_1_003.jpg"
    result = json.loads(cli("search", str(moved / "photos.vlad"), str(query), "--rerank", "3", "--json", "-q").stdout)
    assert result[0]["matches"][0]["image"] == "img_1_003.jpg" and result[0]["matches"][0]["verified"]
    # copies get new mtimes; their bytes are the same, so nothing is indexed twice
    shutil.copytree(moved, tmp_path / "copied")
    report = json.loads(cli("add", str(tmp_path / "copied" / "photos.vlad"), str(tmp_path / "copied" / "photos"),
                            "--json", "-q").stdout)
    assert report["indexed"] == 0 and report["unchanged"] == 24
    # photos gone from both places the index knows: a clear warning; --root points elsewhere
    shutil.move(moved / "photos", tmp_path / "elsewhere")
    assert "--root PHOTOS_DIR" in cli("info", str(moved / "photos.vlad")).stderr
    with pytest.warns(UserWarning, match="--root"):
        Index.open(moved / "photos.vlad")
    result = json.loads(cli("search", str(moved / "photos.vlad"), str(tmp_path / "elsewhere" / "img_1_003.jpg"),
                            "--rerank", "3", "--json", "-q", "--root", str(tmp_path / "elsewhere")).stdout)
    assert result[0]["matches"][0]["verified"]


def test_build_over_an_existing_index_needs_force(base, tmp_path):
    index_dir = _copy(base, tmp_path)
    other = make_images(tmp_path / "other", 8, seed=8)[0].parent
    refused = cli("build", str(other), "--index", str(index_dir), "-q", check=False)
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert info(index_dir)["counts"]["vectors"] == 24
    cli("build", str(other), "--index", str(index_dir), "-q", "-k", "8", "--force")
    assert info(index_dir)["counts"]["vectors"] == 8 and check_index(index_dir)[0] == []


def test_a_query_without_keypoints_is_an_error_entry(base, tmp_path):
    import cv2

    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((480, 640), np.uint8))
    result = cli("search", str(base / "base.vlad"), str(black), "--json", "-q", check=False)
    assert result.returncode == 1
    entry = json.loads(result.stdout)[0]
    assert entry["matches"] == [] and "no keypoints" in entry["error"]


def test_info_reports_the_last_commit_time_and_segments(base, tmp_path):
    index_dir = _copy(base, tmp_path)
    first = info(index_dir)
    time.sleep(1.1)
    assert info(index_dir)["updated"] == first["updated"]  # reading is not an update
    Index.open(index_dir).remove(["img_1_000.jpg"])
    second = info(index_dir)
    assert second["updated"] != first["updated"] and second["commits"] == first["commits"] + 1
    assert second["counts"]["deletions"] == 1 and second["counts"]["segments"] == 1


def test_disk_full_says_so_and_changes_nothing(base, tmp_path, monkeypatch):
    import errno

    index_dir = _copy(base, tmp_path)
    new = make_images(tmp_path / "new", 3, seed=9)

    def full(self, vectors):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segments.SegmentWriter, "append", full)
    with pytest.raises(OSError, match="disk .* is full: nothing was committed"):
        Index.open(index_dir).add(new, progress=False, workers=1)
    monkeypatch.undo()

    def sqlite_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(catalog, "record_commit", sqlite_full)
    with pytest.raises(OSError, match="is full"):
        Index.open(index_dir).add(new, progress=False, workers=1)
    monkeypatch.undo()
    assert len(_each_image_once(index_dir)) == 24 and check_index(index_dir)[0] == []
    assert not any((index_dir / "staging").iterdir())


def test_damaged_files_are_named(base, tmp_path):
    index_dir = _copy(base, tmp_path)
    vectors = next((index_dir / "segments").glob(f"*/{segments.VECTORS_FILE}"))
    with open(vectors, "r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(IndexDamagedError, match=str(vectors)):
        Index.open(index_dir).search([tmp_path / "photos" / "img_1_000.jpg"])
    result = cli("check", str(index_dir), check=False)
    assert result.returncode == 1 and str(vectors) in result.stdout
    (index_dir / catalog.CATALOG).write_bytes(b"garbage" * 1000)
    for name in ("catalog.sqlite-wal", "catalog.sqlite-shm"):
        (index_dir / name).unlink(missing_ok=True)
    result = cli("info", str(index_dir), check=False)
    assert result.returncode == 2 and "damaged" in result.stderr and "Traceback" not in result.stderr
    (index_dir / catalog.CATALOG).unlink()
    with pytest.raises(IndexFormatError, match="not a vladsearch index"):
        Index.open(index_dir)


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _reachable_by_nobody(paths: list[Path], stop: Path) -> None:
    """Let uid 65534 traverse to `paths` (o+x on their folders up to `stop`, not above) and read them."""
    for path in paths:
        path.chmod(path.stat().st_mode | (0o005 if path.is_dir() else 0o004))
        for parent in path.parents:
            if parent == stop.parent or parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o001)


def _skip_unless_nobody_can_run(readable: list[Path], env: dict[str, str]) -> None:
    """Skip, saying why, unless uid 65534 can run this interpreter, import the project and read `readable`."""
    probe = "import os, sys, vladsearch.cli; [os.listdir(p) if os.path.isdir(p) else open(p, 'rb').close() " \
            "for p in sys.argv[1:]]"
    result = subprocess.run([*NOBODY, sys.executable, "-c", probe, *map(str, readable)], capture_output=True,
                            text=True, timeout=120, check=False, env=env)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        pytest.skip(f"uid 65534 cannot run {sys.executable} with {PROJECT} or read the test's files ({last}); "
                    "a checkout, venv or --basetemp inside a private folder (mode 0700) hides them: run this "
                    "test from a world-readable one, or as a non-root user")


def test_read_only_index_fails_before_extracting(base, tmp_path, tmp_path_factory):
    as_root = os.geteuid() == 0
    if as_root and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: permission bits do not stop root")
    index_dir = _copy(base, tmp_path)
    new = make_images(tmp_path / "new", 3, seed=10)[0].parent
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "HOME": str(tmp_path)}
    if as_root:  # the add runs as nobody: it must reach the files, so only the permissions stop it
        basetemp = tmp_path_factory.getbasetemp()  # pytest's own folders, not above
        top = basetemp.parent if basetemp.parent.name.startswith("pytest-of-") else basetemp
        _reachable_by_nobody([tmp_path, *tmp_path.rglob("*")], top)
        _skip_unless_nobody_can_run([index_dir / catalog.CATALOG, new], env)
    for path in [index_dir, *index_dir.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    command = [sys.executable, "-m", "vladsearch.cli", "add", str(index_dir), str(new), "-q"]
    result = subprocess.run([*NOBODY, *command] if as_root else command, capture_output=True, text=True,
                            timeout=120, check=False, env=env)
    for path in [index_dir, *index_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert result.returncode == 2, result.stderr
    assert "read-only" in result.stderr and "Traceback" not in result.stderr
    assert info(index_dir)["counts"]["vectors"] == 24


def test_compact_and_check_from_the_command_line(base, tmp_path):
    index_dir = _copy(base, tmp_path)
    for seed in (11, 12, 13):
        cli("add", str(index_dir), str(make_images(tmp_path / f"n{seed}", 2, seed=seed)[0].parent), "-q",
            "--no-merge")
    cli("remove", str(index_dir), "img_1_000.jpg")
    assert info(index_dir)["counts"]["segments"] == 4
    out = cli("compact", str(index_dir)).stdout
    assert "merged 4 segments" in out and "1 deleted" in out
    after = info(index_dir)
    assert after["counts"]["segments"] == 1 and after["counts"]["vectors"] == 24 + 6 - 1
    assert after["counts"]["deletions"] == 0
    assert "ok:" in cli("check", str(index_dir)).stdout


def test_a_long_lived_reader_skips_images_removed_after_its_snapshot(base, tmp_path):
    index_dir = _copy(base, tmp_path)
    reader = Index.open(index_dir)
    query = tmp_path / "photos" / "img_1_005.jpg"
    assert reader.search([query], top=3, rerank=0)[0].matches[0].image == "img_1_005.jpg"  # snapshot loaded
    Index.open(index_dir).remove(["img_1_005.jpg"])  # another process's commit
    matches = reader.search([query], top=3, rerank=0)[0].matches  # same snapshot: the id is there, its name is gone
    assert matches and all(m.image != "img_1_005.jpg" for m in matches)
    reader.refresh()
    assert reader.backend.ntotal == 23


def test_a_failed_first_build_leaves_no_directory_and_bad_settings_fail_at_once(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_text("not an image")
    result = cli("build", str(tmp_path / "bad"), "--index", str(tmp_path / "b.vlad"), "-q", check=False)
    assert result.returncode == 2 and "could be read" in result.stderr
    assert not (tmp_path / "b.vlad").exists()
    make_images(tmp_path / "good", 3, seed=12)
    result = cli("build", str(tmp_path / "good"), "--index", str(tmp_path / "g.vlad"), "--keep-features",
                 "--feature-codes", "XYZ", check=False)
    assert result.returncode == 2 and "PQ32x7" in result.stderr and not (tmp_path / "g.vlad").exists()
