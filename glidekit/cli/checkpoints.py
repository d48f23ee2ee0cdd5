"""``glidekit download`` and ``glidekit convert``: fetch released weights, convert to safetensors."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from glidekit.checkpoints import (
    CHECKPOINTS,
    CheckpointError,
    UnknownCheckpointError,
    convert,
    fetch,
)
from glidekit.checkpoints.registry import lookup
from glidekit.errors import UsageError

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``download`` and ``convert`` sub-commands to the ``glidekit`` parser."""
    names = ", ".join(CHECKPOINTS)
    download = subparsers.add_parser(
        "download",
        help="download released checkpoints into the cache",
        description=(
            "Download released GLIDE checkpoints into the cache (resumable; safe to run from "
            f"several processes at once). Names: {names}. Prints the path of each file."
        ),
    )
    download.add_argument(
        "names", nargs="*", metavar="NAME", help="checkpoints to download (default: all six)"
    )
    download.add_argument(
        "--cache-dir", help="cache directory (default: $GLIDEKIT_CACHE or ~/.cache/glidekit)"
    )
    download.add_argument("--no-progress", action="store_true", help="no progress bar")
    download.add_argument(
        "--retries", type=int, default=5, help="retries after a failed attempt (default 5)"
    )
    download.set_defaults(func=_download)

    conv = subparsers.add_parser(
        "convert",
        help="write a .safetensors copy of a checkpoint",
        description=(
            "Validate a checkpoint (a released name, downloaded if needed, or a .pt file or "
            "directory) and write a .safetensors copy next to it; later loads prefer it."
        ),
    )
    conv.add_argument("source", metavar="NAME_OR_PATH", help=f"one of {names}, or a path")
    conv.add_argument("--fp16", action="store_true", help="store floating tensors as float16")
    conv.add_argument(
        "--checkpoint",
        metavar="NAME",
        help="which released checkpoint a local file is (checks its layout)",
    )
    conv.add_argument("--output", help="output file (default: next to the source)")
    conv.add_argument("--cache-dir", help="cache directory")
    conv.add_argument("--no-progress", action="store_true", help="no progress bar")
    conv.set_defaults(func=_convert)


def _download(args: argparse.Namespace) -> int:
    requested = args.names or list(CHECKPOINTS)
    unknown = [n for n in requested if lookup(n) is None]
    if unknown:
        raise UsageError(
            f"unknown checkpoint name(s) {', '.join(unknown)}; expected {', '.join(CHECKPOINTS)}"
        )
    if args.retries < 0:
        raise UsageError("--retries must be >= 0")
    failed = 0
    for name in requested:
        try:
            path = fetch(
                name,
                cache_dir=args.cache_dir,
                progress=not args.no_progress,
                retries=args.retries,
            )
        except CheckpointError as exc:
            logger.error("%s", exc)
            failed += 1
            continue
        print(path)
    return 1 if failed else 0


def _convert(args: argparse.Namespace) -> int:
    if args.checkpoint is not None and lookup(args.checkpoint) is None:
        raise UsageError(
            f"unknown checkpoint {args.checkpoint!r}; expected one of {', '.join(CHECKPOINTS)}"
        )
    try:
        path = convert(
            args.source,
            fp16=args.fp16,
            checkpoint=args.checkpoint,
            output=args.output,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
        )
    except UnknownCheckpointError as exc:
        raise UsageError(str(exc)) from exc
    except CheckpointError as exc:
        logger.error("%s", exc)
        return 1
    print(path)
    return 0
