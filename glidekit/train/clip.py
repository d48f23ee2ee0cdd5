"""Training the noise-aware CLIP: contrastive loss on noised images, and its exported file.

Each step noises the batch's images to uniform random timesteps (x_t = q_sample(x_0, t)),
embeds them with the image encoder (which also sees t) and the captions with the text encoder,
and minimises the symmetric InfoNCE loss of CLIP with the model's fixed logit scale. Under DDP
the embeddings of all ranks are gathered (with gradients), so every rank contrasts its rows
against the global batch.

Export (``glide-clip/1``): a safetensors file with ``image_encoder.*`` and ``text_encoder.*``
and metadata ``glidekit.clip_config`` (the CLIPConfig as JSON) and ``glidekit.tokenizer``
(``{"type": "clip"}`` or the shapes world's word tokenizer, whose ids are shifted by one so
that 0 is padding; see :func:`glidekit.train.data.tokenize_shapes_for_clip`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from glidekit.clip import CLIPConfig, NoisedCLIP
from glidekit.data import ShapesTokenizer
from glidekit.fileio import atomic_path
from glidekit.tensorfile import read_header, read_tensors

CLIP_FORMAT = "glide-clip/1"


def _normalize(z: torch.Tensor) -> torch.Tensor:
    return z / (torch.linalg.vector_norm(z, dim=-1, keepdim=True) + 1e-12)


class ClipPair(nn.Module):
    """Both encoders behind one ``forward`` (what DDP wraps).

    forward(x_t (B, 3, S, S) in [-1, 1], t (B,) int64 original timesteps, tokens (B, L) int64,
    lens (B,) int64) -> (image embeddings (B, D), text embeddings (B, D)), L2-normalised, float32.
    """

    def __init__(self, clip: NoisedCLIP) -> None:
        super().__init__()
        self.clip = clip

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z_i = self.clip.image_encoder(x_t, t).float()
        z_t = self.clip.text_encoder(tokens, lens).float()
        return _normalize(z_i), _normalize(z_t)


def contrastive_loss(
    z_img: torch.Tensor, z_txt: torch.Tensor, logit_scale: torch.Tensor, *, rank: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE of local rows against the global batch.

    z_img, z_txt: (B, D) normalised local embeddings. Under an initialised process group both are
    all-gathered (differentiably); row i of rank r matches global column r * B + i.
    Returns (loss scalar, image->text top-1 accuracy scalar).
    """
    b = z_img.shape[0]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_gather

        all_img = torch.cat(all_gather(z_img), dim=0)
        all_txt = torch.cat(all_gather(z_txt), dim=0)
    else:
        all_img, all_txt = z_img, z_txt
    scale = logit_scale.exp()
    labels = torch.arange(b, device=z_img.device) + rank * b
    logits_i = scale * z_img @ all_txt.t()
    logits_t = scale * z_txt @ all_img.t()
    loss = 0.5 * (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels))
    acc = (logits_i.argmax(dim=1) == labels).float().mean()
    return loss, acc


def tokenizer_metadata(tokenizer: Any) -> dict[str, Any]:
    if isinstance(tokenizer, ShapesTokenizer):
        return {"type": "shapes", "id_offset": 1, "data": tokenizer.to_dict()}
    return {"type": "clip"}


def save_clip(
    path: str | os.PathLike, clip: NoisedCLIP, tokenizer: Any, dtype: torch.dtype | None = None
) -> Path:
    """Write a trained CLIP (both encoders, config, tokenizer description) atomically."""
    path = Path(path)
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
        .detach()
        .cpu()
        .contiguous()
        for k, v in clip.state_dict().items()
    }
    metadata = {
        "glidekit.format": CLIP_FORMAT,
        "glidekit.clip_config": json.dumps(clip.config.to_dict()),
        "glidekit.tokenizer": json.dumps(tokenizer_metadata(tokenizer)),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_clip(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[NoisedCLIP, dict[str, Any]]:
    """Load a file written by :func:`save_clip`: (NoisedCLIP in eval mode, tokenizer metadata).

    For a shapes-world CLIP, tokenize prompts with
    :func:`glidekit.train.data.tokenize_shapes_for_clip` and pass the tokens to
    ``clip.text_embeddings(tokens)`` / ``clip.cond_fn(tokens, scale)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP file {str(path)!r} does not exist")
    meta = read_header(path).metadata
    if meta.get("glidekit.format") != CLIP_FORMAT:
        raise ValueError(f"{str(path)!r} is not a glidekit CLIP file ({CLIP_FORMAT})")
    state = {k: v.to(device) for k, v in read_tensors(path).items()}
    config = CLIPConfig.from_dict(json.loads(meta["glidekit.clip_config"]))
    clip = NoisedCLIP(config, device="meta")
    clip.load_state_dict(state, strict=True, assign=True)
    clip.logit_scale = torch.tensor(  # the non-persistent buffer was on the meta device
        float(torch.tensor(config.logit_scale).log()), device=device
    )
    clip.float()
    return clip.eval(), json.loads(meta["glidekit.tokenizer"])


__all__ = ["CLIP_FORMAT", "ClipPair", "contrastive_loss", "load_clip", "save_clip"]
