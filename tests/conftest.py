"""Shared test fixtures: where the reference data lives, and no network for tiktoken."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GLIDEKIT_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
GOLDEN = REFERENCE / "golden"

# tiktoken reads its vocabulary from this cache instead of downloading it.
os.environ["TIKTOKEN_CACHE_DIR"] = str(REFERENCE / "vocab" / "tiktoken")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def load_golden(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Return (json metadata, tensors) of ``golden/<name>``; f16-stored weights upcast to f32."""
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    tensors = load_file(str(GOLDEN / f"{name}.safetensors"))
    out = {}
    for key, value in tensors.items():
        if value.dtype == torch.float16:
            value = value.float()
        out[key] = value
    return meta, out


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


@pytest.fixture(scope="session")
def checkpoint_specs() -> dict:
    return json.loads((REFERENCE / "checkpoint_specs.json").read_text())


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    from helpers import save_tiny_models

    return save_tiny_models(tmp_path_factory.mktemp("models"))
