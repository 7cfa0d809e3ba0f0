"""Executors for the one write orchestrator (store/orchestrator.py): each only turns images into
staged segments and image rows. This machine's process pool is `store.orchestrator.LocalExecutor`
(the default, below the Index); Ray is ray.py (`build/add --ray`).
"""
