"""An index built with a learned extractor records its weights and refuses other weights."""

from __future__ import annotations

import cv2
import pytest
from conftest import photo, shared_path

from vladsearch import Index

torch = pytest.importorskip("torch", reason='torch is not installed (pip install "vladsearch[torch]")')


@pytest.fixture
def small_photos(tmp_path):
    for name in ["astronaut", "coffee", "rocket", "camera"]:
        cv2.imwrite(str(tmp_path / f"{name}.jpg"), cv2.resize(photo(name), (320, 240)))
    return tmp_path


def test_superpoint_index_records_weights_and_rejects_others(small_photos, tmp_path_factory):
    weights = shared_path("models", "superpoint_magicleap_v1_reconstructed", "superpoint_v1_reconstructed.pth")
    index = Index.build(small_photos, features="superpoint", clusters=8, weights=str(weights), progress=False,
                        workers=1)
    path = tmp_path_factory.mktemp("sp") / "sp.vlad"
    index.save(path)
    manifest = Index.open(path).info()
    assert manifest["features"]["name"] == "superpoint" and len(manifest["features"]["weights_sha256"]) == 64
    reopened = Index.open(path)  # finds the weights again from the path recorded at build
    assert reopened.search([small_photos / "coffee.jpg"], top=1)[0].matches[0].image == "coffee.jpg"

    state = torch.load(weights, map_location="cpu", weights_only=True)
    state["convDb.bias"] = state["convDb.bias"] + 0.01
    other = tmp_path_factory.mktemp("w") / "superpoint_v1.pth"
    torch.save(state, other)
    with pytest.raises(ValueError, match="weights"):
        Index.open(path, weights=str(other)).search([small_photos / "coffee.jpg"])
