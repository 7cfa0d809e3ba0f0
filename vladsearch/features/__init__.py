"""Local feature extractors and their registry.

`EXTRACTORS` maps a feature name to the class that implements it, as "module:Class" so
that listing the names (the CLI's choices) never imports torch. `get_extractor`
imports lazily and builds one.
"""

from __future__ import annotations

import importlib
from typing import Any

from vladsearch.features.base import Extractor, Features

# name -> ("module:Class", extra keyword arguments, one-line description)
EXTRACTORS: dict[str, tuple[str, dict[str, Any], str]] = {
    "sift": ("vladsearch.features.sift:SIFT", {}, "OpenCV SIFT, 128-d (default; no weights needed)"),
    "rootsift": ("vladsearch.features.sift:SIFT", {"root": True}, "SIFT with RootSIFT (Hellinger) descriptors"),
    "superpoint": ("vladsearch.features.superpoint:SuperPoint", {}, "SuperPoint v1, 256-d (needs torch)"),
    "aliked": ("vladsearch.features.aliked:ALIKED", {}, "ALIKED n16, 128-d (needs torch)"),
    "disk": ("vladsearch.features.disk:DISK", {}, "DISK depth model, 128-d (needs torch and kornia)"),
}


def extractor_class(name: str) -> type[Extractor]:
    """The class registered under `name`; ValueError listing valid names otherwise."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature type {name!r}; choose one of: {', '.join(EXTRACTORS)}")
    target = EXTRACTORS[name][0]
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_extractor(name: str, **params: Any) -> Extractor:
    """Build the extractor registered under `name` with its preset and `params` on top.

    Parameters that are None are dropped so that callers can pass CLI options through.
    """
    preset = dict(EXTRACTORS[name][1]) if name in EXTRACTORS else {}
    cls = extractor_class(name)
    preset.update({key: value for key, value in params.items() if value is not None})
    return cls(**preset)


__all__ = ["EXTRACTORS", "Extractor", "Features", "extractor_class", "get_extractor"]
