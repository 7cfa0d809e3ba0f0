"""Keeping an index live: `vladsearch watch` and `serve --watch`. File events or polling
(events.py), batching and committing changes (watcher.py), the verb's command line and the
server's background thread (cli.py).
"""
