"""The official inpaint notebook's code runs against glidekit.compat with only its imports changed.

The notebook script (tests/scripts/inpaint_notebook.py) runs as a real subprocess; its
``load_checkpoint("base-inpaint"/"upsample-inpaint")`` calls download fixture-sized checkpoints
(the golden ``inpaint_forward`` / ``super_res_inpaint_forward`` weights) from a loopback HTTP
server through glidekit's cache, and the models are shrunk to the fixtures' options.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from ckpt_server import CheckpointServer
from PIL import Image
from test_compat_notebook import _options, _pt_bytes
from test_pipelines_models import random_picture

SCRIPT = Path(__file__).parent / "scripts" / "inpaint_notebook.py"


def _read_image(path: Path, size: int) -> np.ndarray:
    """The notebook's read_image as 8-bit pixels (H, W, 3)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((size, size), resample=Image.BICUBIC))


def test_inpaint_notebook_runs_unchanged(tmp_path):
    base_pt, base_layout = _pt_bytes("inpaint_forward")
    up_pt, up_layout = _pt_bytes("super_res_inpaint_forward")
    base_opts, up_opts = _options("inpaint_forward"), _options("super_res_inpaint_forward")
    specs = tmp_path / "tiny_specs.json"
    specs.write_text(
        json.dumps(
            {
                "checkpoints": {
                    "base-inpaint": {"state_dict": base_layout},
                    "upsample-inpaint": {"state_dict": up_layout},
                }
            }
        )
    )
    random_picture((96, 80), seed=4).save(tmp_path / "grass.png")  # not square, not 64/256
    out = tmp_path / "out"
    out.mkdir()
    files = {"/base_inpaint.pt": base_pt, "/upsample_inpaint.pt": up_pt}
    server = CheckpointServer(files).start()
    try:
        env = {
            **os.environ,
            "GLIDEKIT_CACHE": str(tmp_path / "cache"),
            "GLIDEKIT_BASE_URL": server.base_url,
            "GLIDEKIT_CHECKPOINT_SPECS": str(specs),
            "GLIDEKIT_NOTEBOOK_OPTIONS": json.dumps({"base": base_opts, "upsample": up_opts}),
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
    assert (tmp_path / "cache" / "base_inpaint.pt").read_bytes() == base_pt
    assert (tmp_path / "cache" / "upsample_inpaint.pt").read_bytes() == up_pt
    assert not list(tmp_path.glob("*.pt"))
    assert "total base parameters" in proc.stdout and "total upsampler parameters" in proc.stdout

    small, big = base_opts["image_size"], up_opts["image_size"]  # the notebook's 64 and 256
    keep_small = 20  # source_mask_64[:, :, 20:] = 0: rows 20 and below are repainted
    keep_big = keep_small * big // small  # nearest-upsampled mask
    src_small = _read_image(tmp_path / "grass.png", small).astype(np.int16)
    src_big = _read_image(tmp_path / "grass.png", big).astype(np.int16)
    shown = [np.asarray(Image.open(out / f"shown_{i}.png")).astype(np.int16) for i in range(3)]
    masked, base, up = shown
    assert masked.shape == (big, big, 3)
    assert base.shape == (small, small, 3) and up.shape == (big, big, 3)
    # The masked source: the known rows as read, the rest black (0 -> 127.5 -> 128).
    assert np.abs(masked[:keep_big] - src_big[:keep_big]).max() <= 1
    assert np.abs(masked[keep_big:] - 128).max() <= 1
    # Both stages keep the known region and paint the rest.
    assert np.abs(base[:keep_small] - src_small[:keep_small]).max() <= 1
    assert np.abs(up[:keep_big] - src_big[:keep_big]).max() <= 1
    assert base[keep_small:].std() > 1 and up[keep_big:].std() > 1
    assert np.abs(base[keep_small:] - src_small[keep_small:]).mean() > 2
