"""vladsearch: find the images of a collection that show the same thing as a query.

local features -> k-means visual words -> VLAD vector per image -> faiss index -> top-k.
"""

__version__ = "0.1.0"

from vladsearch.encoder import BuildParams
from vladsearch.index import Index
from vladsearch.results import Match, SearchResult

__all__ = ["BuildParams", "Index", "Match", "SearchResult", "__version__"]
