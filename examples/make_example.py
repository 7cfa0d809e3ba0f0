"""Write a small example collection from scikit-image's sample photographs.

    python examples/make_example.py example
makes example/photos/ (the collection) and example/queries/ (an exact copy, a resized
and re-encoded copy, a crop and a rotation of collection photos, and a photo that is not
in the collection), so that `vladsearch build` and `vladsearch search` have something
real to work on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

PHOTOS = ["astronaut", "camera", "chelsea", "clock", "coffee", "coins", "hubble_deep_field",
          "immunohistochemistry", "moon", "page", "retina", "rocket", "text", "brick"]


def _photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    return cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR) if image.ndim == 3 else image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    out = parser.parse_args().out
    (out / "photos").mkdir(parents=True, exist_ok=True)
    (out / "queries").mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        cv2.imwrite(str(out / "photos" / f"{name}.jpg"), _photo(name))
    coffee, rocket, chelsea = _photo("coffee"), _photo("rocket"), _photo("chelsea")
    cv2.imwrite(str(out / "queries" / "exact_coffee.jpg"), coffee)
    cv2.imwrite(str(out / "queries" / "small_rocket.jpg"), cv2.resize(rocket, None, fx=0.4, fy=0.4),
                [cv2.IMWRITE_JPEG_QUALITY, 30])
    cv2.imwrite(str(out / "queries" / "crop_chelsea.jpg"), chelsea[40:260, 60:380])
    cv2.imwrite(str(out / "queries" / "rotated_coffee.jpg"), cv2.rotate(coffee, cv2.ROTATE_90_CLOCKWISE))
    cv2.imwrite(str(out / "queries" / "not_in_collection_grass.jpg"), _photo("grass"))
    print(f"wrote {len(PHOTOS)} photos to {out / 'photos'} and 5 queries to {out / 'queries'}")


if __name__ == "__main__":
    main()
