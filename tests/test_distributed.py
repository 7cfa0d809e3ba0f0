"""`build --ray` / `add --ray`: the local build's vectors from a Ray cluster, committed or not at all.

One local Ray instance (2 CPUs) serves the whole session; the command-line tests start
their own instance, as a user's `--ray` does, and check that none of its processes stay.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from live_helpers import cli, info, make_images, popen_cli

ray = pytest.importorskip("ray", reason='Ray is not installed: pip install "vladsearch[ray]"')
pytest.importorskip("ray.data", reason='Ray Data is not installed: pip install "vladsearch[ray]"')

from vladsearch import Index
from vladsearch.executors import ray as ray_executor
from vladsearch.store import catalog
from vladsearch.store.check import check_index

SMALL = {"features": "sift", "clusters": 8, "codebook_images": 8, "seed": 5}
RAY_NAMES = ("raylet", "gcs_server", "ray::", "ray/_private", "ray/dashboard", "default_worker.py")


@pytest.fixture(scope="module")  # once: only this module uses Ray (conftest runs it last)
def ray_session():
    """One local Ray instance for the Ray tests; fractional-CPU actors run on it."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """24 textured images in two folders, a text file named .jpg and an image without keypoints."""
    root = tmp_path_factory.mktemp("ray-photos")
    make_images(root, 16, seed=1)
    make_images(root / "more", 8, seed=2)
    (root / "broken.jpg").write_bytes(b"this is not an image")
    cv2.imwrite(str(root / "flat.png"), np.full((64, 64), 128, np.uint8))
    return root


def vectors_by_path(index: Index) -> dict[str, np.ndarray]:
    rows = [r for r in catalog.image_rows(index.snapshot.db) if r["segment"] is not None]
    return dict(zip([r["path"] for r in rows], index.vectors_of([r["id"] for r in rows])))


def assert_same_index(local: Index, remote: Index) -> None:
    a, b = vectors_by_path(local), vectors_by_path(remote)
    assert sorted(a) == sorted(b)
    for path in a:
        assert np.allclose(a[path], b[path], atol=1e-5), path
    assert sorted(local.report.skipped) == sorted(remote.report.skipped)
    assert sorted(local.report.no_keypoints) == sorted(remote.report.no_keypoints)


def ray_processes() -> set[int]:
    """Live Ray processes (raylet, GCS, workers) outside this test process's own tree."""
    def parent(pid: int) -> int:
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[1])
        except (OSError, IndexError, ValueError):
            return 0

    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if state == "Z" or not any(name in command for name in RAY_NAMES):
            continue
        pid = ancestor = int(proc.name)
        while ancestor > 1 and ancestor != os.getpid():
            ancestor = parent(ancestor)
        if ancestor != os.getpid():
            found.add(pid)
    return found


def test_ray_build_gives_the_local_vectors(ray_session, photos, tmp_path):
    """Training on the driver from cluster-extracted features, in the seeded order: identical vectors
    (PCA-whitened too), the same files skipped by name."""
    params = {**SMALL, "codebook_images": 12, "pca": 8}
    local = Index.build(photos, index=tmp_path / "local.vlad", workers=2, progress=False, **params)
    remote = ray_executor.build_index(photos, index=tmp_path / "ray.vlad", progress=False, **params)
    assert_same_index(local, remote)
    assert ("broken.jpg", "not an image file (unrecognised format)") in remote.report.skipped
    assert remote.report.no_keypoints == ["flat.png"]
    assert remote.cluster.actors == 2 and 0 < remote.cluster.num_cpus < 1  # fractional: no deadlock
    assert check_index(tmp_path / "ray.vlad")[0] == []
    assert not list((tmp_path / "ray.vlad" / "staging").glob("*/*"))  # every staged segment committed
    reopened = Index.open(tmp_path / "ray.vlad")
    query = photos / "img_1_003.jpg"
    assert reopened.search([query], top=1)[0].matches[0].image == "img_1_003.jpg"


def test_ray_add_commits_the_vectors_a_local_add_would(ray_session, photos, tmp_path):
    make_images(tmp_path / "new", 6, seed=9)
    """Workers also fill the segments' local-feature caches, as a local add does."""
    built = {}
    for name in ("local", "ray"):
        built[name] = Index.build(photos, index=tmp_path / f"{name}.vlad", workers=2, progress=False,
                                  keep_features=64, **SMALL)
    built["local"].add([tmp_path / "new"], workers=2, progress=False)
    report = ray_executor.add_images(built["ray"], [tmp_path / "new"], progress=False)
    assert report.indexed == 6 and report.segments >= 1
    assert_same_index(built["local"], built["ray"])
    assert info(tmp_path / "ray.vlad")["commits"] == info(tmp_path / "local.vlad")["commits"]
    assert check_index(tmp_path / "ray.vlad")[0] == []
    query = tmp_path / "new" / "img_9_002.jpg"
    [result] = Index.open(tmp_path / "ray.vlad").search([query], top=1, rerank=5)
    assert result.matches[0].image.endswith("img_9_002.jpg") and result.matches[0].verified
    again = ray_executor.add_images(Index.open(tmp_path / "ray.vlad"), [tmp_path / "new"], progress=False)
    assert again.indexed == 0 and again.unchanged == 6


def test_a_ray_add_that_merges_a_large_preset_index_keeps_it_sound(ray_session, photos, tmp_path):
    """The merge a Ray add triggers is the local one: on a --preset large index (float16
    vectors, compact codes) it rewrites the segments it should, and check and search agree."""
    from vladsearch.encoding.encoder import preset_params
    from vladsearch.store.compaction import MERGE_FACTOR

    index_dir = tmp_path / "large.vlad"
    index = Index.build(photos, index=index_dir, workers=2, progress=False, **{**SMALL, **preset_params("large")})
    assert index.params.vector_dtype == "float16" and index.encoder.coder is not None
    new = make_images(tmp_path / "new", MERGE_FACTOR, seed=21)
    for image in new[:-1]:  # one small segment each, below the merge
        index.add([image], workers=1, progress=False, merge=False)
    before = info(index_dir)
    assert before["counts"]["segments"] == MERGE_FACTOR
    report = ray_executor.add_images(index, [new[-1]], progress=False)  # the tenth small segment: a merge
    assert report.indexed == 1 and report.segments == 1
    after = info(index_dir)
    assert after["commits"] == before["commits"] + 2  # the add and its merge
    assert after["counts"]["segments"] == 2 and after["counts"]["vectors"] == before["counts"]["vectors"] + 1
    problems, counts = check_index(index_dir)
    assert problems == [] and counts["vectors"] == after["counts"]["vectors"]
    reopened = Index.open(index_dir)
    for image in (new[0], new[-1], photos / "img_1_003.jpg"):  # searched through the merged segments
        [result] = reopened.search([image], top=1, rerank=0)
        name = image.relative_to(photos).as_posix() if image.is_relative_to(photos) else image.as_posix()
        assert result.matches[0].image == name


class FailingEncoder(ray_executor.SegmentEncoder):
    """A worker that fails on the batches holding images of more/ or img_1_012.jpg (shipped by value)."""

    def __call__(self, batch):
        if any("/more/" in str(path) or str(path).endswith("img_1_012.jpg") for path in batch["path"]):
            raise RuntimeError("simulated worker failure")
        return super().__call__(batch)


