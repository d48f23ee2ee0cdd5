"""Training the noise-aware CLIP: :class:`ClipTask`, a contrastive loss on noised images.

Each step noises the batch's images to uniform random timesteps (x_t = q_sample(x_0, t)),
embeds them with the image encoder (which also sees t) and the captions with the text encoder,
and minimises the symmetric InfoNCE loss of CLIP with the model's fixed logit scale. Under DDP
the embeddings of all ranks are gathered (with gradients), so every rank contrasts its rows
against the global batch.

The export is a glidekit CLIP file (:func:`glidekit.checkpoints.modelfile.save_clip`; read it
with :func:`glidekit.checkpoints.modelfile.load_clip`). A shapes-world CLIP records its word
vocabulary, whose ids are shifted by one so that 0 is padding (see
:func:`glidekit.train.data.tokenize_shapes_for_clip`). There is no sample grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_gather
from torch.utils.data import Dataset

from glidekit.checkpoints import CheckpointError, load_into
from glidekit.checkpoints.modelfile import load_clip, save_clip
from glidekit.clip import CLIPConfig, NoisedCLIP
from glidekit.diffusion import DiffusionConfig, GaussianDiffusion, create_diffusion
from glidekit.tokenizer import ShapesTokenizer
from glidekit.train.config import TrainConfig
from glidekit.train.data import (
    add_position_twins,
    drop_captions,
    make_tokenizer,
    tokenize_for_clip,
    tokenizer_name,
)
from glidekit.train.task import EXPORT_DTYPES, Info, StepContext

#: The text length of a shapes-world CLIP (its captions are a few words).
SHAPES_TEXT_LEN = 32


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


def _init_clip(init: str | None) -> NoisedCLIP | None:
    """The CLIP file ``model.init`` names (None for no init or the released pair)."""
    if not init or init == "clip":
        return None
    try:
        return load_clip(init)
    except CheckpointError as exc:
        raise ValueError(f"model.init: {exc}") from exc


def _load_released(clip: NoisedCLIP) -> None:
    try:
        load_into(clip.image_encoder, "clip/image-enc")
        load_into(clip.text_encoder, "clip/text-enc")
    except CheckpointError as exc:
        raise ValueError(f"model.init: {exc}") from exc


@dataclass
class ClipTask:
    """The noise-aware CLIP to train (see the module docstring); build with :meth:`build`."""

    config: TrainConfig
    model: ClipPair
    tokenizer: Any
    default_caption_dropout: float = 0.0
    diffusion: GaussianDiffusion = field(init=False)

    def __post_init__(self) -> None:
        c = self.clip_config
        self.diffusion = create_diffusion(
            DiffusionConfig(steps=c.n_timesteps, noise_schedule=c.beta_schedule)
        )

    @classmethod
    def build(cls, config: TrainConfig, info: Info, *, load_weights: bool = True) -> ClipTask:
        """The CLIP of ``config``: architecture from ``model.*`` over the init file's or the
        defaults (a shapes-world CLIP: the words' vocabulary, 32 tokens), weights from
        ``model.init`` (``clip``: the released pair; or a glidekit CLIP file)."""
        init = config.model.init
        defaults: dict[str, Any] = {"n_timesteps": config.diffusion.steps}
        if config.diffusion.noise_schedule != "auto":
            defaults["beta_schedule"] = config.diffusion.noise_schedule
        shapes = tokenizer_name(config.data, "clip") == "shapes"
        if shapes:
            defaults.update(n_vocab=ShapesTokenizer().n_vocab + 1, max_text_len=SHAPES_TEXT_LEN)
        start = _init_clip(init)
        if start is not None:
            defaults.update(start.config.to_dict())
        clip_cfg = config.model.clip_config(**defaults)
        if shapes:  # ids shifted by one: 0 pads
            tokenizer: Any = ShapesTokenizer(text_ctx=clip_cfg.max_text_len)
            need = tokenizer.n_vocab + 1
        else:
            tokenizer = make_tokenizer(config.data, "clip", clip_cfg.max_text_len)
            need = tokenizer.n_vocab
        if need > clip_cfg.n_vocab:
            raise ValueError(
                f"model.n_vocab ({clip_cfg.n_vocab}) is too small for the tokenizer; set "
                f"model.n_vocab: {need}"
            )
        clip = NoisedCLIP(clip_cfg)
        if init == "clip" and load_weights:
            _load_released(clip)
        elif start is not None:
            clip.load_state_dict(start.state_dict(), strict=True)
        if init and load_weights:
            info("initialised from %s", init)
        return cls(config, ClipPair(clip), tokenizer)

    @property
    def clip_config(self) -> CLIPConfig:
        return self.model.clip.config

    @property
    def image_size(self) -> int:
        return self.clip_config.image_size

    def loss(
        self, net: nn.Module, samples: list[dict], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Position twins added, captions dropped, timesteps and noise drawn (in that order),
        then the contrastive loss of the noised images against the captions. Metric: acc."""
        twins = float(self.config.data.position_twins)
        if twins > 0:
            samples = add_position_twins(samples, twins, ctx.gen_cpu, self.image_size)
        images = torch.stack([s["image"] for s in samples]).float()
        captions = [s.get("caption", "") for s in samples]
        captions = drop_captions(captions, ctx.caption_dropout, ctx.gen_cpu)
        tokens, lens = tokenize_for_clip(self.tokenizer, captions, self.clip_config.max_text_len)
        dev = ctx.device
        x0 = images.to(dev)
        t = torch.randint(
            0, self.diffusion.num_timesteps, (x0.shape[0],), generator=ctx.gen_dev, device=dev
        )
        noise = torch.randn(x0.shape, generator=ctx.gen_dev, device=dev)
        x_t = self.diffusion.q_sample(x0, t, noise)
        with ctx.autocast():
            z_i, z_t = net(x_t, self.diffusion.model_timesteps(t), tokens.to(dev), lens.to(dev))
        logit_scale = self.model.clip.logit_scale
        loss, acc = contrastive_loss(z_i.float(), z_t.float(), logit_scale, rank=ctx.rank)
        return loss, {"acc": float(acc.detach())}

    def sample_grid(
        self, ema: nn.Module, dataset: Dataset, path: Path, ctx: StepContext
    ) -> Path | None:
        """None: a CLIP draws no pictures."""
        return None

    def export(self, ema: nn.Module, path: Path) -> Path:
        """A glidekit CLIP file of ``ema``'s encoders and the tokenizer."""
        clip: NoisedCLIP = ema.clip  # type: ignore[assignment]
        return save_clip(path, clip, self.tokenizer, dtype=EXPORT_DTYPES[self.config.export.dtype])


__all__ = ["SHAPES_TEXT_LEN", "ClipPair", "ClipTask", "contrastive_loss"]
