"""glidekit's own model files: one safetensors file that carries its config and tokenizer.

Metadata keys: ``glidekit.format`` ("glide-unet/1"), ``glidekit.config`` (the UNetConfig as JSON),
``glidekit.diffusion`` (the DiffusionConfig used in training) and ``glidekit.tokenizer``
(:func:`glidekit.tokenizer.tokenizer_to_dict`). A model trained with ``glidekit train`` and the
embedded shapes models are such files, so they load with no other information.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from glidekit.fileio import atomic_path
from glidekit.nn.config import DiffusionConfig, UNetConfig, config_from_dict
from glidekit.nn.unet import GlideUNet, create_model
from glidekit.tensorfile import read_header, read_tensors
from glidekit.tokenizer import GPT2Tokenizer, Tokenizer, tokenizer_from_dict, tokenizer_to_dict

FORMAT = "glide-unet/1"


def save_model(
    path: str | os.PathLike,
    model: GlideUNet,
    diffusion: DiffusionConfig | None = None,
    tokenizer: Tokenizer | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` (weights in ``dtype`` if given) with its configs, atomically."""
    path = Path(path)
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
        .detach()
        .cpu()
        .contiguous()
        for k, v in model.state_dict().items()
    }
    metadata = {
        "glidekit.format": FORMAT,
        "glidekit.config": json.dumps(model.config.to_dict()),
        "glidekit.diffusion": json.dumps(
            dataclasses.asdict(diffusion or DiffusionConfig.for_model(model.config))
        ),
        "glidekit.tokenizer": json.dumps(
            tokenizer_to_dict(tokenizer or GPT2Tokenizer(model.config.text_ctx))
        ),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    return read_header(path).metadata


def read_config(path: str | os.PathLike) -> UNetConfig:
    """The model config stored in a glidekit model file (no weights are read)."""
    return config_from_dict(json.loads(read_metadata(path)["glidekit.config"]))


def is_bundle(path: str | os.PathLike) -> bool:
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        return read_metadata(path).get("glidekit.format") == FORMAT
    except Exception:  # not a readable safetensors file
        return False


def load_model(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[GlideUNet, DiffusionConfig, Tokenizer]:
    """Load a file written by :func:`save_model`: (model in eval mode, diffusion config, tokenizer).

    ``dtype`` (float16/bfloat16): hold the model as :meth:`GlideUNet.convert_to_fp16` does, each
    tensor cast as it is read, so loading never holds a float32 copy of the whole model (the
    peak is the half-precision model plus one tensor). ``None``: float32 on the CPU, the
    file's half precision elsewhere.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        meta = read_metadata(path)
    except Exception as exc:
        raise ValueError(
            f"{path} is not a readable safetensors file ({exc}); re-export it"
        ) from exc
    if meta.get("glidekit.format") != FORMAT:
        raise ValueError(
            f"{path} is not a glidekit model file (no glidekit.format={FORMAT} metadata); "
            "released .pt checkpoints load through glidekit.checkpoints"
        )
    config = config_from_dict(json.loads(meta["glidekit.config"]))
    diffusion = DiffusionConfig(**json.loads(meta["glidekit.diffusion"]))
    tokenizer = tokenizer_from_dict(json.loads(meta["glidekit.tokenizer"]))
    model = create_model(config, device="meta")
    cast = dtype is not None and dtype != torch.float32
    if cast:  # each tensor is cast to its place's dtype as it is read
        model.convert_to_fp16(dtype)
    want = {k: v.dtype for k, v in model.state_dict().items()} if cast else {}
    state = read_tensors(path, want)  # no memory map: only the cast copy stays resident
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device)
    if cast:
        return model.eval(), diffusion, tokenizer
    # Weights may be stored in half precision; compute in float32 on CPU, half elsewhere.
    half = next(
        (v.dtype for v in state.values() if v.dtype in (torch.float16, torch.bfloat16)), None
    )
    model.float()
    if half is not None and torch.device(device).type != "cpu":
        model.convert_to_fp16(half)
    return model.eval(), diffusion, tokenizer
