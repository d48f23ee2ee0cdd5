"""Entry point of the ``glidekit`` command.

Each sub-command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (a callable taking the parsed namespace and returning an exit code). Bad input is
reported by argparse-style messages with exit code 2, never a traceback: an
:class:`~glidekit.errors.OptionError` names the option by its Python name, and this module
spells it as the sub-command's own flag (``steps`` -> ``--steps``, ``prompt`` -> ``PROMPT``),
read from the parser itself.

Layer: the top face; may import everything in glidekit except compat.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from glidekit.errors import OptionError, UsageError, VocabularyUnavailableError

# Sub-command modules, imported lazily so ``glidekit --help`` stays fast.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "glidekit.cli.checkpoints",
    "glidekit.cli.train",
    "glidekit.cli.generate",
    "glidekit.cli.info",
    "glidekit.cli.serve",
    "glidekit.cli.bench",
)


#: Option names whose flag has another name (``sampler_options`` is set by ``--eta``).
_FLAG_OF = {"prompt": "prompts", "sampler_options": "eta", "upsample_sampler_options": "eta",
            "base_inpaint": "base", "upsampler_inpaint": "upsampler", "options": "prompts",
            "upsample": "no_upsample"}  # fmt: skip


def flag_name(parser: argparse.ArgumentParser, arg: str) -> str:
    """How the sub-command ``parser`` spells the option ``arg`` (its Python name)."""
    dest = _FLAG_OF.get(arg, arg)
    for action in parser._actions:
        if action.dest == dest:
            if action.option_strings:
                return max(action.option_strings, key=len)
            return str(action.metavar or action.dest.upper())
    return arg


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


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
    except OptionError as exc:
        flag = flag_name(_subparser(parser, args.command), exc.arg)
        message = OptionError.spelled(flag, exc.message)
        print(f"glidekit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except (UsageError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"glidekit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except VocabularyUnavailableError as exc:  # the machine, not the input: exit code 1
        print(f"glidekit {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
