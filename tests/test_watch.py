"""`vladsearch watch` as users meet it: real processes, real photos, files that arrive, move and go."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
from conftest import photo
from live_helpers import PROJECT, cli

from vladsearch import Index
from vladsearch.live.events import INSTALL, PollSource, open_source
from vladsearch.live.watcher import Watcher

START = ["camera", "coins", "moon", "page"]
ARRIVING = ["astronaut", "chelsea", "clock", "coffee", "rocket", "text", "brick"]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """lib/ (4 photos) indexed as lib.vlad, and spare/ (photos that arrive later); tests copy it."""
    pytest.importorskip("skimage")
    root = tmp_path_factory.mktemp("watch")
    for folder, names in (("lib", START), ("spare", ARRIVING)):
        (root / folder).mkdir()
        for name in names:
            _write(root / folder / f"{name}.jpg", name)
    cli("build", str(root / "lib"), "--index", str(root / "lib.vlad"), "-k", "8", "-q", "--workers", "1")
    return root


def _write(path: Path, name: str) -> None:
    """A scikit-image photo at half size (quick to extract), as a JPEG."""
    image = photo(name)
    image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def _copy(library: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    shutil.copytree(library / "lib", tmp_path / "lib")
    shutil.copytree(library / "lib.vlad", tmp_path / "lib.vlad")
    return tmp_path / "lib.vlad", tmp_path / "lib", library / "spare"


class WatchProcess:
    """`vladsearch watch --json` in its own process; its JSON events are collected as they come."""

    def __init__(self, index: Path, folder: Path, *extra: str) -> None:
        self.events: list[dict] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vladsearch.cli", "watch", str(index), str(folder), "--json", "--debounce", "1",
             "--settle", "1", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(PROJECT)})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for(lambda: any(e["event"] == "watching" for e in self.events), "the watcher to start")

    def _read(self) -> None:
        for line in self.process.stdout:
            self.events.append(json.loads(line))

    def wait_for(self, condition, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"watch exited {self.process.returncode}: {self.process.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout} s for {what}; events: {self.events}")
            time.sleep(0.2)

    def batches(self) -> list[dict]:
        return [e for e in self.events if e["event"] == "batch"]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        assert self.process.wait(timeout=60) == 0, self.process.stderr.read()
        self._reader.join(timeout=10)
        assert self.events[-1]["event"] == "stopped"


def _indexed(index: Path) -> list[str]:
    return sorted(Index.open(index).image_paths())


def _totals(batches: list[dict]) -> dict:
    renamed = {old: new for b in batches for old, new in b["renamed"].items()}
    return {"extracted": sum(b["extracted"] for b in batches), "renamed": renamed,
            "removed": sorted(n for b in batches for n in b["removed"])}


def test_a_watched_folder_follows_arrivals_renames_moves_and_deletions_and_catches_up(library, tmp_path):
    index, lib, spare = _copy(library, tmp_path)
    watcher = WatchProcess(index, lib)
    for name in ARRIVING[:5]:  # written in place, as a camera import or a download does
        _write(lib / f"{name}.jpg", name)
    os.rename(lib / "camera.jpg", lib / "camera renamed.jpg")
    (lib / "album").mkdir()
    shutil.move(lib / "coins.jpg", lib / "album" / "coins.jpg")
    (lib / "page.jpg").unlink()
    expected = sorted([f"{n}.jpg" for n in ARRIVING[:5]] + ["camera renamed.jpg", "album/coins.jpg", "moon.jpg"])
    watcher.wait_for(lambda: _indexed(index) == expected, "the index to show the folder")
    watcher.stop()
    assert _totals(watcher.batches()) == {"extracted": 5, "removed": ["page.jpg"],
                                          "renamed": {"camera.jpg": "camera renamed.jpg",
                                                      "coins.jpg": "album/coins.jpg"}}
    best = Index.open(index).search([lib / "album" / "coins.jpg"], top=1)[0].matches[0]
    assert (best.image, round(best.score, 3)) == ("album/coins.jpg", 1.0)

    # changes while no watcher runs: caught up by the next one
    shutil.copy(spare / "brick.jpg", lib / "album" / "brick.jpg")
    os.rename(lib / "moon.jpg", lib / "album" / "moon.jpg")
    (lib / "clock.jpg").unlink()
    expected = sorted(set(expected) - {"moon.jpg", "clock.jpg"} | {"album/brick.jpg", "album/moon.jpg"})
    restarted = WatchProcess(index, lib)
    restarted.wait_for(lambda: _indexed(index) == expected, "the catch-up after a restart")
    restarted.stop()
    assert _totals(restarted.batches()) == {"extracted": 1, "removed": ["clock.jpg"],
                                            "renamed": {"moon.jpg": "album/moon.jpg"}}


def test_polling_without_events_and_once(library, tmp_path):
    index, lib, spare = _copy(library, tmp_path)
    (lib / "moon.jpg").unlink()
    watcher = WatchProcess(index, lib, "--poll", "0.5")
    assert watcher.events[0]["mode"] == "poll"
    shutil.copy(spare / "rocket.jpg", lib / "rocket.jpg")
    watcher.wait_for(lambda: _indexed(index) == ["camera.jpg", "coins.jpg", "page.jpg", "rocket.jpg"],
                     "a poll to find the changes")
    watcher.stop()
    os.rename(lib / "page.jpg", lib / "page 2.jpg")
    once = cli("watch", str(index), str(lib), "--once", "--json")
    batch = json.loads(once.stdout.splitlines()[0])
    assert (batch["renamed"], batch["extracted"]) == ({"page.jpg": "page 2.jpg"}, 0)
    assert "page 2.jpg" in _indexed(index)


def test_a_file_still_being_written_waits_until_complete(library, tmp_path):
    index, lib, spare = _copy(library, tmp_path)
    watcher = Watcher(Index.open(index), [lib], workers=1, settle=60)
    shutil.copyfile(spare / "text.jpg", lib / "text.jpg")  # written just now: mtime is fresh
    batch = watcher.sync()
    assert (batch.added, batch.waiting) == ([], 1)
    watcher.closed[str(lib / "text.jpg")] = time.time() + 1  # its writer closed it
    batch = watcher.sync([])
    assert (batch.added, batch.extracted, batch.waiting) == (["text.jpg"], 1, 0)
    assert watcher.sync().extracted == 0  # nothing twice


def test_a_vanished_file_stays_while_another_is_being_written_but_a_rename_goes_through(library, tmp_path):
    index, lib, spare = _copy(library, tmp_path)
    watcher = Watcher(Index.open(index), [lib], workers=1, settle=60)
    an_hour_ago = time.time() - 3600
    os.utime(lib / "coins.jpg", (an_hour_ago, an_hour_ago))
    os.rename(lib / "coins.jpg", lib / "coins 2.jpg")  # a complete file: nothing wrote it for an hour
    (lib / "moon.jpg").unlink()  # may reappear as the file being written
    shutil.copyfile(spare / "text.jpg", lib / "text.jpg")
    batch = watcher.sync()
    assert (batch.renamed, batch.removed, batch.extracted) == ({"coins.jpg": "coins 2.jpg"}, [], 0)
    watcher.closed[str(lib / "text.jpg")] = time.time() + 1
    batch = watcher.sync([])
    assert (batch.added, batch.removed, batch.waiting) == (["text.jpg"], ["moon.jpg"], 0)


def test_a_touched_file_is_not_encoded_again_and_hidden_or_index_files_are_ignored(library, tmp_path):
    index, lib, _ = _copy(library, tmp_path)
    watcher = Watcher(Index.open(index), [lib], workers=1, settle=0.01)
    os.utime(lib / "moon.jpg")
    time.sleep(0.05)
    assert not watcher.sync()
    assert not watcher.watched(lib / ".partial.jpg") and not watcher.watched(lib / "x.vlad" / "catalog.sqlite")
    assert watcher.watched(lib / "album" / "a.jpg") and not watcher.watched(tmp_path / "elsewhere.jpg")


def test_a_network_file_system_is_polled(tmp_path, monkeypatch):
    from vladsearch.live import events as watch_events

    if sys.platform.startswith("linux"):
        assert watch_events.filesystem_type(tmp_path)  # /proc/mounts names the file system holding it
    monkeypatch.setattr(watch_events, "filesystem_type", lambda path: "nfs4")
    said = []
    assert isinstance(open_source([tmp_path], {}, None, say=said.append), PollSource)
    assert "network file system" in said[0]


def test_without_watchdog_it_polls_and_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "watchdog.observers", None)  # import fails as when not installed
    said = []
    source = open_source([tmp_path], {}, None, say=said.append)
    assert isinstance(source, PollSource) and INSTALL in said[0]
    with pytest.raises(NotADirectoryError, match="not a folder"):
        Watcher(None, [tmp_path / "missing"])


def test_serve_watch_follows_the_folder_inside_the_server(library, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import httpx
    from server_helpers import serve, wait_for

    index, lib, spare = _copy(library, tmp_path)
    with serve(index, "--watch", str(lib)) as base:
        shutil.copy(spare / "rocket.jpg", lib / "rocket.jpg")
        os.rename(lib / "page.jpg", lib / "page renamed.jpg")
        (lib / "moon.jpg").unlink()
        wait_for(lambda: _indexed(index) == ["camera.jpg", "coins.jpg", "page renamed.jpg", "rocket.jpg"], 60,
                 "serve --watch to follow the folder")
        wait_for(lambda: httpx.get(f"{base}/api/info", timeout=10).json()["counts"]["vectors"] == 4, 30,
                 "the server to show the watched commits")
