"""`vladsearch serve`: an HTTP API and a web page over one warm, live index.

The engine (`engine.py`) owns the index and the work queues; the routers (`routers/`) are
thin HTTP handlers around it; `app.py` assembles them. Nothing here imports FastAPI at
package import, so `vladsearch.server.cli` registers the subcommand without the extra.
"""
