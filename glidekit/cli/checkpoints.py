"""``glidekit download`` and ``glidekit convert``: fetch released weights, convert to safetensors."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from glidekit.checkpoints import (
    CHECKPOINTS,
    CheckpointError,
    UnknownCheckpointError,
    convert,
    fetch,
)
from glidekit.checkpoints.download import NetworkUnavailableError, check_sha256
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
            f"several processes at once). Names: {names}. Prints the path of each file. A file "
            "counts as complete only when its size, the MD5 the server sends (if any), the "
            "--sha256 given and the released tensor layout all match; otherwise nothing is kept "
            "under its name. Any failure is one line and exit code 2; with no network it fails at "
            "once."
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
    download.add_argument(
        "--sha256",
        metavar="HEX",
        help="the file's expected sha256 (64 hex digits); with exactly one NAME",
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
    if args.sha256 is not None and len(requested) != 1:
        raise UsageError("--sha256 pins one file: give exactly one NAME with it")
    try:
        pinned = check_sha256(args.sha256, "--sha256")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    failed = 0
    for name in requested:
        try:
            path = fetch(
                name,
                cache_dir=args.cache_dir,
                progress=not args.no_progress,
                retries=args.retries,
                sha256=pinned,
            )
        except CheckpointError as exc:
            # The same one line and exit code 2 as every other command's checkpoint errors.
            print(f"glidekit download: error: {exc}", file=sys.stderr)
            failed += 1
            if isinstance(exc, NetworkUnavailableError):
                break  # no network: the other names would fail the same way
            continue
        print(path)
    return 2 if failed else 0


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
    # Any other CheckpointError is a ValueError: one line and exit code 2 from glidekit.cli.main.
    print(path)
    return 0
