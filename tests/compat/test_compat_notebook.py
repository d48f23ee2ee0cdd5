"""The official text2im and clip_guided notebooks' code runs against glidekit.compat with only its
imports changed.

The notebook scripts (tests/scripts/) run as real subprocesses; their ``load_checkpoint`` calls
download fixture-sized checkpoints (the golden weights) from a loopback HTTP server through
glidekit's cache, and the models are shrunk to the fixtures' options.
"""

import json

import numpy as np
from conftest import load_golden
from helpers import _options, _state
from notebook_runner import run_notebook
from PIL import Image

CASCADE = {
    "base": ("base.pt", _state("text2im_forward")),
    "upsample": ("upsample.pt", _state("super_res_forward")),
}
TINY = {"base": _options("text2im_forward"), "upsample": _options("super_res_forward")}


def _check_run(proc, out, files, tmp_path) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Downloaded once each into glidekit's cache, not the working directory.
    for name, data in files.items():
        assert (tmp_path / "cache" / name).read_bytes() == data, name
    assert not list(tmp_path.glob("*.pt"))
    assert "total base parameters" in proc.stdout
    base_png = np.asarray(Image.open(out / "shown_0.png"))
    up_png = np.asarray(Image.open(out / "shown_1.png"))
    assert base_png.shape == (32, 32, 3) and up_png.shape == (64, 64, 3)
    assert base_png.std() > 1 and up_png.std() > 1


def test_text2im_notebook_runs_unchanged(tmp_path):
    proc, out, files = run_notebook("text2im_notebook.py", tmp_path, CASCADE, TINY)
    _check_run(proc, out, files, tmp_path)


def test_clip_guided_notebook_runs_unchanged(tmp_path):
    """The clip_guided notebook: base sampled with the noise-aware CLIP's cond_fn, then upsampled."""
    meta, _ = load_golden("clip")
    clip_config = tmp_path / "clip_config.yaml"
    clip_config.write_text(json.dumps(meta["config_yaml"]))  # JSON is YAML
    checkpoints = {
        **CASCADE,
        "clip/image-enc": ("clip_image_enc.pt", _state("clip", "clip_image_enc.")),
        "clip/text-enc": ("clip_text_enc.pt", _state("clip", "clip_text_enc.")),
    }
    options = {**TINY, "clip": {"config_path": str(clip_config)}}
    proc, out, files = run_notebook("clip_guided_notebook.py", tmp_path, checkpoints, options)
    _check_run(proc, out, files, tmp_path)
    assert {"clip_image_enc.pt", "clip_text_enc.pt"} <= set(files)
