"""Expected tensor layouts (``{key: shape}``) and the checks run before a model is touched.

A layout can come from any of:

* a module, including one built on the ``meta`` device (``state_dict()`` then holds meta
  tensors: keys and shapes without allocating memory);
* a ``UNetConfig`` / ``CLIPConfig`` (a meta model is built from it);
* ``checkpoint_specs.json``-like data: an entry with a ``state_dict`` list of
  ``[key, shape, dtype]``, or the whole file (for a released name);
* a plain mapping of keys to tensors or shapes.

For a released name, :func:`released_layout` uses specs data when given (or when
``$GLIDEKIT_CHECKPOINT_SPECS`` names a specs file), else a meta model of the released config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glidekit.checkpoints.errors import LayoutMismatchError
from glidekit.checkpoints.registry import CHECKPOINTS, CheckpointInfo, get_checkpoint
from glidekit.clip import create_clip_model
from glidekit.nn import UNetConfig, create_model

#: Environment variable naming a ``checkpoint_specs.json``-like file used for released layouts.
SPECS_ENV = "GLIDEKIT_CHECKPOINT_SPECS"

Layout = dict[str, tuple[int, ...]]

# First-conv input channels of each diffusion kind (x, [masked image, mask], [low-res]).
_UNET_KIND_BY_CHANNELS: Mapping[int, str] = {
    info.in_channels: info.name for info in CHECKPOINTS.values() if info.in_channels is not None
}
_UNET_FIRST_CONV = "input_blocks.0.0.weight"


def module_layout(module: torch.nn.Module) -> Layout:
    """``{key: shape}`` of a module's state dict (works on the meta device)."""
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def build_meta_model(source: CheckpointInfo | Any) -> torch.nn.Module:
    """Build the module of a released checkpoint or of a config on the ``meta`` device.

    ``source`` is a :class:`CheckpointInfo`, a ``UNetConfig`` or a ``CLIPConfig`` (for a CLIP
    config the whole CLIP model is returned).
    """
    if isinstance(source, CheckpointInfo):
        model = build_meta_model(source.config())
        return getattr(model, source.clip_part) if source.clip_part else model
    if isinstance(source, UNetConfig):
        return create_model(source, device="meta")
    return create_clip_model(source, device="meta")


def _load_specs(specs: Mapping[str, Any] | str | os.PathLike[str]) -> Mapping[str, Any]:
    if isinstance(specs, Mapping):
        return specs
    return json.loads(Path(specs).read_text())


def released_layout(
    name: str, specs: Mapping[str, Any] | str | os.PathLike[str] | None = None
) -> Layout:
    """Expected layout of the released checkpoint ``name``.

    ``specs``: ``checkpoint_specs.json`` data (or its path; ``{"checkpoints": {name: entry}}``
    or ``{name: entry}``); default ``$GLIDEKIT_CHECKPOINT_SPECS`` if set, else a meta-device
    model of the released config (``ImportError`` if the model code is unavailable).
    """
    info = get_checkpoint(name)
    if specs is None:
        specs = os.environ.get(SPECS_ENV) or None
    if specs is None:
        return module_layout(build_meta_model(info))
    data = _load_specs(specs)
    table = data.get("checkpoints", data)
    if info.name not in table:
        raise KeyError(f"checkpoint specs have no entry for {info.name!r}")
    return expected_layout(table[info.name])


def expected_layout(source: Any) -> Layout:
    """Normalise any layout source (module, config, specs entry, mapping, name) to a layout."""
    if isinstance(source, torch.nn.Module):
        return module_layout(source)
    if isinstance(source, str):
        return released_layout(source)
    if isinstance(source, Mapping):
        if "state_dict" in source and isinstance(source["state_dict"], Sequence):
            return _from_triples(source["state_dict"])
        return {str(k): _shape(v) for k, v in source.items()}
    if isinstance(source, Sequence):
        return _from_triples(source)
    if hasattr(source, "to_dict") or type(source).__name__.endswith("Config"):
        return module_layout(build_meta_model(source))
    raise TypeError(f"cannot derive a checkpoint layout from {type(source).__name__}")


def _from_triples(rows: Sequence[Any]) -> Layout:
    return {str(row[0]): tuple(int(d) for d in row[1]) for row in rows}


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return tuple(int(d) for d in value)


def detect_kind(layout: Mapping[str, Sequence[int]]) -> str | None:
    """Which released checkpoint kind a layout looks like (a name in ``CHECKPOINTS``), or None.

    UNets are told apart by their first convolution's input channels (3 text2im, 7 inpaint,
    6 super-res, 10 super-res inpaint), the CLIP towers by their input embeddings. Works for any
    size of model, not just the released one.
    """
    if "blocks.input.w_t" in layout or "blocks.input.patch_proj" in layout:
        return "clip/image-enc"
    if "blocks.input.w_voc" in layout:
        return "clip/text-enc"
    shape = layout.get(_UNET_FIRST_CONV)
    if shape is not None and len(shape) == 4:
        return _UNET_KIND_BY_CHANNELS.get(int(shape[1]))
    return None


