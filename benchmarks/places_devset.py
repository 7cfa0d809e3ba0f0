"""Write a small wide-baseline "same place" dev set from public images, in vladsearch's layout.

    python benchmarks/places_devset.py OUT_DIR --sacre-coeur DIR --lightglue-assets DIR \
        [--shared-data ../shared/data] [--distractors 30] [--size-mix]

Sources (read from folders you pass; nothing is downloaded and no image enters the repository):

- ``--sacre-coeur``: hloc's ``datasets/sacre_coeur/mapping`` (10 YFCC100M views of the Sacré-Cœur,
  github.com/cvg/Hierarchical-Localization);
- ``--lightglue-assets``: LightGlue's ``assets/`` (``sacre_coeur1/2.jpg``, one more Sacré-Cœur scene
  pair; ``DSC_0410/0411.JPG``, a second scene), github.com/cvg/LightGlue;
- ``--shared-data``: the project's ``homogr_pairs`` (14 wide-baseline pairs in 12 scenes: its boat
  and graf pairs are left out, being Oxford images, and LePoint1-3 are one scene) and
  ``oxford_affine_subset`` (viewpoint, zoom + rotation, blur, light; 4 scenes × 6), and the first
  ``--distractors`` frames of ``corridor`` as unrelated images.

Every scene image queries the other images of its scene. Each scene's first image is also
turned by 90° into an extra query whose positives are the *other* views (the unturned original
is ignored), which measures rotation robustness together with viewpoint change.

``--size-mix`` rescales every database image by 0.5, 1 or 2 (by a hash of its name), so that sizes
differ within scenes and among distractors: the collection on which "large images attract each
other" shows (docs/BENCHMARKS.md, "Places").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import cv2

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm")
SIZE_FACTORS = (0.5, 1.0, 2.0)
# homogr's boat and graf pairs are Oxford images, already in oxford_affine_subset's scenes
OXFORD_IN_HOMOGR = ("boat", "graf")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def collect_scenes(sacre_coeur: Path, assets: Path, shared: Path | None) -> dict[str, list[Path]]:
    """scene name -> its image files (each scene has at least two)."""
    scenes = {"sacre_coeur": _images(sacre_coeur) + [assets / "sacre_coeur1.jpg", assets / "sacre_coeur2.jpg"],
              "dsc": [assets / "DSC_0410.JPG", assets / "DSC_0411.JPG"]}
    if shared is not None:
        homogr = shared / "homogr_pairs" / "images"
        for image in _images(homogr):
            if image.stem.endswith("A") and image.stem[:-1] not in OXFORD_IN_HOMOGR:
                partner = [p for p in _images(homogr) if p.stem == image.stem[:-1] + "B"]
                # LePoint1, 2 and 3 show one building (LePoint2A and LePoint3A are the same photo)
                scenes.setdefault(f"homogr_{image.stem[:-1].rstrip('0123456789')}", []).extend([image, *partner])
        oxford = shared / "oxford_affine_subset" / "images"
        for image in _images(oxford):
            scenes.setdefault(f"oxford_{image.stem.split('_')[0]}", []).append(image)
    missing = [str(p) for paths in scenes.values() for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"missing source images: {', '.join(missing[:5])}; check the folders you passed")
    return {name: paths for name, paths in scenes.items() if len(paths) >= 2}


def _spec_images(spec: str) -> list[Path]:
    """A file, or a folder[:STEP]'s images (every STEP-th)."""
    where, _, step = spec.partition(":")
    path = Path(where)
    return _images(path)[:: int(step or 1)] if path.is_dir() else [path]


def size_factor(name: str) -> float:
    return SIZE_FACTORS[int(hashlib.sha1(name.encode()).hexdigest(), 16) % len(SIZE_FACTORS)]


def write_image(source: Path, target: Path, factor: float = 1.0, turn: bool = False) -> None:
    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"cannot read {source}")
    if factor != 1.0:
        size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)
    if turn:
        image = cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    cv2.imwrite(str(target), image, [cv2.IMWRITE_JPEG_QUALITY, 92])


def make_devset(out: Path, scenes: dict[str, list[Path]], distractors: list[Path], size_mix: bool) -> dict:
    (out / "images").mkdir(parents=True, exist_ok=False)
    (out / "queries").mkdir()
    names: dict[str, list[str]] = {}
    for scene, paths in scenes.items():
        names[scene] = []
        for i, path in enumerate(paths):
            name = f"{scene}__{i:02d}.jpg"
            write_image(path, out / "images" / name, size_factor(name) if size_mix else 1.0)
            names[scene].append(name)
    for i, path in enumerate(distractors):
        name = f"distractor__{i:03d}.jpg"
        write_image(path, out / "images" / name, size_factor(name) if size_mix else 1.0)
    gt = {}
    for scene, members in names.items():
        for name in members:
            os.symlink(f"../images/{name}", out / "queries" / name)
            gt[name] = {"positives": [m for m in members if m != name], "ignore": [name]}
        turned = f"rot90__{members[0]}"
        write_image(scenes[scene][0], out / "queries" / turned, turn=True)
        gt[turned] = {"positives": members[1:], "ignore": [members[0]]}
    (out / "gt.json").write_text(json.dumps({"queries": gt}, indent=1))
    return gt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--sacre-coeur", type=Path, required=True, help="hloc datasets/sacre_coeur/mapping")
    parser.add_argument("--lightglue-assets", type=Path, required=True, help="LightGlue's assets/ folder")
    parser.add_argument("--shared-data", type=Path, default=None, help="../shared/data (homogr, oxford, corridor)")
    parser.add_argument("--distractors", type=int, default=30, help="corridor frames added as unrelated images")
    parser.add_argument("--size-mix", action="store_true", help="rescale database images by 0.5/1/2")
    parser.add_argument("--scene", action="append", default=[], metavar="NAME=PATH[,PATH...]",
                        help="one more scene (or more images of a scene): its image files, or a folder[:STEP] "
                             "(every STEP-th image)")
    parser.add_argument("--pairs", action="append", default=[], metavar="DIR",
                        help="a folder of <scene>_<frame> images: each scene prefix is one more scene")
    parser.add_argument("--distractor-dir", action="append", default=[], metavar="DIR[:STEP]",
                        help="more unrelated images (every STEP-th file of DIR)")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; pass a new folder")
    scenes = collect_scenes(args.sacre_coeur, args.lightglue_assets, args.shared_data)
    for spec in args.scene:
        name, _, where = spec.partition("=")
        scenes.setdefault(name, []).extend(p for part in where.split(",") for p in _spec_images(part))
    for folder in args.pairs:
        for image in _images(Path(folder)):
            scenes.setdefault(image.stem.rsplit("_", 2)[0], []).append(image)
    scenes = {name: paths for name, paths in scenes.items() if len(paths) >= 2}
    distractors = []
    if args.shared_data is not None and args.distractors:
        distractors = _images(args.shared_data / "corridor" / "images")[: args.distractors]
    for spec in args.distractor_dir:
        distractors += _spec_images(spec)
    gt = make_devset(args.out, scenes, distractors, args.size_mix)
    n_images = len(list((args.out / "images").iterdir()))
    print(f"{args.out}: {n_images} images ({len(scenes)} scenes, {len(distractors)} distractors), "
          f"{len(gt)} queries", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
