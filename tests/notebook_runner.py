"""Run an official notebook's code (tests/scripts/*.py) against glidekit.compat, as a subprocess,
with its ``load_checkpoint`` calls served fixture-sized checkpoints by a loopback HTTP server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from ckpt_server import CheckpointServer

SCRIPTS = Path(__file__).parent / "scripts"


def pt_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def run_notebook(
    script: str,
    tmp_path: Path,
    checkpoints: dict[str, tuple[str, dict[str, torch.Tensor]]],
    options: dict,
) -> tuple[subprocess.CompletedProcess, Path, dict[str, bytes]]:
    """Run ``tests/scripts/<script>``; ``checkpoints``: released name -> (file name, state dict).

    Returns (the finished process, the folder its pictures went to, {file name: served bytes}).
    """
    files = {fname: pt_bytes(state) for fname, state in checkpoints.values()}
    layouts = {
        name: {"state_dict": [[k, list(v.shape), "float32"] for k, v in state.items()]}
        for name, (_, state) in checkpoints.items()
    }
    specs = tmp_path / "tiny_specs.json"
    specs.write_text(json.dumps({"checkpoints": layouts}))
    out = tmp_path / "out"
    out.mkdir()
    server = CheckpointServer({f"/{f}": data for f, data in files.items()}).start()
    try:
        env = {
            **os.environ,
            "GLIDEKIT_CACHE": str(tmp_path / "cache"),
            "GLIDEKIT_BASE_URL": server.base_url,
            "GLIDEKIT_CHECKPOINT_SPECS": str(specs),
            "GLIDEKIT_NOTEBOOK_OPTIONS": json.dumps(options),
            "GLIDEKIT_NOTEBOOK_OUT": str(out),
        }
        proc = subprocess.run(
            [sys.executable, str(SCRIPTS / script)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.stop()
    return proc, out, files
