"""`vladsearch pairs`: the hloc / COLMAP pairs file."""

from __future__ import annotations

import pytest
from live_helpers import cli, make_images

from vladsearch.collection.pairs import sequential_pairs, unique_pairs


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    make_images(root / "photos", 12, seed=3)
    cli("build", str(root / "photos"), "--index", str(root / "f.vlad"), "--keep-features", "--quiet", "--workers", "2")
    return root


def _read(path):
    return [tuple(line.split(" ")) for line in path.read_text().splitlines()]


def test_format_no_self_pair_each_pair_once(frames):
    out = frames / "pairs.txt"
    cli("pairs", str(frames / "f.vlad"), "--top", "4", "--output", str(out))
    pairs = _read(out)
    names = {f"img_3_{i:03d}.jpg" for i in range(12)}
    assert all(len(p) == 2 and set(p) <= names and p[0] != p[1] for p in pairs)
    assert len({frozenset(p) for p in pairs}) == len(pairs)
    linked = {n: {b for a, b in pairs if a == n} | {a for a, b in pairs if b == n} for n in names}
    assert all(len(v) >= 4 for v in linked.values())  # each image's 4 nearest others are there


def test_sequential_adds_name_neighbours_and_keeps_loop_closures(frames):
    out = frames / "seq.txt"
    cli("pairs", str(frames / "f.vlad"), "--top", "2", "--sequential", "2", "--output", str(out))
    pairs = {frozenset(p) for p in _read(out)}
    for i in range(11):
        assert frozenset((f"img_3_{i:03d}.jpg", f"img_3_{i + 1:03d}.jpg")) in pairs
    sequential_only = {frozenset((f"img_3_{i:03d}.jpg", f"img_3_{j:03d}.jpg")) for i, j in sequential_pairs(12, 2)}
    assert pairs > sequential_only  # retrieval pairs stay as loop closures


def test_verified_keeps_a_subset(frames):
    out, verified = frames / "all.txt", frames / "verified.txt"
    cli("pairs", str(frames / "f.vlad"), "--top", "3", "--output", str(out))
    cli("pairs", str(frames / "f.vlad"), "--top", "3", "--output", str(verified), "--verified", "--workers", "2")
    assert {frozenset(p) for p in _read(verified)} <= {frozenset(p) for p in _read(out)}
    assert len(_read(verified)) < len(_read(out))  # distinct synthetic images do not verify


def test_pair_helpers():
    assert sequential_pairs(4, 2) == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]
    assert unique_pairs([(1, 2), (2, 1), (3, 3), (2, 4)]) == [(1, 2), (2, 4)]


def test_pycolmap_reads_the_file(frames, tmp_path):
    """COLMAP's imported-pairs matcher resolves every line to two of its image ids."""
    pycolmap = pytest.importorskip("pycolmap", reason="pycolmap not installed (pip install pycolmap)")

    out = frames / "colmap.txt"
    cli("pairs", str(frames / "f.vlad"), "--top", "3", "--output", str(out))
    database = tmp_path / "db.db"
    pycolmap.extract_features(database, frames / "photos")
    options = pycolmap.ImportedPairingOptions()
    options.match_list_path = str(out)
    generator = pycolmap.ImportedPairGenerator(options, pycolmap.Database.open(database))
    read = generator.all_pairs()
    assert len(read) == len(_read(out))
    assert all(a != b for a, b in read)


def test_shortlist_reranks_by_inliers_then_vlad_order():
    from vladsearch.collection.pairs import verified_first

    inliers = {(1, 5): 40, (1, 7): 12, (1, 3): 0}
    # VLAD order 2, 3, 5, 7, 9: the verified 5 and 7 come first (most inliers first), then VLAD order
    assert verified_first([2, 3, 5, 7, 9], inliers, 1, 3) == [5, 7, 2]
    assert verified_first([2, 3], {}, 1, 5) == [2, 3]  # nothing verified: plain VLAD order


def test_shortlist_zero_is_plain_vlad_and_default_stays_a_valid_file(frames):
    plain, deep = frames / "plain.txt", frames / "deep.txt"
    cli("pairs", str(frames / "f.vlad"), "--top", "3", "--shortlist", "0", "--output", str(plain))
    cli("pairs", str(frames / "f.vlad"), "--top", "3", "--output", str(deep), "--workers", "2")
    for pairs in (_read(plain), _read(deep)):
        assert all(p[0] != p[1] for p in pairs) and len({frozenset(p) for p in pairs}) == len(pairs)
        linked = {n: sum(n in p for p in pairs) for n in {x for p in pairs for x in p}}
        assert len(linked) == 12 and min(linked.values()) >= 3