def describe_kind(kind: str | None) -> str:
    """Human description of a kind from :func:`detect_kind`."""
    if kind is None:
        return "an unrecognised model"
    return f"a {CHECKPOINTS[kind].description} (like {kind!r})"


@dataclass(frozen=True)
class LayoutDiff:
    """Differences between a file's layout and the expected one (in key order)."""

    missing: tuple[tuple[str, tuple[int, ...]], ...]
    unexpected: tuple[tuple[str, tuple[int, ...]], ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def summary(self, max_items: int = 3) -> str:
        """The differences on one line: ``missing a [2, 3]; unexpected b [4]; ...``."""

        def listed(what: str, items: Sequence[str]) -> str:
            more = f" and {len(items) - max_items} more" if len(items) > max_items else ""
            return f"{what} " + ", ".join(items[:max_items]) + more

        parts = [
            listed(what, items)
            for what, items in (
                ("missing", [f"{k} {list(s)}" for k, s in self.missing]),
                ("unexpected", [f"{k} {list(s)}" for k, s in self.unexpected]),
                (
                    "mis-shaped",
                    [f"{k} {list(a)} (expected {list(e)})" for k, a, e in self.mismatched],
                ),
            )
            if items
        ]
        return "; ".join(parts) or "no differences"


def diff_layouts(
    actual: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]]
) -> LayoutDiff:
    """Compare ``{key: shape}`` of a file (``actual``) with the expected layout."""
    missing = tuple((k, tuple(s)) for k, s in expected.items() if k not in actual)
    unexpected = tuple((k, tuple(s)) for k, s in actual.items() if k not in expected)
    mismatched = tuple(
        (k, tuple(actual[k]), tuple(s))
        for k, s in expected.items()
        if k in actual and tuple(actual[k]) != tuple(s)
    )
    return LayoutDiff(missing, unexpected, mismatched)


def check_layout(
    actual: Mapping[str, Sequence[int]],
    expected: Mapping[str, Sequence[int]] | None,
    *,
    file: str | os.PathLike[str],
    name: str | None = None,
    max_items: int = 5,
) -> None:
    """Raise :class:`LayoutMismatchError` unless ``actual`` fits ``expected`` exactly.

    ``name`` is the released checkpoint the file is supposed to be. With ``expected=None`` only
    the kind is checked (the file must look like ``name``); with neither, nothing is checked.
    The message names the file, the expected kind, the kind the file looks like when it
    differs, and the first ``max_items`` differences of each sort.
    """
    if expected is not None:
        want_kind = detect_kind(expected)
    else:
        want_kind = get_checkpoint(name).name if name is not None else None
    got_kind = detect_kind(actual)
    if expected is None:
        if name is None or got_kind == want_kind:
            return
        raise LayoutMismatchError(
            f"checkpoint {file} does not look like {describe_kind(want_kind)}: "
            f"it looks like {describe_kind(got_kind)}. Pass the matching checkpoint name."
        )
    diff = diff_layouts(actual, expected)
    if not diff:
        return
    target = "the target model"
    if want_kind is not None:
        target += f", {describe_kind(want_kind)}"
    lines = [f"checkpoint {file} does not fit {target}"]
    if got_kind != want_kind and got_kind is not None:
        lines[0] += f": it looks like {describe_kind(got_kind)} checkpoint instead"
    lines[0] += (
        f" ({len(diff.missing)} missing, {len(diff.unexpected)} unexpected, "
        f"{len(diff.mismatched)} mis-shaped tensors)"
    )

    def more(items: Sequence[Any]) -> str:
        return f", ... and {len(items) - max_items} more" if len(items) > max_items else ""

    if diff.missing:
        shown = ", ".join(f"{k} {list(s)}" for k, s in diff.missing[:max_items])
        lines.append(f"  missing: {shown}{more(diff.missing)}")
    if diff.unexpected:
        shown = ", ".join(f"{k} {list(s)}" for k, s in diff.unexpected[:max_items])
        lines.append(f"  unexpected: {shown}{more(diff.unexpected)}")
    if diff.mismatched:
        shown = ", ".join(
            f"{k}: file {list(a)} vs model {list(e)}" for k, a, e in diff.mismatched[:max_items]
        )
        lines.append(f"  mis-shaped: {shown}{more(diff.mismatched)}")
    raise LayoutMismatchError("\n".join(lines))


__all__ = [
    "Layout",
    "LayoutDiff",
    "SPECS_ENV",
    "build_meta_model",
    "check_layout",
    "describe_kind",
    "detect_kind",
    "diff_layouts",
    "expected_layout",
    "module_layout",
    "released_layout",
]
