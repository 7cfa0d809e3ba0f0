"""Safe actions on duplicates: `duplicates --move-to`, `undo`, `resume`, the keep choice, --prefer,
the HTML command and the server's move/undo — files come back byte-identical, nothing is lost."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from conftest import photo
from live_helpers import PROJECT, cli

from vladsearch.collection import file_moves
from vladsearch.collection.keep_choice import keep_order, orientation_ranks
from vladsearch.query.pair_verification import PairVerdict

EDITS = {  # path under photos/ -> how it is made from its source
    "2019/coffee.jpg": ("coffee", None), "2019/astronaut.jpg": ("astronaut", None),
    "edits/coffee_rot90.jpg": ("coffee", "rot90"), "edits/coffee_mirror.jpg": ("coffee", "mirror"),
    "edits/coffee_small.jpg": ("coffee", "small"), "edits/astronaut_crop.jpg": ("astronaut", "crop"),
    "edits/astronaut_rot90.jpg": ("astronaut", "rot90"), "other/chelsea.jpg": ("chelsea", None),
    "other/rocket.jpg": ("rocket", None),
}
EXTRAS = {"backup/coffee.jpg", "edits/coffee_rot90.jpg", "edits/coffee_mirror.jpg", "edits/coffee_small.jpg",
          "edits/astronaut_crop.jpg", "edits/astronaut_rot90.jpg"}
KEEPS = {"2019/coffee.jpg", "2019/astronaut.jpg"}


def _edit(image, edit: str | None):
    h, w = image.shape[:2]
    if edit == "rot90":
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if edit == "mirror":
        return cv2.flip(image, 1)
    if edit == "small":
        return cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    if edit == "crop":
        return image[h // 10:h - h // 8, w // 10:w - w // 10]
    return image


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """lib/photos (originals in 2019/, edited copies in edits/, a byte-identical backup/, two strangers)
    and lib/photos.vlad beside it, with cached features. Tests work on copies (`own`)."""
    pytest.importorskip("skimage")
    lib = tmp_path_factory.mktemp("library")
    photos = lib / "photos"
    for name, (source, edit) in EDITS.items():  # originals first: a copy is younger than its source
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(photos / name), _edit(photo(source), edit), [cv2.IMWRITE_JPEG_QUALITY, 92])
    (photos / "backup").mkdir()
    shutil.copyfile(photos / "2019/coffee.jpg", photos / "backup/coffee.jpg")
    cli("build", str(photos), "--index", str(lib / "photos.vlad"), "-q", "--workers", "2")  # caches features
    return lib


@pytest.fixture
def own(library, tmp_path) -> Path:
    """A private copy of the library (index and photos moved together), with mtimes kept."""
    shutil.copytree(library, tmp_path / "lib", symlinks=True)
    return tmp_path / "lib"


def _hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder, by path relative to it."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _indexed(lib: Path) -> set[str]:
    from vladsearch import Index

    return set(Index.open(lib / "photos.vlad").image_paths())


def _move(lib: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return cli("duplicates", str(lib / "photos.vlad"), "--json", "-q", "--workers", "2",
               "--move-to", str(lib / "dups"), *extra, check=check)


def test_move_then_undo_gives_back_every_file_byte_identical(own):
    before, indexed_before = _hashes(own / "photos"), _indexed(own)
    data = json.loads(_move(own).stdout)
    groups = {g["keep"]: set(g["remove"]) for g in data["groups"]}
    assert set(groups) == KEEPS and set().union(*groups.values()) == EXTRAS
    actions = data["actions"]
    manifest = Path(actions["manifest"])
    assert manifest.parent == own / "dups" and manifest.name.startswith("vladsearch-moves-")
    assert actions["counts"] == {"moved": len(EXTRAS)}
    after_move = _hashes(own / "photos")
    assert set(after_move) == set(before) - EXTRAS  # the keeps and the strangers stay
    moved = _hashes(own / "dups")
    assert {name: moved[name] for name in EXTRAS} == {name: before[name] for name in EXTRAS}  # relative paths kept
    recorded = json.loads(manifest.read_text())
    assert recorded["state"] == "moved" and recorded["index"] == str(own / "photos.vlad")
    for entry in recorded["entries"]:
        assert entry["sha1"] == hashlib.sha1((own / "dups" / entry["image"]).read_bytes()).hexdigest()
        assert entry["new"] == str(own / "dups" / entry["image"])
        assert entry["old"] == str(own / "photos" / entry["image"])
    # the index followed the files (no extraction): the moved copies are found under their new paths
    assert _indexed(own) == (indexed_before - EXTRAS) | {str(own / "dups" / n) for n in EXTRAS}  # outside the root
    found = json.loads(cli("search", str(own / "photos.vlad"), str(own / "photos/2019/coffee.jpg"), "--json",
                           "--top", "3").stdout)[0]["matches"]
    assert any(m["image"].endswith("dups/backup/coffee.jpg") for m in found)

    undone = json.loads(cli("undo", str(manifest), "--json").stdout)
    assert undone["counts"] == {"restored": len(EXTRAS)} and undone["state"] == "undone"
    assert _hashes(own / "photos") == before  # every file byte-identical at its old path
    assert set(_hashes(own / "dups")) == {manifest.name}  # nothing left behind but the manifest
    assert _indexed(own) == indexed_before
    found = json.loads(cli("search", str(own / "photos.vlad"), str(own / "photos/2019/coffee.jpg"), "--json",
                           "--top", "3").stdout)[0]["matches"]
    assert {m["image"] for m in found[:2]} == {"2019/coffee.jpg", "backup/coffee.jpg"}


def test_dry_run_changes_nothing(own):
    before, indexed_before = _hashes(own / "photos"), _indexed(own)
    commits_before = json.loads(cli("info", str(own / "photos.vlad"), "--json").stdout)["commits"]
    data = json.loads(_move(own, "--dry-run").stdout)
    assert data["actions"]["dry_run"] and data["actions"]["manifest"] is None
    assert {e["image"] for e in data["actions"]["entries"] if e["state"] == "planned"} == EXTRAS
    assert not (own / "dups").exists()
    assert _hashes(own / "photos") == before and _indexed(own) == indexed_before
    assert json.loads(cli("info", str(own / "photos.vlad"), "--json").stdout)["commits"] == commits_before


def test_a_file_changed_after_indexing_is_not_moved(own):
    changed = own / "photos/edits/coffee_small.jpg"
    with open(changed, "ab") as handle:  # still a valid JPEG, but not the bytes that were indexed
        handle.write(b"edited after indexing")
    changed_bytes = changed.read_bytes()
    result = _move(own)
    entries = {e["image"]: e for e in json.loads(result.stdout)["actions"]["entries"]}
    assert entries["edits/coffee_small.jpg"]["state"] == "changed"
    assert "changed since it was indexed" in entries["edits/coffee_small.jpg"]["reason"]
    assert changed.read_bytes() == changed_bytes and not (own / "dups/edits/coffee_small.jpg").exists()
    assert all(entries[n]["state"] == "moved" for n in EXTRAS - {"edits/coffee_small.jpg"})
    assert "edits/coffee_small.jpg" in _indexed(own)


def test_an_existing_target_is_never_overwritten(own):
    blocker = own / "dups/edits/coffee_mirror.jpg"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"someone else's file")
    entries = {e["image"]: e for e in json.loads(_move(own).stdout)["actions"]["entries"]}
    assert entries["edits/coffee_mirror.jpg"]["state"] == "conflict"
    assert blocker.read_bytes() == b"someone else's file" and (own / "photos/edits/coffee_mirror.jpg").exists()


KILLER = """
import os, signal, sys
import vladsearch.collection.duplicate_actions as actions
import vladsearch.collection.file_moves as moves
actions.BATCH = int(os.environ["TEST_BATCH"])
real, done = moves.move_file, []
def dying(source, target, sha1=None):
    if len(done) == int(os.environ["TEST_KILL_AFTER"]):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.link(source, target)  # half of a move: the new name exists, the old one is not unlinked yet
        os.kill(os.getpid(), signal.SIGKILL)
    real(source, target, sha1)
    done.append(target)
