"""Write a copy-detection benchmark (vladsearch layout) from any folder of photographs.

    python benchmarks/make_copy_benchmark.py PHOTOS_DIR OUT_DIR --queries 300 --seed 0

OUT_DIR/images/ gets every photo (hard-linked when possible, else copied, same relative
paths); OUT_DIR/queries/ gets N edited copies of photos drawn with the seed, in six
families that cover how images are reused (newsroom / archive copy detection):

    exact_     the file itself, byte for byte (keeps the source's extension)
    rescale_   downscaled to 30-60 % and re-encoded as a strong JPEG (quality 15-40)
    crop_      a crop keeping 50-80 % of the area
    rotate_    rotated by 90/180/270 degrees, or by 5-30 degrees on an enlarged canvas
    overlay_   a caption banner drawn with cv2.putText, plus a hue and brightness shift
    flipcrop_  mirrored left-right and cropped to 60-90 % of the area

Queries are named `<family>_<NNNN>.jpg` (NNNN = query number), so evaluation reports
each family as a group. gt.json gives each query its source photo as the only positive
and no ignored images; transforms.json records every edit's parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

Edit = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, dict]]
CAPTIONS = ("BREAKING NEWS", "(c) 2024 Photo Archive", "#travel #summer", "EXCLUSIVE",
            "Photo: Staff", "As seen on TV", "SALE -50%", "Caption goes here")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def list_photos(photos_dir: Path) -> list[Path]:
    """Image files under `photos_dir`, recursive and sorted (hidden files skipped)."""
    photos = sorted(p for p in Path(photos_dir).rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(photos_dir).parts))
    if not photos:
        raise ValueError(f"no photographs found in {photos_dir} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return photos


# --- the edits: BGR uint8 H×W×3 in, BGR uint8 out, plus the parameters used ----------
def rescale(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Downscale to 30-60 %; the strong JPEG quality is applied when writing."""
    scale = float(rng.uniform(0.3, 0.6))
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), {"scale": round(scale, 3),
                                                                    "quality": int(rng.integers(15, 41))}


