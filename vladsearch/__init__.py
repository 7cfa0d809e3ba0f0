"""vladsearch: find the images of a collection that show the same thing as a query.

local features -> k-means visual words -> VLAD vector per image -> faiss index -> top-k.

The layers are folders, and imports point down only: io (image files, progress, argument
types) → features (extractors, the process pool) → encoding (codebook, VLAD, compact codes,
the Encoder) → store (catalog, segments, snapshot, the write orchestrator, compaction,
migration, check) → query (search, verification, results) → index.py (`Index`, the public
façade) → executors (Ray), collection (kNN, duplicates, pairs, report), evaluation, live
(watch) → server → cli.py. Old flat import paths (`vladsearch.search`, …) still work with a
DeprecationWarning (_moved.py).
"""

from vladsearch import _moved
from vladsearch.version import __version__

_moved.install()

from vladsearch.encoding.encoder import BuildParams  # after the finder: old paths work from here
from vladsearch.index import Index
from vladsearch.query.results import Match, SearchResult

__all__ = ["BuildParams", "Index", "Match", "SearchResult", "__version__"]
