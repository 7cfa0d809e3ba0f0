"""Dataset readers: tiny fake versions of every supported layout, plus the shared benchmark sets."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from vladsearch.evaluation.datasets import load_dataset, safe_load_pickle

SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"


def touch_images(folder: Path, names) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"\xff\xd8 not decoded by the readers")


# --- vladsearch layout -------------------------------------------------------------
def write_ours(root: Path, link_queries: bool) -> None:
    touch_images(root / "images", ["a.jpg", "b.jpg", "sub/c.png"])
    (root / "queries").mkdir()
    if link_queries == "stub":  # a symlink checked out as a text file holding its target
        (root / "queries" / "a.jpg").write_text("../images/a.jpg")
    elif link_queries:
        os.symlink("../images/a.jpg", root / "queries" / "a.jpg")
    else:
        touch_images(root / "queries", ["a.jpg"])
    touch_images(root / "queries", ["crop_0001.jpg"])
    gt = {"queries": {"a.jpg": {"positives": ["b.jpg"], "ignore": ["a.jpg"]},
                      "crop_0001.jpg": {"positives": ["sub/c.png"]}}}
    (root / "gt.json").write_text(json.dumps(gt))


@pytest.mark.parametrize("link_queries", [False, True, "stub"])
def test_vladsearch_layout(tmp_path, link_queries):
    write_ours(tmp_path, link_queries)
    dataset = load_dataset(tmp_path)
    assert dataset.layout == "vladsearch" and dataset.name == tmp_path.name
    assert dataset.images_dir == tmp_path / "images"
    assert dataset.database == ["a.jpg", "b.jpg", "sub/c.png"]
    by_name = {q.name: q for q in dataset.queries}
    assert by_name["a.jpg"].positives == {"b.jpg"} and by_name["a.jpg"].ignore == {"a.jpg"}
    assert by_name["a.jpg"].path.read_bytes() == (tmp_path / "images" / "a.jpg").read_bytes()
    assert by_name["crop_0001.jpg"].ignore == set() and by_name["crop_0001.jpg"].bbox is None


def test_vladsearch_layout_errors(tmp_path):
    write_ours(tmp_path, link_queries=False)
    (tmp_path / "queries" / "crop_0001.jpg").unlink()
    with pytest.raises(ValueError, match="missing from"):
        load_dataset(tmp_path)
    write_gt = {"queries": {"a.jpg": {"positives": ["nowhere.jpg"]}}}
    (tmp_path / "gt.json").write_text(json.dumps(write_gt))
    with pytest.raises(ValueError, match="nowhere.jpg"):
        load_dataset(tmp_path)
    (tmp_path / "gt.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="gt.json"):
        load_dataset(tmp_path)


def test_unknown_layout_and_missing_folder(tmp_path):
    touch_images(tmp_path, ["holiday.jpg"])
    with pytest.raises(ValueError, match="Holidays"):
        load_dataset(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "absent")


# --- INRIA Holidays and UKBench ----------------------------------------------------
@pytest.mark.parametrize("subfolder", ["jpg", ""])
def test_holidays(tmp_path, subfolder):
    names = ["100000.jpg", "100001.jpg", "100002.jpg", "100100.jpg", "100101.jpg", "100200.jpg"]
    touch_images(tmp_path / subfolder, names)
    dataset = load_dataset(tmp_path)
    assert dataset.layout == "holidays"
    assert dataset.images_dir == tmp_path / subfolder
    assert dataset.database == sorted(names)
    by_name = {q.name: q for q in dataset.queries}
    assert list(by_name) == ["100000.jpg", "100100.jpg", "100200.jpg"]
    assert by_name["100000.jpg"].positives == {"100001.jpg", "100002.jpg"}
    assert by_name["100000.jpg"].ignore == {"100000.jpg"}
    assert by_name["100100.jpg"].positives == {"100101.jpg"}
    assert by_name["100200.jpg"].positives == set()  # a group of one: scored as NaN, left out of means
    assert by_name["100100.jpg"].path == tmp_path / subfolder / "100100.jpg"


def test_ukbench(tmp_path):
    names = [f"ukbench{i:05d}.jpg" for i in range(8)]
    touch_images(tmp_path / "full", names)
    dataset = load_dataset(tmp_path)
    assert dataset.layout == "ukbench" and len(dataset.queries) == 8
    query = {q.name: q for q in dataset.queries}["ukbench00005.jpg"]
    assert query.positives == {"ukbench00004.jpg", "ukbench00006.jpg", "ukbench00007.jpg"}
    assert query.ignore == {"ukbench00005.jpg"}


# --- revisited Oxford / Paris ------------------------------------------------------
def write_revisited(root: Path, protocol: int | None = None) -> None:
    imlist = [f"db_{i}" for i in range(6)]
    touch_images(root / "jpg", [f"{n}.jpg" for n in imlist] + ["query_a.jpg", "query_b.jpg"])
    gnd = [
        {"bbx": np.array([10.5, 20.0, 110.0, 220.0]), "easy": np.array([0, 1]), "hard": np.array([2]),
         "junk": np.array([3])},
        {"bbx": [0.0, 0.0, 50.0, 40.0], "easy": np.array([], dtype=np.int64), "hard": np.array([4, 5]),
         "junk": np.array([0])},
    ]
    cfg = {"imlist": imlist, "qimlist": ["query_a", "query_b"], "gnd": gnd}
    with open(root / "gnd_roxford5k.pkl", "wb") as handle:
        pickle.dump(cfg, handle, protocol=protocol)


@pytest.mark.parametrize("pickle_protocol", [2, 4, 5])
def test_revisited_medium(tmp_path, pickle_protocol):
    write_revisited(tmp_path, pickle_protocol)
    dataset = load_dataset(tmp_path)
    assert dataset.layout == "revisited" and dataset.name == "roxford5k-medium"
    assert dataset.database == [f"db_{i}.jpg" for i in range(6)]  # queries are not in the database
    a, b = dataset.queries
    assert a.name == "query_a.jpg" and a.path == tmp_path / "jpg" / "query_a.jpg"
    assert a.positives == {"db_0.jpg", "db_1.jpg", "db_2.jpg"} and a.ignore == {"db_3.jpg"}
    assert a.bbox == (10.5, 20.0, 110.0, 220.0)
    assert b.positives == {"db_4.jpg", "db_5.jpg"} and b.ignore == {"db_0.jpg"}


def test_revisited_easy_and_hard(tmp_path):
    write_revisited(tmp_path)
    easy = load_dataset(tmp_path, protocol="easy").queries[0]
    assert easy.positives == {"db_0.jpg", "db_1.jpg"} and easy.ignore == {"db_3.jpg", "db_2.jpg"}
    hard = load_dataset(tmp_path, protocol="Hard").queries
    assert hard[0].positives == {"db_2.jpg"} and hard[0].ignore == {"db_3.jpg", "db_0.jpg", "db_1.jpg"}
    assert hard[1].positives == {"db_4.jpg", "db_5.jpg"}
    with pytest.raises(ValueError, match="protocol"):
        load_dataset(tmp_path, protocol="extreme")


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Harmless:
    pass


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "class"])
def test_malicious_pickle_is_refused(tmp_path, payload):
    write_revisited(tmp_path)
    marker = tmp_path / "pwned"
    evil = {"os.system": Exploit(marker), "class": Harmless()}.get(payload)
    if evil is None:
        class EvalExploit:
            def __reduce__(self):
                return (eval, (f"open({str(marker)!r}, 'w')",))
        evil = EvalExploit()
    cfg = {"imlist": ["db_0"], "qimlist": ["query_a"], "gnd": [{"bbx": None, "easy": evil}]}
    with open(tmp_path / "gnd_roxford5k.pkl", "wb") as handle:
        pickle.dump(cfg, handle)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_dataset(tmp_path)
    assert not marker.exists()


def test_safe_pickle_round_trips_numpy(tmp_path):
    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.int64(3), (1, 2)], "c": {1, 2}}
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(data))
    loaded = safe_load_pickle(path)
    np.testing.assert_array_equal(loaded["a"], data["a"])
    assert loaded["a"].dtype == np.float32 and loaded["b"] == [3, (1, 2)] and loaded["c"] == {1, 2}


# --- shared benchmark sets ---------------------------------------------------------
def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared dataset {path} not present (../shared/data is outside the repository)")
    return path


def test_shared_corridor():
    dataset = load_dataset(shared("corridor"))
    assert len(dataset.database) == 111 and len(dataset.queries) == 111
    assert all(q.path.is_file() and 3 <= len(q.positives) <= 5 and not q.ignore for q in dataset.queries)


def test_shared_oxford_affine_subset():
    dataset = load_dataset(shared("oxford_affine_subset"))
    assert len(dataset.database) == 24 and len(dataset.queries) == 24
    query = {q.name: q for q in dataset.queries}["graf_img1.ppm"]
    # queries/ holds links (or, in copies without symlinks, text files naming the target)
    assert query.path.resolve() == (dataset.images_dir / "graf_img1.ppm").resolve()
    assert query.path.stat().st_size > 1000
    assert query.positives == {f"graf_img{i}.ppm" for i in range(2, 7)} and query.ignore == {"graf_img1.ppm"}


def test_evaluate_revisited_crops_queries_and_drops_non_database_images(tmp_path):
    """The query is searched by its bbox crop, and the query photo (indexed from jpg/) is not scored."""
    import cv2

    from vladsearch.evaluation.evaluate import evaluate

    skdata = pytest.importorskip("skimage.data", reason="scikit-image provides the test photographs")
    (tmp_path / "jpg").mkdir()
    names = ["astronaut", "coffee", "chelsea", "rocket", "camera"]
    for i, name in enumerate(names):
        image = getattr(skdata, name)()
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
        cv2.imwrite(str(tmp_path / "jpg" / f"db_{i}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    canvas = cv2.resize(cv2.cvtColor(skdata.gravel(), cv2.COLOR_GRAY2BGR), (1100, 900))
    canvas[200:712, 300:812] = cv2.imread(str(tmp_path / "jpg" / "db_0.jpg"))
    cv2.imwrite(str(tmp_path / "jpg" / "query_a.jpg"), canvas, [cv2.IMWRITE_JPEG_QUALITY, 95])
    gnd = [{"bbx": np.array([300.0, 200.0, 811.0, 711.0]), "easy": np.array([0]), "hard": np.array([], np.int64),
            "junk": np.array([], np.int64)}]
    with open(tmp_path / "gnd_roxford5k.pkl", "wb") as handle:
        pickle.dump({"imlist": [f"db_{i}" for i in range(5)], "qimlist": ["query_a"], "gnd": gnd}, handle)
    result = evaluate(tmp_path, clusters=8, progress=False, workers=1, details=True)
    assert result["settings"]["interpolation"] == "trapezoid" and result["settings"]["protocol"] == "medium"
    assert result["index"]["images"] == 6 and result["index"]["database"] == 5
    assert result["mAP"] == 1.0 and result["recall@1"] == 1.0
    assert result["per_query"][0]["top"][:1] == ["db_0.jpg"]
    assert len(result["per_query"][0]["top"]) == 5 and "query_a.jpg" not in result["per_query"][0]["top"]
