"""The index on disk: the SQLite catalog and its commit protocol (catalog.py states it), the one
commit API (transaction.py), immutable segments and the feature cache, what a reader sees
(snapshot.py), the one write orchestrator with the local process pool (orchestrator.py), the
writer's steps, merging (compaction.py), format 1 migration (migration.py), `check`, and moved
files (moves.py). Imports io, features and encoding only.
"""
