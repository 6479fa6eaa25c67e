"""``lightning-accel serve EXPORT_DIR``: serve an exported model over HTTP (LitServe).

Wired into ``lightning-accel`` by :func:`add_parser` and :func:`run`; also runs alone as
``python -m lightning_accel.cli.serve EXPORT_DIR`` (the container's entry command). Imports
neither torch nor Lightning.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lightning_accel.backends import DEFAULT_BACKEND, backend_names


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``lightning-accel``'s subparsers."""
    p = sub.add_parser(
        "serve",
        help="serve an export folder over HTTP: POST /predict, /health, /metrics",
        description=(
            "Serve an export folder (model.onnx + manifest.json) with LitServe: POST /predict "
            "takes JSON arrays (one sample or a list) or a PNG/JPEG image and answers the top-k "
            "classes; GET /health is 200 once the model is loaded; GET /metrics is Prometheus. "
            "Requests are batched dynamically into one runtime call. SIGTERM or Ctrl-C shuts "
            "down gracefully. Exit code 2: bad input (a missing or unverified export, an "
            "unknown backend, a port in use)."
        ),
    )
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``serve`` options, shared by the subcommand and ``python -m``."""
    from lightning_accel.serving.server import (
        DEFAULT_BATCH_TIMEOUT_MS,
        DEFAULT_MAX_BATCH_SIZE,
        DEFAULT_MAX_BODY_BYTES,
        DEFAULT_MAX_SAMPLES,
        DEFAULT_TOP_K,
    )

    p.add_argument("export_dir", help="the export folder (holds model.onnx and manifest.json)")
    p.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        help=f"a registered backend: {', '.join(backend_names())} (default: %(default)s)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="127.0.0.1, 0.0.0.0 or :: (default: %(default)s)"
    )
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help="requests per runtime call; 1 turns batching off (default: %(default)s)",
    )
    p.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=DEFAULT_BATCH_TIMEOUT_MS,
        help=(
            "ms a batch waits to fill after its first request; 0: a batch is what queued "
            "meanwhile, a lone request never waits (default: %(default)s)"
        ),
    )
    p.add_argument("--workers", type=int, default=1, help="runtime worker processes (default: 1)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per worker (default: cores/workers)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="larger bodies get 413 before they are read whole (default: %(default)s)",
    )
    p.add_argument(
        "--max-samples",
        type=int,
        default=DEFAULT_MAX_SAMPLES,
        help="most samples in one request (default: %(default)s)",
    )
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="default: %(default)s")
    p.add_argument(
        "--allow-unverified",
        action="store_true",
        help="serve a backend the export did not verify (never one whose verification failed)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``serve`` with parsed arguments; returns the exit code (2: bad input)."""
    from lightning_accel.serving import ServeError, serve

    try:
        server = serve(
            args.export_dir,
            backend=args.backend,
            host=args.host,
            port=args.port,
            max_batch_size=args.max_batch_size,
            batch_timeout_ms=args.batch_timeout_ms,
            workers=args.workers,
            threads=args.threads,
            max_body_bytes=args.max_body_bytes,
            max_samples=args.max_samples,
            top_k=args.top_k,
            allow_unverified=args.allow_unverified,
        )
        print(
            f"lightning-accel: serving {args.export_dir} on {args.backend} at {server.url} "
            "(POST /predict, GET /health, GET /metrics; Ctrl-C or SIGTERM stops)",
            file=sys.stderr,
            flush=True,
        )
        server.run()
    except ServeError as err:
        print(f"lightning-accel serve: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lightning_accel.cli.serve``: the same as ``lightning-accel serve``."""
    parser = argparse.ArgumentParser(prog="lightning-accel serve")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
