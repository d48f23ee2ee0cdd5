"""The official text2im notebook's code runs against glidekit.compat with only its imports changed.

The notebook script (tests/scripts/text2im_notebook.py) runs as a real subprocess; its
``load_checkpoint("base"/"upsample")`` calls download fixture-sized checkpoints from a loopback
HTTP server through glidekit's cache, and the models are shrunk to the fixtures' options.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from ckpt_server import CheckpointServer
from conftest import load_golden, strip_prefix
from PIL import Image

SCRIPT = Path(__file__).parent / "scripts" / "text2im_notebook.py"


def _options(fixture: str) -> dict:
    meta, _ = load_golden(fixture)
    return {k: v for k, v in meta["options"].items() if k not in ("timestep_respacing", "use_fp16")}


def _pt_bytes(fixture: str) -> tuple[bytes, list]:
    _, tensors = load_golden(fixture)
    state = strip_prefix(tensors, "model.")
    buf = io.BytesIO()
    torch.save(state, buf)
    layout = [[k, list(v.shape), "float32"] for k, v in state.items()]
    return buf.getvalue(), layout


def test_text2im_notebook_runs_unchanged(tmp_path):
    base_pt, base_layout = _pt_bytes("text2im_forward")
    up_pt, up_layout = _pt_bytes("super_res_forward")
    specs = tmp_path / "tiny_specs.json"
    specs.write_text(
        json.dumps(
            {
                "checkpoints": {
                    "base": {"state_dict": base_layout},
                    "upsample": {"state_dict": up_layout},
                }
            }
        )
    )
    out = tmp_path / "out"
    out.mkdir()
    server = CheckpointServer({"/base.pt": base_pt, "/upsample.pt": up_pt}).start()
    try:
        env = {
            **os.environ,
            "GLIDEKIT_CACHE": str(tmp_path / "cache"),
            "GLIDEKIT_BASE_URL": server.base_url,
            "GLIDEKIT_CHECKPOINT_SPECS": str(specs),
            "GLIDEKIT_NOTEBOOK_OPTIONS": json.dumps(
                {"base": _options("text2im_forward"), "upsample": _options("super_res_forward")}
            ),
            "GLIDEKIT_NOTEBOOK_OUT": str(out),
        }
        proc = subprocess.run(
            [sys.executable, str(SCRIPT)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Downloaded once each into glidekit's cache, not the working directory.
    assert (tmp_path / "cache" / "base.pt").read_bytes() == base_pt
    assert (tmp_path / "cache" / "upsample.pt").read_bytes() == up_pt
    assert not list(tmp_path.glob("*.pt"))
    assert "total base parameters" in proc.stdout
    base_png = np.asarray(Image.open(out / "shown_0.png"))
    up_png = np.asarray(Image.open(out / "shown_1.png"))
    assert base_png.shape == (32, 32, 3) and up_png.shape == (64, 64, 3)
    assert base_png.std() > 1 and up_png.std() > 1


def _clip_pt_bytes(prefix: str) -> tuple[bytes, list]:
    _, tensors = load_golden("clip")
    state = strip_prefix(tensors, prefix)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue(), [[k, list(v.shape), "float32"] for k, v in state.items()]


def test_clip_guided_notebook_runs_unchanged(tmp_path):
    """The clip_guided notebook: base sampled with the noise-aware CLIP's cond_fn, then upsampled."""
    meta, _ = load_golden("clip")
    files, layouts = {}, {}
    for name, fixture in (("base", "text2im_forward"), ("upsample", "super_res_forward")):
        data, layouts[name] = _pt_bytes(fixture)
        files[f"/{name}.pt"] = data
    for name, prefix in (
        ("clip/image-enc", "clip_image_enc."),
        ("clip/text-enc", "clip_text_enc."),
    ):
        data, layouts[name] = _clip_pt_bytes(prefix)
        files["/" + name.replace("clip/", "clip_").replace("-", "_") + ".pt"] = data
    specs = tmp_path / "tiny_specs.json"
    specs.write_text(
        json.dumps({"checkpoints": {k: {"state_dict": v} for k, v in layouts.items()}})
    )
    clip_config = tmp_path / "clip_config.yaml"
    clip_config.write_text(json.dumps(meta["config_yaml"]))
    out = tmp_path / "out"
    out.mkdir()
    server = CheckpointServer(files).start()
    try:
        env = {
            **os.environ,
            "GLIDEKIT_CACHE": str(tmp_path / "cache"),
            "GLIDEKIT_BASE_URL": server.base_url,
            "GLIDEKIT_CHECKPOINT_SPECS": str(specs),
            "GLIDEKIT_NOTEBOOK_OPTIONS": json.dumps(
                {
                    "base": _options("text2im_forward"),
                    "upsample": _options("super_res_forward"),
                    "clip": {"config_path": str(clip_config)},
                }
            ),
            "GLIDEKIT_NOTEBOOK_OUT": str(out),
        }
        proc = subprocess.run(
            [sys.executable, str(SCRIPT.with_name("clip_guided_notebook.py"))],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("clip_image_enc.pt", "clip_text_enc.pt", "base.pt", "upsample.pt"):
        assert (tmp_path / "cache" / name).is_file(), name
    base_png = np.asarray(Image.open(out / "shown_0.png"))
    up_png = np.asarray(Image.open(out / "shown_1.png"))
    assert base_png.shape == (32, 32, 3) and up_png.shape == (64, 64, 3)
    assert base_png.std() > 1 and up_png.std() > 1