def test_a_failing_worker_leaves_the_last_commit(ray_session, photos, tmp_path, monkeypatch):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    index_dir = tmp_path / "x.vlad"
    Index.build(photos / "more", index=index_dir, workers=2, progress=False, **SMALL)
    before = info(index_dir)
    original = ray_executor._map

    def failing_map(ray_module, items, worker, *args, **kwargs):
        return original(ray_module, items, FailingEncoder if worker is ray_executor.SegmentEncoder else worker,
                        *args, **kwargs)

    monkeypatch.setattr(ray_executor, "_map", failing_map)
    monkeypatch.setattr(ray_executor, "MIN_BATCH", 4)
    with pytest.raises(RuntimeError, match="simulated worker failure.*nothing was committed"):
        ray_executor.build_index(photos, index=index_dir, force=True, progress=False, **SMALL)
    with pytest.raises(RuntimeError, match="simulated worker failure.*nothing was committed"):
        ray_executor.add_images(Index.open(index_dir), [photos], progress=False)
    after = info(index_dir)
    assert (after["commits"], after["counts"], after["segments"]) == \
        (before["commits"], before["counts"], before["segments"])
    assert check_index(index_dir)[0] == []
    # On a cluster the command did not start, actors of the failed run may still finish a segment
    # after the driver cleaned its staging area: the next writer removes such leftovers.
    _settle(index_dir / "staging")
    Index.open(index_dir).remove(["not-indexed.jpg"])  # any write transaction collects garbage
    assert not list((index_dir / "staging").iterdir())
    assert info(index_dir)["counts"] == before["counts"]


def _settle(folder: Path, quiet: float = 2.0, limit: float = 30.0) -> None:
    """Wait until nothing under `folder` has changed for `quiet` seconds (late writers are done)."""
    deadline = time.time() + limit
    while time.time() < deadline:
        times = []
        for path in folder.rglob("*"):
            try:
                times.append(path.stat().st_mtime)
            except OSError:  # removed while we looked
                continue
        newest = max(times, default=0.0)
        if time.time() - newest >= quiet:
            return
        time.sleep(0.5)


def test_cli_build_ray_from_a_list_reports_ray_and_leaves_no_ray_process(photos, tmp_path):
    """No ADDRESS: the command starts its own instance and stops every process of it."""
    listing = tmp_path / "images.txt"
    files = sorted(photos.glob("*.*")) + [photos / "missing.jpg"]
    listing.write_text("# photos\n" + "\n".join(str(p) for p in files) + "\n")
    before = ray_processes()
    result = cli("build", str(listing), "--index", str(tmp_path / "x.vlad"), "--ray", "--json", "--quiet",
                 "--clusters", "8", "--codebook-images", "8", timeout=600)
    report = json.loads(result.stdout)
    assert report["executor"] == "ray" and report["ray"]["resources"]["CPU"] >= 1
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert skipped["broken.jpg"].startswith("not an image") and skipped["missing.jpg"].startswith("cannot read")
    assert report["indexed"] == len(files) - 2
    assert info(tmp_path / "x.vlad")["counts"]["vectors"] == len(files) - 2
    assert _none_left(before)


def _none_left(before: set[int], grace: float = 10.0) -> bool:
    """No new Ray process within `grace` seconds (Ray's shutdown ends its processes asynchronously)."""
    deadline = time.time() + grace
    while (left := ray_processes() - before) and time.time() < deadline:
        time.sleep(0.5)
    if left:
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for pid in left]
        raise AssertionError(f"Ray processes left: {commands}")
    return True


def test_ctrl_c_during_a_ray_add_keeps_the_last_commit_and_stops_ray(photos, tmp_path):
    index_dir = tmp_path / "x.vlad"
    Index.build(photos / "more", index=index_dir, workers=2, progress=False, **SMALL)
    before_index, before_ray = info(index_dir), ray_processes()
    make_images(tmp_path / "new", 160, seed=4)
    # A shell starts background jobs with SIGINT ignored, and children inherit that: give the
    # CLI the default disposition, as an interactive terminal would.
    process = popen_cli("add", str(index_dir), str(tmp_path / "new"), "--ray", "--quiet",
                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list((index_dir / "staging").glob("*/seg-*")) and time.monotonic() < deadline \
            and process.poll() is None:
        time.sleep(0.1)  # workers are writing segments: interrupt now
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "keeps its last commit" in stderr
    after = info(index_dir)
    assert (after["commits"], after["counts"]) == (before_index["commits"], before_index["counts"])
    assert _none_left(before_ray)