moves.move_file = dying
from vladsearch.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("batch", "then"), [(64, "resume"), (2, "undo"), (2, "resume")])
def test_kill_9_in_the_middle_loses_nothing_and_can_be_completed_or_undone(own, batch, then):
    before, indexed_before = _hashes(own / "photos"), _indexed(own)
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "TEST_BATCH": str(batch), "TEST_KILL_AFTER": "3"}
    manifest = own / "dups/moves.json"
    killed = subprocess.run([sys.executable, "-c", KILLER, "duplicates", str(own / "photos.vlad"), "-q",
                             "--workers", "2", "--move-to", str(own / "dups"), "--manifest", str(manifest)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    assert json.loads(manifest.read_text())["state"] == "moving"  # written before the first move
    # nothing lost: every file is at its old path or its new one, with its bytes
    for name, digest in before.items():
        copies = [p for p in (own / "photos" / name, own / "dups" / name) if p.exists()]
        assert copies and all(hashlib.sha256(p.read_bytes()).hexdigest() == digest for p in copies), name
    cli(then, str(manifest))
    if then == "undo":
        assert _hashes(own / "photos") == before and _indexed(own) == indexed_before
        assert set(_hashes(own / "dups")) == {"moves.json"}
    else:
        assert set(_hashes(own / "photos")) == set(before) - EXTRAS
        assert {n: h for n, h in _hashes(own / "dups").items() if n != "moves.json"} == \
            {n: before[n] for n in EXTRAS}
        assert not _indexed(own) & EXTRAS and len(_indexed(own)) == len(indexed_before)
        assert json.loads(manifest.read_text())["state"] == "moved"
        cli("undo", str(manifest))
        assert _hashes(own / "photos") == before and _indexed(own) == indexed_before


def test_across_filesystems_the_copy_is_verified_and_keeps_its_mtime(tmp_path, monkeypatch):
    source, target = tmp_path / "a" / "x.jpg", tmp_path / "b" / "sub" / "x.jpg"
    source.parent.mkdir()
    source.write_bytes(b"photo bytes" * 1000)
    os.utime(source, (1_000_000_000, 1_000_000_000))
    sha1 = file_moves.file_sha1(source)

    def no_link(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(file_moves.os, "link", no_link)
    partial = target.with_name(target.name + file_moves.PARTIAL_SUFFIX)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"half a copy from a crash")
    file_moves.settle(source, target, sha1)
    assert not source.exists() and not partial.exists()
    assert file_moves.file_sha1(target) == sha1 and target.stat().st_mtime == 1_000_000_000
    with pytest.raises(file_moves.MoveRefused) as refused:  # and never over an existing file
        source.write_bytes(b"another")
        file_moves.settle(source, target, file_moves.file_sha1(source))
    assert refused.value.state == "conflict" and source.read_bytes() == b"another"


def test_keep_of_the_example_coffee_group_is_the_unrotated_original(tmp_path):
    pytest.importorskip("skimage")
    subprocess.run([sys.executable, str(PROJECT / "examples/make_example.py"), str(tmp_path / "ex")], check=True,
                   capture_output=True)
    cli("build", str(tmp_path / "ex"), "--index", str(tmp_path / "ex.vlad"), "-q", "--workers", "2")
    groups = json.loads(cli("duplicates", str(tmp_path / "ex.vlad"), "--json", "-q", "--workers", "2").stdout)["groups"]
    coffee = next(g for g in groups if "photos/coffee.jpg" in g["images"])
    assert coffee["keep"] == "photos/coffee.jpg"
    assert coffee["identical"] == {"queries/exact_coffee.jpg": "photos/coffee.jpg"}
    table = cli("duplicates", str(tmp_path / "ex.vlad"), "-q", "--workers", "2").stdout
    assert "queries/exact_coffee.jpg  (600×400, 102.3 KB, identical to the keep)" in table


def test_prefer_folder_wins_the_keep_and_html_shows_the_command(own):
    data = json.loads(cli("duplicates", str(own / "photos.vlad"), "--json", "-q", "--workers", "2",
                          "--prefer", str(own / "photos/edits"), "--html", str(own / "report.html")).stdout)
    keeps = {g["keep"] for g in data["groups"]}
    assert all(k.startswith("edits/") for k in keeps), keeps
    page = (own / "report.html").read_text()
    assert f"--prefer {own / 'photos/edits'}" in page and f"--move-to {own / 'photos-duplicates'}" in page
    assert "identical: the same bytes as 2019/coffee.jpg" in page  # the two originals, neither kept here


def test_orientation_rank_follows_turns_and_mirrors():
    def verdict(a, b, rotation=0.0, mirrored=False):
        return PairVerdict(a, b, 100, mirrored=mirrored, rotation=rotation)

    # 0 is turned against 1 and 2, which agree: 0 is the edited copy
    ranks = orientation_ranks([0, 1, 2], {(0, 1): verdict(0, 1, 90), (0, 2): verdict(0, 2, 90), (1, 2): verdict(1, 2)})
    assert ranks == {0: 1, 1: 0, 2: 0}
    # mirrored twice (0-1, 1-2) is not mirrored: 0 and 2 agree, 1 is the odd one out
    ranks = orientation_ranks([0, 1, 2], {(0, 1): verdict(0, 1, mirrored=True), (1, 2): verdict(1, 2, mirrored=True)})
    assert ranks == {0: 0, 1: 1, 2: 0}
    # a turn followed by its reverse along a chain, and a tie (one image, one turned copy) ranks both alike
    assert orientation_ranks([0, 1, 2], {(0, 1): verdict(0, 1, 90), (1, 2): verdict(1, 2, -90)}) == {0: 0, 1: 1, 2: 0}
    assert orientation_ranks([0, 1], {(0, 1): verdict(0, 1, 90)}) == {0: 0, 1: 0}
    # byte-identical copies weigh: 1 stands for three files
    assert orientation_ranks([0, 1], {(0, 1): verdict(0, 1, 180)}, lambda n: 3 if n == 1 else 1) == {0: 1, 1: 0}


def test_keep_order_puts_the_original_first():
    rows = [{"path": "a", "width": 10, "height": 10, "file_size": 5, "mtime": 3.0},
            {"path": "b", "width": 20, "height": 10, "file_size": 9, "mtime": 9.0},
            {"path": "c", "width": 20, "height": 10, "file_size": 1, "mtime": 2.0}]
    assert [r["path"] for r in sorted(rows, key=keep_order)] == ["c", "b", "a"]  # pixels, then the older file
    turned = keep_order(rows[1], orientation=1)
    assert sorted([turned, keep_order(rows[0])])[0] == keep_order(rows[0])  # un-turned before larger
    assert keep_order(rows[1], exif=(30, "2019:01:01 10:00:00")) < keep_order(rows[2])  # richer EXIF first
    assert keep_order(rows[0], prefer=0) < keep_order(rows[2], prefer=1)  # --prefer before everything


def test_the_server_moves_and_undoes_through_the_same_manifest_behind_its_token(own):
    pytest.importorskip("fastapi", reason="the server needs the extra: pip install '.[serve]'")
    pytest.importorskip("multipart", reason="the server needs python-multipart: pip install '.[serve]'")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from vladsearch.server.app import create_app

    before, indexed_before = _hashes(own / "photos"), _indexed(own)
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(create_app(own / "photos.vlad", token="s3cret", refresh_interval=0.2)) as client:
        assert client.post("/api/duplicates/move", json={"dry_run": False}).status_code == 401
        assert client.post("/api/undo", json={"manifest": "/x.json"}).status_code == 401
        preview = client.post("/api/duplicates/move", json={}, headers=auth)  # a dry run unless asked
        assert preview.status_code == 200 and preview.json()["dry_run"]
        assert {e["image"] for e in preview.json()["entries"]} == EXTRAS and _hashes(own / "photos") == before
        for bad in ("../elsewhere", "a/b", ".hidden", ""):
            answer = client.post("/api/duplicates/move", json={"dry_run": False, "move_to": bad}, headers=auth)
            assert answer.status_code == 400 and "move_to" in answer.json()["error"]
        moved = client.post("/api/duplicates/move", json={"dry_run": False}, headers=auth).json()
        manifest = Path(moved["manifest"])
        assert moved["counts"] == {"moved": len(EXTRAS)} and manifest.parent == own / "photos-duplicates"
        assert set(_hashes(own / "photos")) == set(before) - EXTRAS
        assert client.get("/api/info", headers=auth).json()["counts"]["vectors"] == len(indexed_before)
        for foreign in ("/etc/passwd", str(own / "photos.vlad" / "catalog.sqlite"), "relative.json"):
            assert client.post("/api/undo", json={"manifest": foreign}, headers=auth).status_code == 404
        assert json.loads(cli("undo", str(manifest), "--dry-run", "--json").stdout)["counts"] == {"moved": len(EXTRAS)}
        undone = client.post("/api/undo", json={"manifest": str(manifest)}, headers=auth).json()
        assert undone["counts"] == {"restored": len(EXTRAS)}
    assert _hashes(own / "photos") == before and _indexed(own) == indexed_before


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def test_the_page_finds_moves_and_undoes(own):
    pytest.importorskip("fastapi", reason="the server needs the extra: pip install '.[serve]'")
    pytest.importorskip("selenium", reason="the browser test needs selenium: pip install '.[test]'")
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs the system Chromium and its driver: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from server_helpers import serve

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(flag)
    before, indexed_before = _hashes(own / "photos"), _indexed(own)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        with serve(own / "photos.vlad") as base:
            browser.get(base + "/")
            wait = WebDriverWait(browser, 120)
            report = browser.find_element(By.ID, "dup-report")
            browser.find_element(By.ID, "dup-find").click()
            wait.until(lambda _: "extras would move" in report.text)
            assert f"{len(EXTRAS)} extras would move" in report.text and "backup/coffee.jpg (identical)" in report.text
            assert _hashes(own / "photos") == before  # the preview is a dry run
            browser.execute_script("window.confirm = () => true;")
            browser.find_element(By.ID, "dup-move").click()
            wait.until(lambda _: "Moved" in report.text)
            assert f"Moved {len(EXTRAS)} files" in report.text
            assert set(_hashes(own / "photos")) == set(before) - EXTRAS
            browser.find_element(By.ID, "dup-undo").click()
            wait.until(lambda _: "Restored" in report.text)
            assert f"Restored {len(EXTRAS)} files" in report.text
    finally:
        browser.quit()
    assert _hashes(own / "photos") == before and _indexed(own) == indexed_before


def test_a_verdict_knows_the_quarter_turns_and_the_mirror():
    pytest.importorskip("skimage")
    import numpy as np

    from vladsearch.collection.keep_choice import pair_turn
    from vladsearch.query.pair_verification import verify_pair

    sift = cv2.SIFT_create(1024)

    def features(image):
        keypoints, descriptors = sift.detectAndCompute(image, None)
        return np.array([k.pt for k in keypoints], np.float32), descriptors.astype(np.float32)

    image = cv2.cvtColor(photo("coffee"), cv2.COLOR_BGR2GRAY)
    original = features(image)
    for edited, turn in ((cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE), (1, 0)),
                         (cv2.rotate(image, cv2.ROTATE_180), (2, 0)),
                         (cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE), (3, 0)),
                         (cv2.flip(image, 1), (0, 1)), (image[20:380, 30:570], (0, 0))):
        verdict = PairVerdict(0, 1, *verify_pair(original, features(edited), mirror=True, rotation=True))
        assert verdict.inliers >= 15 and pair_turn(verdict) == turn, (turn, verdict)


def test_one_process_at_a_time_acts_on_a_manifest(tmp_path):
    import fcntl

    manifest = tmp_path / "dups" / "moves.json"
    with file_moves.manifest_lock(manifest):
        child = subprocess.run([sys.executable, "-c", "import sys, vladsearch.collection.file_moves as m\n"
                                "try:\n    m.manifest_lock(sys.argv[1]).__enter__()\n"
                                "except ValueError as e:\n    print(e); sys.exit(3)", str(manifest)],
                               env={**os.environ, "PYTHONPATH": str(PROJECT)}, capture_output=True, text=True)
        assert child.returncode == 3 and "another vladsearch process" in child.stdout
    fd = os.open(manifest.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released at the end
    finally:
        os.close(fd)
    assert list(manifest.parent.iterdir()) == []  # no lock file left behind
