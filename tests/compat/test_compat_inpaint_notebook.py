"""The official inpaint notebook's code runs against glidekit.compat with only its imports changed.

The notebook script (tests/scripts/inpaint_notebook.py) runs as a real subprocess; its
``load_checkpoint("base-inpaint"/"upsample-inpaint")`` calls download fixture-sized checkpoints
(the golden ``inpaint_forward`` / ``super_res_inpaint_forward`` weights) from a loopback HTTP
server through glidekit's cache, and the models are shrunk to the fixtures' options.
"""

from pathlib import Path

import numpy as np
from helpers import _options, _state, random_picture
from notebook_runner import run_notebook
from PIL import Image


def _read_image(path: Path, size: int) -> np.ndarray:
    """The notebook's read_image as 8-bit pixels (H, W, 3)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((size, size), resample=Image.BICUBIC))


def test_inpaint_notebook_runs_unchanged(tmp_path):
    base_opts, up_opts = _options("inpaint_forward"), _options("super_res_inpaint_forward")
    random_picture((96, 80), seed=4).save(tmp_path / "grass.png")  # not square, not 64/256
    proc, out, files = run_notebook(
        "inpaint_notebook.py",
        tmp_path,
        {
            "base-inpaint": ("base_inpaint.pt", _state("inpaint_forward")),
            "upsample-inpaint": ("upsample_inpaint.pt", _state("super_res_inpaint_forward")),
        },
        {"base": base_opts, "upsample": up_opts},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, data in files.items():
        assert (tmp_path / "cache" / name).read_bytes() == data, name
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
