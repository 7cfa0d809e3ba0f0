"""Where `vladsearch watch` learns of changes: file events through watchdog, or polling.

Both sources answer `wait(timeout, stop) -> (changed paths, full scan due)`:
- `EventSource` (watchdog: inotify, FSEvents, ReadDirectoryChangesW) names the paths that
  changed, both ends of a move, and records close-after-write events (a file is complete);
- `PollSource` asks for a full scan every `interval` seconds: used with `--poll`, without
  watchdog, where events cannot start (e.g. the inotify watch limit), and on network
  file systems, whose changes made by other machines raise no local event.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

INSTALL = 'pip install "vladsearch[watch]"   (watchdog)'
POLL_INTERVAL = 5.0  # seconds between scans when polling without --poll
# File systems whose changes from other machines raise no event here (/proc/mounts types).
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre",
                       "fuse.sshfs", "fuse.rclone", "fuse.s3fs", "davfs", "fuse.gcsfuse", "virtiofs"}


def filesystem_type(path: Path) -> str | None:
    """The type of the file system holding `path` (Linux /proc/mounts; None elsewhere)."""
    try:
        with open("/proc/mounts", encoding="utf-8") as handle:
            mounts = [line.split()[1:3] for line in handle if len(line.split()) >= 3]
    except OSError:
        return None
    real = os.path.realpath(path)
    best = max((m for m in mounts if real == m[0] or real.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=None)
    return best[1] if best else None


class PollSource:
    """A full scan every `interval` seconds."""

    mode = "poll"

    def __init__(self, interval: float = POLL_INTERVAL) -> None:
        self.interval = interval
        self._next = 0.0

    def wait(self, timeout: float, stop: threading.Event) -> tuple[set[Path], bool]:
        now = time.monotonic()
        if self._next == 0.0:
            self._next = now + self.interval
        if now < self._next:
            stop.wait(min(timeout, self._next - now))
            return set(), False
        self._next = now + self.interval
        return set(), True

    def close(self) -> None:
        pass


class EventSource:
    """Paths named by watchdog's events on every folder (recursive), collected until asked for."""

    mode = "events"

    def __init__(self, folders: list[Path], closed: dict[str, float]) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        self._changes: set[Path] = set()
        self._ready = threading.Condition()
        self.closed = closed
        source = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                source.arrive(event)

        self.observer = Observer()
        for folder in folders:
            self.observer.schedule(Handler(), str(folder), recursive=True)
        self.observer.start()

    def arrive(self, event) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reading a file changes nothing
        if event.event_type == "closed":
            self.closed[os.fsdecode(event.src_path)] = time.time()
        paths = [event.src_path] + ([event.dest_path] if getattr(event, "dest_path", "") else [])
        with self._ready:
            self._changes.update(Path(os.fsdecode(p)) for p in paths)
            self._ready.notify()

    def wait(self, timeout: float, stop: threading.Event) -> tuple[set[Path], bool]:
        with self._ready:
            if not self._changes and not stop.is_set():
                self._ready.wait(timeout)
            changes, self._changes = self._changes, set()
        return changes, False

    def close(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=10)


def open_source(folders: list[Path], closed: dict[str, float], poll: float | None = None,
                say=print) -> PollSource | EventSource:
    """File events where they work, else polling (`say` tells why, with the command that adds events)."""
    if poll is not None:
        return PollSource(poll)
    network = {str(f): t for f in folders if (t := filesystem_type(f)) in NETWORK_FILESYSTEMS}
    if network:
        say(f"watch: polling every {POLL_INTERVAL:g} s: {', '.join(f'{f} ({t})' for f, t in network.items())} "
            "is a network file system, whose changes from other machines raise no event (--poll SECONDS to choose)")
        return PollSource()
    try:
        return EventSource(folders, closed)
    except ImportError:
        say(f"watch: polling every {POLL_INTERVAL:g} s: file events need watchdog: {INSTALL}")
    except OSError as exc:  # e.g. the inotify watch limit (fs.inotify.max_user_watches)
        say(f"watch: polling every {POLL_INTERVAL:g} s: file events could not start ({exc})")
    return PollSource()
