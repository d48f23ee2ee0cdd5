"""Entry point of the ``glidekit`` command.

Each sub-command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (a callable taking the parsed namespace and returning an exit code). Bad input is
reported by argparse-style messages with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from glidekit.errors import VocabularyUnavailableError

# Sub-command modules, imported lazily so ``glidekit --help`` stays fast.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "glidekit.cli.checkpoints",
    "glidekit.cli.train",
    "glidekit.cli.generate",
    "glidekit.cli.info",
    "glidekit.cli.serve",
    "glidekit.cli.bench",
)


class UsageError(Exception):
    """Raised by a sub-command for bad user input; printed as a message, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glidekit", description="Run, edit with and train GLIDE text-guided diffusion."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a sub-command not built yet
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"glidekit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except VocabularyUnavailableError as exc:  # the machine, not the input: exit code 1
        print(f"glidekit {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
