"""`vladsearch watch INDEX FOLDER...`: the subcommand (registered by vladsearch.cli); `serve --watch` runs it in a thread."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from vladsearch.io.arguments import positive_int
from vladsearch.live.watcher import MAX_DELAY, QUIET, SETTLE

WATCH_EXAMPLES = """examples:
  vladsearch watch photos.vlad photos/                 # until Ctrl-C (the commit under way finishes)
  vladsearch watch photos.vlad photos/ phone/ --json   # one JSON event per line
  vladsearch watch photos.vlad /mnt/nas/photos --poll 30
  vladsearch watch photos.vlad photos/ --once          # catch up with the folders, then exit
"""


def seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "watch", help="keep an index in step with folders (new, changed, moved, deleted photos)",
        description="Catch up with what changed in FOLDERs since the index last saw them, then follow them: new "
                    "photos are added, changed ones encoded again, deleted ones removed, and a moved or renamed "
                    "photo keeps its entry (recognised by its content hash, not extracted again). A file is "
                    "taken once complete; changes are committed in batches. Readers, `serve` and other writers "
                    "go on meanwhile. File events need watchdog (pip install \"vladsearch[watch]\"); without "
                    "it, and on network file systems, the folders are polled (docs/WATCH.md).",
        epilog=WATCH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", metavar="INDEX")
    parser.add_argument("folders", nargs="+", metavar="FOLDER")
    parser.add_argument("--poll", type=seconds, default=None, metavar="SECONDS",
                        help="scan the folders every SECONDS instead of listening to file events")
    parser.add_argument("--debounce", type=seconds, default=QUIET, metavar="S",
                        help=f"commit once no change came for S seconds (default {QUIET:g})")
    parser.add_argument("--max-delay", type=seconds, default=MAX_DELAY, metavar="S",
                        help=f"under a steady stream of changes, commit at least every S seconds "
                             f"(default {MAX_DELAY:g})")
    parser.add_argument("--settle", type=seconds, default=SETTLE, metavar="S",
                        help=f"a file is complete once nothing wrote it for S seconds, or it was closed "
                             f"(default {SETTLE:g})")
    parser.add_argument("--once", action="store_true", help="catch up with the folders, commit, and exit")
    parser.add_argument("--json", action="store_true", help="one JSON event per line on stdout")
    parser.add_argument("--weights", metavar="PATH", help="weights file (default: the one recorded at build)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="processes for decoding and extraction (default: all cores)")
    parser.set_defaults(func=run_cli)
    return parser


class Output:
    """Events as JSON lines on stdout (--json), or as sentences on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def event(self, kind: str, text: str, **data) -> None:
        if self.as_json:
            print(json.dumps({"event": kind, **data}, ensure_ascii=False), flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def batch(self, batch) -> None:
        if self.as_json:
            print(json.dumps(batch.event(), ensure_ascii=False), flush=True)
        else:
            print(batch.line(), file=sys.stderr, flush=True)
            for path, reason in batch.skipped:
                print(f"  skipped {path}: {reason}", file=sys.stderr, flush=True)

    def error(self, exc: Exception) -> None:
        self.event("error", f"watch: error: {exc} (retried with a full scan)", error=str(exc))


def watch_loop(index_dir, folders: list[str], stop: threading.Event, output: Output, *, poll: float | None = None,
               quiet: float = QUIET, max_delay: float = MAX_DELAY, settle: float = SETTLE, once: bool = False,
               workers: int | None = None, weights: str | None = None) -> None:
    """Follow `folders` into the index until `stop` is set (the CLI's body; serve runs it in a thread)."""
    from vladsearch.index import Index
    from vladsearch.live.events import open_source
    from vladsearch.live.watcher import Watcher, run

    watcher = Watcher(Index.open(index_dir, weights=weights), folders, workers=workers, settle=settle)
    if once:
        output.batch(watcher.sync())
        while watcher.waiting and not stop.is_set():  # files still being written: until they are complete
            stop.wait(settle)
            output.batch(watcher.sync([]))
        return
    source = open_source(watcher.folders, watcher.closed, poll,
                         say=lambda text: output.event("notice", text, message=text))
    try:
        output.event("watching", f"watch: following {', '.join(map(str, watcher.folders))} into {index_dir} "
                                 f"({source.mode}); Ctrl-C stops after the commit under way",
                     mode=source.mode, folders=[str(f) for f in watcher.folders], index=str(index_dir))
        run(watcher, source, stop, output.batch, quiet=quiet, max_delay=max_delay, on_error=output.error)
    finally:
        source.close()


def run_cli(args: argparse.Namespace) -> int:
    for folder in args.folders:
        if not Path(folder).is_dir():
            raise NotADirectoryError(f"{folder} is not a folder: watch takes folders of photos")
    stop = threading.Event()
    output = Output(args.json)

    def request_stop(signum, frame) -> None:
        # Also runs in forked extraction workers (they inherit it), which so go on with their image.
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        watch_loop(args.index, args.folders, stop, output, poll=args.poll, quiet=args.debounce,
                   max_delay=args.max_delay, settle=args.settle, once=args.once, workers=args.workers,
                   weights=args.weights)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    output.event("stopped", "watch: stopped; the index holds every finished commit")
    return 0


def start_in_thread(index_dir, folders: list[str], **options) -> tuple[threading.Thread, threading.Event]:
    """`serve --watch`: the watch loop in a daemon thread of the server; set the event (then join) to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=watch_loop, args=(index_dir, folders, stop, Output(False)),
                              kwargs={"workers": 1, **options}, name="vladsearch-watch", daemon=True)
    thread.start()
    return thread, stop
