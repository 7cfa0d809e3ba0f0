"""benchmarks/make_copy_benchmark.py on a few scikit-image photographs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from vladsearch.evaluation.datasets import load_dataset

data = pytest.importorskip("skimage.data", reason="scikit-image provides the test photographs")

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "make_copy_benchmark.py"
spec = importlib.util.spec_from_file_location("make_copy_benchmark", SCRIPT)
mcb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mcb)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    (folder / "more").mkdir()
    for name, relative in [("astronaut", "astronaut.jpg"), ("coffee", "coffee.png"), ("chelsea", "chelsea.jpg"),
                           ("rocket", "more/rocket.jpg"), ("immunohistochemistry", "ihc.jpg"),
                           ("camera", "camera.png")]:
        image = getattr(data, name)()
        image = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(folder / relative), image)
    return folder


@pytest.fixture(scope="module")
def bench(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "copies"
    mcb.make_copy_benchmark(photos, out, queries=12, seed=3)
    return out


def test_layout_and_ground_truth(photos, bench):
    sources = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*") if p.is_file())
    images = sorted(p.relative_to(bench / "images").as_posix() for p in (bench / "images").rglob("*") if p.is_file())
    assert images == sources
    assert all((bench / "images" / s).read_bytes() == (photos / s).read_bytes() for s in sources)
    gt = json.loads((bench / "gt.json").read_text())["queries"]
    assert len(gt) == 12
    families = sorted(name.split("_")[0] for name in gt)
    assert families == sorted(list(mcb.FAMILIES) * 2)  # families in turn: each exactly twice
    for name, truth in gt.items():
        assert truth["ignore"] == [] and len(truth["positives"]) == 1 and truth["positives"][0] in sources
        assert (bench / "queries" / name).is_file()
    assert "make_copy_benchmark.py" in (bench / "README.txt").read_text()
    dataset = load_dataset(bench)
    assert len(dataset.queries) == 12 and dataset.database == sources


def test_edits_do_what_they_say(photos, bench):
    transforms = json.loads((bench / "transforms.json").read_text())
    for name, t in transforms.items():
        query_file = bench / "queries" / name
        source = cv2.imread(str(photos / t["source"]), cv2.IMREAD_COLOR)
        query = cv2.imread(str(query_file), cv2.IMREAD_COLOR)
        assert query is not None, name
        (sh, sw), (qh, qw) = source.shape[:2], query.shape[:2]
        family = t["family"]
        if family == "exact":
            assert query_file.read_bytes() == (photos / t["source"]).read_bytes()
        elif family == "rescale":
            assert 0.3 <= qw / sw <= 0.6 + 1e-2 and 15 <= t["jpeg_quality"] <= 40
        elif family in ("crop", "flipcrop"):
            low, high = (0.5, 0.8) if family == "crop" else (0.6, 0.9)
            assert low - 0.05 <= qw * qh / (sw * sh) <= high + 0.05
            x0, y0, x1, y1 = t["box"]
            window = source[y0:y1, x0:x1] if family == "crop" else cv2.flip(source, 1)[y0:y1, x0:x1]
            assert np.abs(window.astype(int) - query.astype(int)).mean() < 6  # JPEG noise only
        elif family == "rotate":
            if t["angle"] in (90, 270):
                assert (qh, qw) == (sw, sh)
            elif t["angle"] == 180:
                assert (qh, qw) == (sh, sw)
            else:
                assert 5 <= abs(t["angle"]) <= 30 and qw > sw and qh > sh
        elif family == "overlay":
            assert (qh, qw) == (sh, sw) and t["caption"] in mcb.CAPTIONS
            assert np.abs(source.astype(int) - query.astype(int)).mean() > 5


def test_seeded_and_repeatable(photos, bench, tmp_path):
    mcb.make_copy_benchmark(photos, tmp_path / "again", queries=12, seed=3)
    for name in ("gt.json", "transforms.json"):
        assert (tmp_path / "again" / name).read_text() == (bench / name).read_text()
    for query in (bench / "queries").iterdir():
        assert (tmp_path / "again" / "queries" / query.name).read_bytes() == query.read_bytes()
    mcb.make_copy_benchmark(photos, tmp_path / "other", queries=12, seed=4)
    assert (tmp_path / "other" / "transforms.json").read_text() != (bench / "transforms.json").read_text()


def test_refuses_bad_input(photos, bench, tmp_path):
    with pytest.raises(ValueError, match="not empty"):
        mcb.make_copy_benchmark(photos, bench, queries=2)
    with pytest.raises(ValueError, match="no photographs"):
        mcb.make_copy_benchmark(tmp_path, tmp_path / "out", queries=2)
    with pytest.raises(ValueError, match="unknown families"):
        mcb.make_copy_benchmark(photos, tmp_path / "out2", queries=2, families=("blur",))


def test_main_with_more_queries_than_photos(photos, tmp_path, capsys):
    assert mcb.main([str(photos), str(tmp_path / "cli"), "--queries", "8", "--families", "exact,crop"]) == 0
    gt = json.loads((tmp_path / "cli" / "gt.json").read_text())["queries"]
    assert len(gt) == 8 and {name.split("_")[0] for name in gt} == {"exact", "crop"}
    assert mcb.main([str(photos), str(tmp_path / "cli"), "--queries", "1"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_evaluate_on_copy_benchmark(bench, tmp_path, capsys):
    """End to end: the generated benchmark, evaluated by vladsearch.evaluation.evaluate (build, then reuse)."""
    import argparse

    from vladsearch.evaluation.evaluate import add_cli, evaluate

    index_dir = tmp_path / "bench.vlad"
    result = evaluate(bench, clusters=8, index_dir=index_dir, progress=False, workers=1, details=True)
    assert result["queries"] == 12 and result["index"]["reused"] is False and index_dir.is_dir()
    assert set(result["groups"]) == set(mcb.FAMILIES)
    exact = result["groups"]["exact"]
    assert exact["queries"] == 2 and exact["mAP"] == 1.0 and exact["recall@1"] == 1.0
    assert 0 < result["mAP"] <= 1 and result["recall@10"] >= result["recall@5"] >= result["recall@1"]
    assert result["settings"]["top"] == 6  # the whole database
    assert {row["query"] for row in result["per_query"]} == set(json.loads((bench / "gt.json").read_text())["queries"])

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", str(bench), "--index", str(index_dir), "--json", "--workers", "1"])
    assert args.func(args) == 0
    reused = json.loads(capsys.readouterr().out)
    assert reused["index"]["reused"] is True and reused["mAP"] == pytest.approx(result["mAP"])
    args = parser.parse_args(["evaluate", str(bench), "--index", str(index_dir), "--quiet", "--workers", "1"])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "mAP" in table and "flipcrop" in table and "reused index" in table
    with pytest.raises(ValueError, match="--features sift"):
        evaluate(bench, features="rootsift", index_dir=index_dir, progress=False)
