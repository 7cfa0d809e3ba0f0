"""Progress bars (tqdm) that stay off stdout and can be silenced."""

from __future__ import annotations

import sys
from collections.abc import Iterable


def progress_bar(iterable: Iterable, total: int | None = None, desc: str = "", enabled: bool = True,
                 unit: str = "img"):
    """Wrap `iterable` in a tqdm bar on stderr, or return it unchanged when disabled."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
