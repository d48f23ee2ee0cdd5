"""Fine-tuning end to end: an official-layout .pt -> ``glidekit convert`` -> ``glidekit train``
with ``model.init`` -> export -> :func:`glidekit.checkpoints.load_unet` -> samples.

The checkpoint is the fixture-sized text2im model of ``golden/text2im_forward`` (the official
code's layout and tokenizer), so this is the released-weights fine-tuning path at toy size.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import load_golden, strip_prefix
from train_fixtures import restore_threads, shapes_folder  # noqa: F401 (autouse fixture)

from glidekit.checkpoints import load_unet as load_model
from glidekit.cli.main import main
from glidekit.compat import config_from_options
from glidekit.diffusion import GaussianDiffusion, sample
from glidekit.tokenizer import tokenize_batch
from glidekit.train import load_checkpoint


def test_finetune_converted_checkpoint_end_to_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    meta, tensors = load_golden("text2im_forward")
    official = strip_prefix(tensors, "model.")
    pt = tmp_path / "base-tiny.pt"
    torch.save(official, pt)
    caplog.set_level(logging.INFO)
    assert main(["convert", str(pt), "--no-progress"]) == 0
    converted = tmp_path / "base-tiny.safetensors"
    assert converted.is_file()

    root = tmp_path / "images"  # 40x40 pictures, resized and cropped to the model's 32x32
    shapes_folder(root, 4, 40, seed=3, caption="a photo of a {color} {shape}")

    arch = dataclasses.asdict(config_from_options(meta["options"]))
    config = {
        "model": {"kind": "text2im", "init": str(converted), **arch},
        "diffusion": {"steps": 1000, "noise_schedule": meta["options"]["noise_schedule"]},
        "data": {"kind": "folder", "root": str(root)},  # GPT-2 tokenizer, as released
        "optim": {"lr": 1e-4, "ema_decay": 0.9},
        "train": {
            "steps": 3,
            "batch_size": 2,
            "out_dir": str(tmp_path / "run"),
            "log_every": 1,
            "checkpoint_every": 0,
            "progress": False,
            "threads": 1,
        },
        "sample": {"every": -1},
        "export": {"dtype": "fp32"},
    }
    cfg = tmp_path / "finetune.json"
    cfg.write_text(json.dumps(config))
    assert main(["train", str(cfg)]) == 0
    assert f"initialised from {converted}" in caplog.text

    # The fine-tuned weights started from the converted ones and moved a little.
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["step"] == 3
    moved = max(float((ckpt["model"][k] - v).abs().max()) for k, v in official.items())
    assert 0 < moved < 0.05, moved

    model, diffusion_cfg, tokenizer = load_model(tmp_path / "run" / "export.safetensors")
    assert dataclasses.asdict(model.config) == arch
    assert diffusion_cfg.noise_schedule == "squaredcos_cap_v2"
    for name, value in model.state_dict().items():
        assert torch.equal(value, ckpt["ema"][name]), name
    prompts = ["a photo of a red circle", ""]
    tokens, mask = tokenize_batch(tokenizer, prompts, model.config.text_ctx)
    diffusion = GaussianDiffusion.from_config(diffusion_cfg.noise_schedule, 1000, "4")
    x = sample(
        diffusion,
        model,
        (2, 3, 32, 32),
        model_kwargs={"tokens": tokens, "mask": mask},
        generator=torch.Generator().manual_seed(0),
    )
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