def _crop(image: np.ndarray, rng: np.random.Generator, low: float, high: float) -> tuple[np.ndarray, dict]:
    h, w = image.shape[:2]
    area = float(rng.uniform(low, high))
    aspect = float(rng.uniform(0.8, 1.25))  # crop aspect relative to the image's
    cw = min(w, max(1, round(w * np.sqrt(area * aspect))))
    ch = min(h, max(1, round(h * area * w / cw)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image[y:y + ch, x:x + cw], {"box": [x, y, x + cw, y + ch], "area": round(cw * ch / (w * h), 3)}


def crop(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Keep a random window of 50-80 % of the area."""
    return _crop(image, rng, 0.5, 0.8)


def rotate(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Half the time a right angle (lossless), else 5-30 degrees either way on a canvas that holds it all."""
    if rng.random() < 0.5:
        angle = int(rng.choice([90, 180, 270]))
        code = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}[angle]
        return cv2.rotate(image, code), {"angle": angle}
    angle = float(rng.uniform(5, 30) * rng.choice([-1, 1]))
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    out_w, out_h = int(np.ceil(w * cos + h * sin)), int(np.ceil(w * sin + h * cos))
    matrix[:, 2] += ((out_w - w) / 2, (out_h - h) / 2)
    rotated = cv2.warpAffine(image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    return rotated, {"angle": round(angle, 2)}


def overlay(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A caption banner (top or bottom, 10-20 % of the height) and a hue/brightness shift."""
    h, w = image.shape[:2]
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.int16)
    hue_shift = int(rng.integers(10, 41) * rng.choice([-1, 1]))
    brightness = float(rng.uniform(0.7, 1.3))
    hsv[..., 0] = (hsv[..., 0] + hue_shift) % 180  # OpenCV hue runs 0..179
    hsv[..., 2] = np.clip(hsv[..., 2] * brightness, 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    band = max(8, round(h * rng.uniform(0.10, 0.20)))
    top = bool(rng.random() < 0.5)
    y0 = 0 if top else h - band
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    banner = out[y0:y0 + band].copy()
    cv2.rectangle(banner, (0, 0), (w, band), colour, thickness=-1)
    out[y0:y0 + band] = cv2.addWeighted(banner, 0.8, out[y0:y0 + band], 0.2, 0)
    text = str(rng.choice(CAPTIONS))
    font_scale = band / 45
    (text_w, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 2)
    if text_w > w * 0.95:
        font_scale *= w * 0.95 / text_w
        (text_w, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 2)
    ink = (255, 255, 255) if sum(colour) < 384 else (0, 0, 0)
    origin = (max(2, (w - text_w) // 2), y0 + (band + text_h) // 2)
    cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink, 2, cv2.LINE_AA)
    return out, {"caption": text, "banner": "top" if top else "bottom", "banner_height": band,
                 "hue_shift": hue_shift, "brightness": round(brightness, 3)}


def flipcrop(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Mirror left-right, then keep a window of 60-90 % of the area."""
    cropped, params = _crop(cv2.flip(image, 1), rng, 0.6, 0.9)
    return cropped, {"flip": "horizontal", **params}


# None: the file itself, byte for byte
FAMILIES: dict[str, Edit | None] = {"exact": None, "rescale": rescale, "crop": crop, "rotate": rotate,
                                    "overlay": overlay, "flipcrop": flipcrop}
DEFAULT_QUALITY = 90


def _place(source: Path, target: Path) -> None:
    """Hard-link `source` at `target` (no extra disk), or copy it across file systems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def make_query(source: Path, family: str, rng: np.random.Generator, target_stem: Path) -> tuple[Path, dict]:
    """Write one query edited from `source`; returns (file written, parameters)."""
    edit = FAMILIES[family]
    if edit is None:
        suffix = source.suffix.lower()
        target = target_stem.with_suffix(".jpg" if suffix in (".jpg", ".jpeg") else suffix)
        shutil.copyfile(source, target)
        return target, {}
    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode {source}")
    edited, params = edit(image, rng)
    quality = params.pop("quality", DEFAULT_QUALITY)
    target = target_stem.with_suffix(".jpg")
    if not cv2.imwrite(str(target), edited, [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"could not write {target}")
    return target, {**params, "jpeg_quality": quality}


def make_copy_benchmark(photos_dir: str | Path, out_dir: str | Path, queries: int = 300, seed: int = 0,
                        families: tuple[str, ...] = tuple(FAMILIES)) -> dict:
    """Build the benchmark in `out_dir` (which must be empty or absent); returns gt.json's content.

    Queries take the families in turn (query i is family i mod len(families)) so every
    family is equally represented; source photos are drawn without replacement while
    there are enough of them.
    """
    photos_dir, out_dir = Path(photos_dir), Path(out_dir)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    if queries < 1:
        raise ValueError(f"--queries must be at least 1, got {queries}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty; choose a new folder")
    photos = list_photos(photos_dir)
    rng = np.random.default_rng(seed)
    for photo in photos:
        _place(photo, out_dir / "images" / photo.relative_to(photos_dir))
    sources = rng.choice(len(photos), size=queries, replace=queries > len(photos))
    (out_dir / "queries").mkdir(parents=True)
    gt, transforms = {}, {}
    for number, source_index in enumerate(sources):
        family = families[number % len(families)]
        source = photos[int(source_index)]
        relative = source.relative_to(photos_dir).as_posix()
        written, params = make_query(source, family, rng, out_dir / "queries" / f"{family}_{number:04d}")
        gt[written.name] = {"positives": [relative], "ignore": []}
        transforms[written.name] = {"source": relative, "family": family, **params}
    gt_json = {"queries": gt}
    (out_dir / "gt.json").write_text(json.dumps(gt_json, indent=1))
    (out_dir / "transforms.json").write_text(json.dumps(transforms, indent=1))
    (out_dir / "README.txt").write_text(_readme(photos_dir, len(photos), queries, seed, families))
    return gt_json


def _readme(photos_dir: Path, photo_count: int, queries: int, seed: int, families: tuple[str, ...]) -> str:
    lines = [
        "Copy-detection benchmark (vladsearch layout)",
        "============================================",
        f"Made by        : benchmarks/make_copy_benchmark.py {photos_dir} <out> --queries {queries} --seed {seed}",
        f"Source photos  : {photo_count} files from {photos_dir} (their own licences apply)",
        "",
        "images/          every source photo, hard-linked or copied, same relative paths",
        f"queries/         {queries} edited copies named <family>_<NNNN>.jpg, families taken in turn:",
    ]
    for family in families:
        edit = FAMILIES[family]
        doc = "the source file itself, byte for byte" if edit is None else edit.__doc__.strip().splitlines()[0]
        lines.append(f"                   {family + '_':10s} {doc}")
    lines += [
        f"                 edits other than rescale are written as JPEG quality {DEFAULT_QUALITY}",
        "gt.json          each query's only positive is its source photo; nothing is ignored",
        "transforms.json  the parameters of every edit (crop box, angle, caption, ...)",
        "",
        "Evaluate with:   vladsearch evaluate <out>   (mAP and recall@k per family)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos_dir", type=Path, help="folder of photographs (searched recursively)")
    parser.add_argument("out_dir", type=Path, help="new folder to write the benchmark to")
    parser.add_argument("--queries", type=int, default=300, help="number of query images (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help=f"comma-separated subset of: {', '.join(FAMILIES)}")
    args = parser.parse_args(argv)
    try:
        gt = make_copy_benchmark(args.photos_dir, args.out_dir, args.queries, args.seed,
                                 tuple(f.strip() for f in args.families.split(",") if f.strip()))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(gt['queries'])} queries to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
