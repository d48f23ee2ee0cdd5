"""Test helpers: build the tiny golden models through glidekit's own configs."""

from __future__ import annotations

from conftest import load_golden, strip_prefix

from glidekit.compat import config_from_options
from glidekit.nn import GlideUNet, create_model


def golden_model(fixture: str) -> tuple[GlideUNet, dict]:
    """The fixture's tiny model with its fixed weights loaded strictly, and all its tensors."""
    meta, tensors = load_golden(fixture)
    model = create_model(config_from_options(meta["options"])).eval()
    model.load_state_dict(strip_prefix(tensors, "model."), strict=True)
    return model, tensors


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the fixtures' tolerance measure."""
    return float((a - b).abs().max() / b.abs().max())
