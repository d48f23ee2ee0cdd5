"""Shared test fixtures: where the reference data lives, no network for tiktoken, and a
temporary folder of the suite's own (checked at the end: the suite leaves nothing in the
system's temporary folder)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
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

# Everything the tests and the programs they start write to "the temporary folder" (pytest's
# tmp_path, gradio and gradio_client, torch.compile's cache, glidekit serve) goes here; the
# system's temporary folder must hold no new entry when the suite ends.
SYSTEM_TMP = Path(tempfile.gettempdir())
_SYSTEM_TMP_BEFORE = set(os.listdir(SYSTEM_TMP))
SUITE_TMP = Path(tempfile.mkdtemp(prefix="glidekit-tests-"))
os.environ["TMPDIR"] = tempfile.tempdir = str(SUITE_TMP)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(SUITE_TMP, ignore_errors=True)
    left = sorted(set(os.listdir(SYSTEM_TMP)) - _SYSTEM_TMP_BEFORE - {SUITE_TMP.name})
    if left and os.environ.get("GLIDEKIT_CHECK_TMP", "1") != "0":
        print(f"\nthe tests left {len(left)} new entries in {SYSTEM_TMP}: {left[:5]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
