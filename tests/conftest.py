"""Shared fixtures: real photographs from scikit-image, and ../shared data when present."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PHOTO_NAMES = ["astronaut", "camera", "chelsea", "clock", "coffee", "coins", "hubble_deep_field",
               "immunohistochemistry", "moon", "page", "retina", "rocket", "text", "brick", "gravel"]


def photo(name: str) -> np.ndarray:
    """A scikit-image sample photograph as a BGR (or grayscale) uint8 array."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR)
    return image


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """A folder of real photographs (JPEG and PNG), one in a sub-folder with a unicode, spaced name."""
    pytest.importorskip("skimage")
    root = tmp_path_factory.mktemp("photos")
    (root / "sub dir").mkdir()
    for i, name in enumerate(PHOTO_NAMES):
        target = root / ("sub dir" if i == 0 else "") / (f"фото {name}.png" if i == 0 else f"{name}.jpg")
        cv2.imwrite(str(target), photo(name), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return root


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (../shared beside the checkout holds the evaluation data)")
    return path


def pytest_collection_modifyitems(config, items):
    """Run the Ray tests last: after Ray has started gRPC threads in this process, forking it
    (our extraction pools fork) can crash the parent in gRPC's fork handlers (seen in CI)."""
    items.sort(key=lambda item: item.module.__name__ == "test_distributed")
