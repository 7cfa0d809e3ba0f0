"""The command line: output shapes, exit codes, messages a person can act on."""

import json

import pytest

from vladsearch.cli import main


@pytest.fixture(scope="module")
def index_path(photo_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "photos.vlad"
    assert main(["build", str(photo_dir), "--index", str(path), "-k", "16", "-q"]) == 0
    return path


def test_search_json_shape(index_path, photo_dir, capsys):
    query = str(photo_dir / "coffee.jpg")
    assert main(["search", str(index_path), query, "--top", "4", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1 and out[0]["query"] == query and out[0]["answer"] == "identical"
    first = out[0]["matches"][0]
    assert first["image"] == "coffee.jpg" and first["verdict"] == "identical" and first["verified"] is True
    assert main(["search", str(index_path), query, "--top", "4", "--json", "-q", "--rerank", "0"]) == 0
    matches = json.loads(capsys.readouterr().out)[0]["matches"]
    assert len(matches) == 4 and matches[0] == {"image": "coffee.jpg", "score": pytest.approx(1.0, abs=1e-4)}
    assert [m["score"] for m in matches] == sorted((m["score"] for m in matches), reverse=True)


def test_top_larger_than_index_returns_every_image(index_path, photo_dir, capsys):
    main(["search", str(index_path), str(photo_dir / "moon.jpg"), "--top", "1000", "--json", "-q", "--rerank", "0"])
    matches = json.loads(capsys.readouterr().out)[0]["matches"]
    assert len(matches) == 15 and len({m["image"] for m in matches}) == 15
    main(["search", str(index_path), str(photo_dir / "moon.jpg"), "--top", "1000", "--json", "-q", "--unverified"])
    matches = json.loads(capsys.readouterr().out)[0]["matches"]
    assert len(matches) == 15 and matches[0]["verified"] and not matches[-1]["verified"]


def test_csv_and_table_outputs(index_path, photo_dir, capsys):
    main(["search", str(index_path), str(photo_dir / "moon.jpg"), "--top", "2", "--csv", "-q", "--rerank", "0"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("query,answer,rank,image,verdict") and len(lines) == 3 and ",1,moon.jpg," in lines[1]
    main(["search", str(index_path), str(photo_dir / "moon.jpg"), "--top", "2", "-q"])
    out = capsys.readouterr().out
    assert "moon.jpg: identical to moon.jpg" in out and "answer" in out.splitlines()[1]


def test_info_and_remove(index_path, tmp_path, capsys):
    import shutil

    work = tmp_path / "copy.vlad"
    shutil.copytree(index_path, work)
    assert main(["info", str(work), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"]["indexed"] == 15 and info["params"]["clusters"] == 16
    assert main(["remove", str(work), "moon.jpg"]) == 0
    assert "14 remain" in capsys.readouterr().out
    assert main(["remove", str(work), "moon.jpg"]) == 1
    assert "not in the index: moon.jpg" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["search", "missing.vlad", "q.jpg"], "vladsearch build"),
    (["build", "nowhere/", "--index", "x.vlad"], "does not exist"),
])
def test_errors_exit_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_feature_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["build", ".", "--index", "x.vlad", "--features", "orb"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'orb'" in capsys.readouterr().err
