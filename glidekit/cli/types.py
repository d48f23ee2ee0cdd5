"""Argument types the sub-commands share: argparse turns a bad value into one line, exit 2."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


def positive(kind: type) -> Callable[[str], Any]:
    """A finite number > 0 of ``kind`` (int or float)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse
