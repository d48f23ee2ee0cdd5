"""Shared pieces of the training tests (tests/test_train*.py): tiny model configs, a tiny
shapes-world run config, and the fixture that restores torch's thread count after a run."""

from __future__ import annotations

import random
from collections.abc import Container
from pathlib import Path

import pytest
import torch

from glidekit.data.shapes import generate

TINY_UNET = {
    "kind": "text2im",
    "image_size": 16,
    "num_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "attention_resolutions": [8],
    "num_head_channels": 32,
    "xf_width": 32,
    "xf_layers": 1,
    "xf_heads": 1,
    "text_ctx": 16,
    "dropout": 0.0,
}
TINY_CLIP = {
    "kind": "clip",
    "image_size": 16,
    "patch_size": 4,
    "n_embd": 32,
    "n_head_image": 2,
    "n_head_state_image": 16,
    "n_xf_blocks_image": 1,
    "n_head_text": 2,
    "n_head_state_text": 16,
    "n_xf_blocks_text": 1,
}


@pytest.fixture(autouse=True)
def restore_threads():
    """The tiny configs pin torch to one thread (``train.threads: 1``, far faster than two
    threads on a shared 2-core machine); give the next test its thread count back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def tiny_config(out_dir: Path, **sections: dict) -> dict:
    """A tiny shapes-world config as a dict (sections merged over the defaults)."""
    cfg = {
        "model": dict(TINY_UNET),
        "data": {"kind": "shapes", "length": 64},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "ema_decay": 0.99},
        "train": {
            "steps": 4,
            "batch_size": 4,
            "out_dir": str(out_dir),
            "log_every": 1,
            "checkpoint_every": 0,
            "progress": False,
            "threads": 1,
        },
        "sample": {"every": 0, "count": 2, "steps": "3"},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def shapes_folder(
    root: Path,
    n: int,
    size: int,
    seed: int,
    *,
    caption: str = "a {color} {shape}",
    uncaptioned: Container[int] = (),
) -> random.Random:
    """Write ``n`` shapes-world pictures ``root/<i>.png`` of side ``size`` with ``<i>.txt``
    captions (``caption`` formatted with the scene's color and shape; none for the indices in
    ``uncaptioned``). Returns the random stream, for more pictures of the same sequence."""
    root.mkdir()
    rng = random.Random(seed)
    for i in range(n):
        img, scene = generate(rng, size)
        img.save(root / f"{i}.png")
        if i not in uncaptioned:
            (root / f"{i}.txt").write_text(caption.format(color=scene.color, shape=scene.shape))
    return rng
