"""`vladsearch serve`: the subcommand (registered by vladsearch.cli; FastAPI is imported only when it runs)."""

from __future__ import annotations

import argparse
import os
import sys

from vladsearch.io.arguments import positive_int

SERVE_EXAMPLES = """examples:
  vladsearch serve photos.vlad                      # http://127.0.0.1:8000/ (page), /docs (API)
  vladsearch serve photos.vlad --workers 4 --port 9000
  VLADSEARCH_TOKEN=secret vladsearch serve photos.vlad --host 0.0.0.0
"""
INSTALL = 'pip install "vladsearch[serve]"   (FastAPI, uvicorn, python-multipart)'


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `serve` subcommand on an argparse subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "serve", help="serve an index over HTTP: JSON API and a web page",
        description="Keep INDEX open and answer searches over HTTP (a JSON API described at /docs, and a web "
                    "page at /). Follows commits of other processes (`vladsearch add`, `remove`) within about "
                    "--refresh-interval seconds, without a restart.",
        epilog=SERVE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", metavar="INDEX")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; any other needs --token)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="threads answering searches at once, in this one process (default: all cores); "
                             "each search runs on one of them (OpenCV may use idle cores inside it)")
    parser.add_argument("--queue", type=int, default=32, metavar="N",
                        help="searches waiting for a worker before the server answers 503 (default 32)")
    parser.add_argument("--token", default=os.environ.get("VLADSEARCH_TOKEN"),
                        help="bearer token required on /api/* (default: $VLADSEARCH_TOKEN, which other users "
                             "cannot read in the process list; none on loopback)")
    parser.add_argument("--max-upload-mb", type=float, default=32.0,
                        help="largest request body in MiB, uploads included (default 32; larger: 413)")
    parser.add_argument("--max-pixels", type=positive_int, default=50_000_000, metavar="N",
                        help="largest uploaded image in pixels, read from its header (default 50,000,000; larger: 400)")
    parser.add_argument("--refresh-interval", type=float, default=1.0, metavar="S",
                        help="seconds between checks for other processes' commits (default 1)")
    parser.add_argument("--root", metavar="PHOTOS_DIR", help="the indexed photos' folder, if it moved apart from the index")
    parser.add_argument("--weights", metavar="PATH", help="weights file (default: the one recorded at build)")
    parser.add_argument("--watch", action="append", default=[], metavar="FOLDER",
                        help="keep the index in step with FOLDER as `vladsearch watch` does, in this process "
                             "(repeat for more folders)")
    parser.set_defaults(func=run_cli)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from vladsearch.server.app import create_app
        from vladsearch.server.engine import Limits
        from vladsearch.server.security import check_bind
    except ImportError as exc:
        print(f"vladsearch: error: serve needs the extra 'serve' ({exc.name} is missing): {INSTALL}", file=sys.stderr)
        return 2
    check_bind(args.host, args.token)
    for folder in args.watch:
        if not os.path.isdir(folder):
            raise NotADirectoryError(f"--watch {folder}: not a folder; watch takes folders of photos")
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels)
    app = create_app(args.index, args.token, workers=args.workers, waiting=args.queue, limits=limits,
                     refresh_interval=args.refresh_interval, weights=args.weights, root=args.root,
                     watch=args.watch)
    engine = app.state.engine
    print(f"vladsearch: serving {args.index} ({len(engine.index.snapshot.loaded_ids)} vectors) at "
          f"http://{args.host}:{args.port}/ with {engine.searches.workers} search threads"
          f"{'; bearer token required' if args.token else ''}"
          f"{'; watching ' + ', '.join(args.watch) if args.watch else ''}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
