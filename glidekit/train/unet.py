"""Training a GLIDE UNet (text2im, inpaint, super_res, super_res_inpaint): :class:`UNetTask`.

The model starts from scratch or from ``model.init`` (a released name, a glidekit model file,
or a checkpoint of the configured architecture; a text2im/super_res file may start an
inpaint/super_res_inpaint model, see :func:`add_inpaint_channels`). Each step noises the
batch's images to random timesteps and minimises GLIDE's loss (eps or v MSE plus the learned
variance's VB term, :func:`glidekit.diffusion.losses.training_losses`); sample grids show the
EMA model on fixed prompts; the export is a glidekit model file with the diffusion it was
trained with, its tokenizer and the run's ``export.sampling`` defaults.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from glidekit.checkpoints import CheckpointError, load_into
from glidekit.checkpoints.modelfile import is_unet_file, load_unet, save_unet
from glidekit.checkpoints.registry import lookup
from glidekit.diffusion import DiffusionConfig, GaussianDiffusion, create_diffusion, sample
from glidekit.diffusion.losses import training_losses
from glidekit.guidance import ClassifierFreeGuidance, known_region_replacer
from glidekit.nn.config import RELEASED_CONFIGS, UNetConfig
from glidekit.nn.unet import GlideUNet, TextCondition, create_model
from glidekit.tokenizer import ShapesTokenizer, Tokenizer, tokenize_batch
from glidekit.train.config import TrainConfig
from glidekit.train.data import (
    conditioning,
    drop_captions,
    make_tokenizer,
    random_patches,
    reference_items,
    tokenizer_name,
)
from glidekit.train.report import save_grid
from glidekit.train.task import EXPORT_DTYPES, Info, StepContext, load_exactly

logger = logging.getLogger(__name__)

#: The text encoder's parameters in a GlideUNet (name prefixes): what ``optim.text_lr_mult``
#: scales. Everything the prompt passes through before the UNet proper reads it.
TEXT_ENCODER_PARAMS: tuple[str, ...] = (
    "token_embedding.",
    "positional_embedding",
    "padding_embedding",
    "transformer.",
    "final_ln.",
    "transformer_proj.",
)
#: model.init of this kind may start a model.kind of that kind (GLIDE's inpainting fine-tunes).
INPAINT_FROM = {"text2im": "inpaint", "super_res": "super_res_inpaint"}
INPUT_CONV = "input_blocks.0.0.weight"


def add_inpaint_channels(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A text2im (super_res) state dict made to fit the inpaint (super_res_inpaint) kind: the
    input convolution gains the masked image's 3 channels and the mask's 1 right after x's 3
    (the UNet's input order), with zero weights, so the widened model computes exactly what
    the original did until fine-tuning teaches it to read them (as the GLIDE paper did)."""
    weight = state[INPUT_CONV]
    zeros = weight.new_zeros(weight.shape[0], 4, *weight.shape[2:])
    return {**state, INPUT_CONV: torch.cat([weight[:, :3], zeros, weight[:, 3:]], dim=1)}


def is_text_encoder_param(name: str) -> bool:
    """Whether the GlideUNet parameter ``name`` (from ``named_parameters()``) belongs to the
    text encoder (:data:`TEXT_ENCODER_PARAMS`)."""
    return name.startswith(TEXT_ENCODER_PARAMS)


def pooled_bow_loss(
    model: GlideUNet, text: TextCondition, tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The pooled-token bag-of-words loss (``diffusion.pooled_bow_weight``), a scalar in nats.

    The pooled text token (the last position of the text transformer's output, ``xf_out[:, :,
    -1]``, whose projection is added to the timestep embedding) scores every vocabulary entry
    through the tied token embedding (no new weights); the loss is the cross-entropy against
    the caption's own words, each real token (``mask``) weighted equally, averaged over the
    captions that have any (dropped, empty captions add nothing). Why: the UNet reads the
    caption mostly as this one vector, and a word it does not use yet sends almost no gradient
    into it (the position words of the shapes world: 0.003 of change against 1.3 for the
    background's colour), a saddle on both sides; this asks the vector to carry every word.
    tokens, mask: (B, text_ctx). Returns 0 for a batch of empty captions.
    """
    pooled = text.xf_out[:, :, -1].float()  # (B, xf_width)
    logits = pooled @ model.token_embedding.weight.float().t()  # (B, n_vocab)
    counts = torch.zeros_like(logits).scatter_add_(1, tokens.long(), mask.float())
    words = counts.sum(1)
    keep = words > 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    target = counts[keep] / words[keep, None]
    return -(target * torch.log_softmax(logits[keep], dim=1)).sum(1).mean()


def sample_timesteps(
    batch: int,
    num_steps: int,
    generator: torch.Generator,
    device: torch.device,
    high_noise_fraction: float = 0.0,
    high_noise_start: int = 900,
) -> torch.Tensor:
    """(batch,) training timesteps: uniform over [0, num_steps), except that each one is, with
    probability ``high_noise_fraction``, drawn from [high_noise_start, num_steps) instead.
    With a fraction of 0 this draws exactly what plain uniform sampling does."""
    t = torch.randint(0, num_steps, (batch,), generator=generator, device=device)
    if high_noise_fraction > 0:
        top = torch.randint(
            high_noise_start, num_steps, (batch,), generator=generator, device=device
        )
        pick = torch.rand(batch, generator=generator, device=device) < high_noise_fraction
        t = torch.where(pick, top, t)
    return t


# ------------------------------------------------------------------------------- model.init
@dataclass
class InitSource:
    """What ``model.init`` brings: the architecture it fixes (``base``), the weights to start
    from (``state``, already fitted to ``model.kind``) or ``released`` (weights through
    :func:`~glidekit.checkpoints.load_into`), and the tokenizer it was trained with."""

    base: UNetConfig | None = None
    state: dict[str, torch.Tensor] | None = None
    tokenizer: Tokenizer | None = None
    released: bool = False


def _from_model_file(init: str, config: TrainConfig) -> InitSource:
    try:
        loaded, diffusion, tokenizer = load_unet(init)
    except CheckpointError as exc:
        raise ValueError(f"model.init: {exc}") from exc
    base, kind = loaded.config, config.model.kind
    want = config.diffusion.prediction
    if diffusion.prediction != want:
        logger.warning(
            "model.init %s predicts %s but diffusion.prediction is %s: the fine-tune re-learns "
            "the output (set diffusion.prediction: %s to keep it)",
            init, diffusion.prediction, want, diffusion.prediction,
        )  # fmt: skip
    state = {k: v.float() for k, v in loaded.state_dict().items()}
    if INPAINT_FROM.get(base.kind) == kind:
        state = add_inpaint_channels(state)
    elif base.kind != kind:
        hint = f" (or {INPAINT_FROM[base.kind]})" if base.kind in INPAINT_FROM else ""
        raise ValueError(
            f"model.init: {init!r} holds a {base.kind} model but model.kind is {kind}; set "
            f"model.kind: {base.kind}{hint}"
        )
    return InitSource(base=base, state=state, tokenizer=tokenizer)


def resolve_init(config: TrainConfig) -> InitSource:
    """Read ``model.init`` (see :class:`InitSource`); ValueError naming ``model.init``."""
    init, kind = config.model.init, config.model.kind
    if not init:
        return InitSource()
    released = lookup(init)
    if released is not None:
        if released.family != "diffusion":
            raise ValueError(f"model.init: {init!r} is a CLIP checkpoint; use model.kind: clip")
        base = RELEASED_CONFIGS[released.name]
        if base.kind != kind:
            raise ValueError(
                f"model.init: {init!r} is a {base.kind} model but model.kind is {kind}; set "
                f"model.kind: {base.kind}"
            )
        return InitSource(base=base, released=True)
    if is_unet_file(init):
        return _from_model_file(init, config)
    if not Path(init).exists():
        raise ValueError(
            f"model.init: {init!r} is neither a released checkpoint name "
            f"({', '.join(RELEASED_CONFIGS)}) nor an existing file"
        )
    return InitSource()  # a checkpoint of the configured architecture


def load_init_weights(model: GlideUNet, source: InitSource, init: str) -> None:
    """Start ``model`` from ``model.init`` (``init``). A model that turns on
    ``attention_pos_emb`` or ``text_spatial_maps`` for the fine-tune keeps those new weights'
    initial values (the sine-cosine table; zero); every other weight comes from the file."""
    if source.state is None:
        try:
            load_into(model, init if source.released else Path(init))
        except CheckpointError as exc:
            raise ValueError(f"model.init: {exc}") from exc
        return
    state = dict(source.state)
    base = source.base
    fresh = model.state_dict()
    if base is not None and model.config.attention_pos_emb and not base.attention_pos_emb:
        state.update({k: v.clone() for k, v in fresh.items() if k.endswith(".pos_emb")})
    if base is not None and model.config.text_spatial_maps and not base.text_spatial_maps:
        state.update({k: v.clone() for k, v in fresh.items() if k.startswith("text_spatial.")})
    why = (
        f"model.init: {init!r} does not fit the configured architecture; drop the model.* "
        "keys that change it"
    )
    load_exactly(model, state, why)


@torch.no_grad()
def soften_text_attention(model: GlideUNet, scale: float) -> None:
    """Multiply every text-transformer attention's queries and keys (the q and k rows of each
    head's slice of ``c_qkv``, weights and biases) by ``scale`` in place: the attention logits
    are divided by ``1 / scale**2`` and the softmax, if saturated, passes gradient again
    (``model.init_text_attention_scale``). Values, MLPs and everything else are untouched."""
    for block in model.transformer.resblocks:
        attn = block.attn
        d = attn.c_qkv.weight.shape[0] // (3 * attn.heads)
        for h in range(attn.heads):
            rows = slice(3 * d * h, 3 * d * h + 2 * d)  # [q | k] of head h; v stays
            attn.c_qkv.weight[rows] *= scale
            attn.c_qkv.bias[rows] *= scale


# ------------------------------------------------------------------------------- the task
@dataclass
class UNetTask:
    """A GLIDE UNet to train (see the module docstring); build with :meth:`build`."""

    config: TrainConfig
    model: GlideUNet
    tokenizer: Tokenizer
    diffusion_config: DiffusionConfig
    default_caption_dropout: float = 0.2
    diffusion: GaussianDiffusion = field(init=False)
    _reference: list[dict] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.diffusion = create_diffusion(self.diffusion_config)

    @classmethod
    def build(cls, config: TrainConfig, info: Info, *, load_weights: bool = True) -> UNetTask:
        """The model (from ``model.init`` with ``load_weights``), tokenizer and diffusion of
        ``config``. ValueError naming the key to fix for a config that cannot be built."""
        init = resolve_init(config)
        defaults: dict[str, Any] = {}
        shapes = tokenizer_name(config.data, config.model.kind) == "shapes"
        if shapes and "n_vocab" not in config.model.arch and init.base is None:
            defaults["n_vocab"] = ShapesTokenizer().n_vocab
        unet_cfg = config.model.unet_config(init.base, **defaults)
        if init.tokenizer is not None and config.data.tokenizer == "auto":
            tokenizer = init.tokenizer
        else:
            tokenizer = make_tokenizer(config.data, config.model.kind, unet_cfg.text_ctx)
        if tokenizer.n_vocab > unet_cfg.n_vocab:
            raise ValueError(
                f"model.n_vocab ({unet_cfg.n_vocab}) is smaller than the tokenizer's vocabulary "
                f"({tokenizer.n_vocab}); set model.n_vocab: {tokenizer.n_vocab}"
            )
        model = create_model(unet_cfg)
        if config.model.init and load_weights:
            load_init_weights(model, init, config.model.init)
            info("initialised from %s", config.model.init)
            scale = config.model.init_text_attention_scale
            if scale != 1.0:
                soften_text_attention(model, scale)
                info("text attention queries and keys scaled by %g", scale)
        schedule = config.diffusion.noise_schedule
        if schedule == "auto":
            schedule = "linear" if unet_cfg.super_res else "squaredcos_cap_v2"
        diffusion = DiffusionConfig(
            steps=config.diffusion.steps,
            noise_schedule=schedule,
            learn_sigma=unet_cfg.learn_sigma,
            prediction=config.diffusion.prediction,
        )
        return cls(config, model, tokenizer, diffusion)

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def low_res_size(self) -> int:
        """The upsamplers' input side (``data.low_res_size``, else a quarter of the output)."""
        return self.config.data.low_res_size or max(1, self.image_size // 4)

    def conditioning(
        self, images: torch.Tensor, generator: torch.Generator, keeps: list | None = None
    ) -> dict[str, torch.Tensor]:
        """This model's image conditioning of clean ``images`` (see
        :func:`glidekit.train.data.conditioning`): {} for text2im."""
        cfg = self.model.config
        return conditioning(
            images,
            super_res=cfg.super_res,
            inpaint=cfg.inpaint,
            low_res_size=self.low_res_size,
            mask_kind=self.config.data.mask_kind,
            generator=generator,
            keeps=keeps,
        )

    def loss(
        self, net: nn.Module, samples: list[dict], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Captions dropped, conditioning (and patches) made, timesteps and noise drawn, in that
        order (a resumed run draws the same numbers), then :meth:`batch_loss`."""
        images = torch.stack([s["image"] for s in samples]).float()
        captions = [s.get("caption", "") for s in samples]
        captions = drop_captions(captions, ctx.caption_dropout, ctx.gen_cpu)
        keeps = [s.get("inpaint_keep") for s in samples]
        cond = self.conditioning(images, ctx.gen_cpu, keeps)
        patch = self.config.data.patch_size
        if patch is not None:
            images, cond = random_patches(images, cond, patch, ctx.gen_cpu)
        d = self.config.diffusion
        t = sample_timesteps(
            images.shape[0], self.diffusion.num_timesteps, ctx.gen_dev, ctx.device,
            d.high_noise_fraction, d.high_noise_start,
        )  # fmt: skip
        noise = torch.randn(images.shape, generator=ctx.gen_dev, device=ctx.device)
        return self.batch_loss(net, images, captions, t, noise, cond, ctx=ctx)

    def batch_loss(
        self,
        net: nn.Module,
        images: torch.Tensor,
        captions: list[str],
        t: torch.Tensor,
        noise: torch.Tensor,
        cond: dict[str, torch.Tensor] | None = None,
        *,
        ctx: StepContext,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss (mean over the batch) for explicit inputs through ``net`` (the
        model or its DDP wrapper): clean ``images`` (B, 3, S, S) in [-1, 1], ``captions``
        (already dropped), timesteps ``t`` (B,), ``noise`` like ``images``, and the image
        conditioning ``cond`` (:meth:`conditioning`). Extra metrics: mse, vb."""
        dev = ctx.device
        tokens, mask = tokenize_batch(self.tokenizer, captions, self.model.config.text_ctx)
        tokens, mask = tokens.to(dev), mask.to(dev)
        kwargs: dict[str, Any] = {"tokens": tokens, "mask": mask}
        kwargs.update({k: v.to(dev) for k, v in (cond or {}).items()})
        bow_weight = float(self.config.diffusion.pooled_bow_weight)
        bow: torch.Tensor | None = None
        if bow_weight > 0:
            if net is not self.model:
                # The text would be encoded outside the DDP wrapper's forward, so its gradients
                # would skip the all-reduce and the ranks would drift apart.
                raise ValueError(
                    "diffusion.pooled_bow_weight is not supported with several processes; "
                    "train on one process or set it to 0"
                )
            with ctx.autocast():
                text = self.model.encode_text(tokens, mask)
                bow = pooled_bow_loss(self.model, text, tokens, mask)
            kwargs = {k: v for k, v in kwargs.items() if k not in ("tokens", "mask")}
            kwargs["text"] = text
        with ctx.autocast():
            out = training_losses(
                self.diffusion,
                net,
                images.to(dev),
                t.to(dev),
                model_kwargs=kwargs,
                noise=noise.to(dev),
                mse_weight_max=float(self.config.diffusion.mse_weight_max),
            )
        metrics = {"mse": float(out["mse"].detach().mean()), "vb": float(out["vb"].detach().mean())}
        loss = out["loss"].mean()
        if bow is not None:
            metrics["bow"] = float(bow.detach())
            loss = loss + bow_weight * bow
        return loss, metrics

    def sample_grid(
        self, ema: nn.Module, dataset: Dataset, path: Path, ctx: StepContext
    ) -> Path | None:
        """Sample ``ema`` for ``sample.prompts`` (or fixed dataset items' captions) and save a
        grid: the conditioning input (upsamplers: the low-res image; inpainting: the masked
        image) if any, then a row of samples."""
        s = self.config.sample
        if self._reference is None:
            self._reference = reference_items(self.config.data, dataset, s.count)
        ref = self._reference
        prompts = list(s.prompts) or [r.get("caption", "") for r in ref]
        n = len(prompts)
        images = torch.stack([ref[i % len(ref)]["image"] for i in range(n)]).float()
        cond = self.conditioning(images, torch.Generator().manual_seed(s.seed))
        x = self._sample(ema, prompts, cond, ctx)
        rows = [cond[k] for k in ("low_res", "inpaint_image") if k in cond]
        save_grid([*rows, x[:n].float().cpu()], path)
        return path

    def _sample(
        self, ema: nn.Module, prompts: list[str], cond: dict[str, torch.Tensor], ctx: StepContext
    ) -> torch.Tensor:
        """(rows, 3, S, S) samples of ``ema`` (with classifier-free guidance: the conditional
        rows first, then as many unconditional ones)."""
        s, cfg, dev = self.config.sample, self.model.config, ctx.device
        guided = s.guidance_scale != 1.0
        reps = 2 if guided else 1
        texts = prompts + [""] * len(prompts) if guided else prompts
        tokens, mask = tokenize_batch(self.tokenizer, texts, cfg.text_ctx, dev)
        unet: GlideUNet = ema  # type: ignore[assignment]
        kwargs: dict[str, Any] = {"text": unet.encode_text(tokens, mask)}  # encoded once
        kwargs.update({k: v.repeat(reps, 1, 1, 1).to(dev) for k, v in cond.items()})
        model = ClassifierFreeGuidance(ema, s.guidance_scale) if guided else ema
        denoised_fn = None
        if cfg.inpaint:
            denoised_fn = known_region_replacer(kwargs["inpaint_image"], kwargs["inpaint_mask"])
        with ctx.autocast():
            x = sample(
                create_diffusion(self.diffusion_config, s.steps),
                model,
                (reps * len(prompts), 3, cfg.image_size, cfg.image_size),
                sampler="ddim" if s.steps.startswith("ddim") else s.sampler,
                model_kwargs=kwargs,
                denoised_fn=denoised_fn,
                device=dev,
                generator=torch.Generator(device=dev).manual_seed(s.seed),
            )
        return x

    def export(self, ema: nn.Module, path: Path) -> Path:
        """A glidekit model file (:func:`~glidekit.checkpoints.modelfile.save_unet`) with the
        diffusion config, tokenizer and ``export.sampling`` defaults."""
        e = self.config.export
        return save_unet(
            path,
            ema,  # type: ignore[arg-type]
            self.diffusion_config,
            self.tokenizer,
            dtype=EXPORT_DTYPES[e.dtype],
            sampling=e.sampling,
        )


__all__ = [
    "INPAINT_FROM",
    "TEXT_ENCODER_PARAMS",
    "InitSource",
    "UNetTask",
    "add_inpaint_channels",
    "is_text_encoder_param",
    "load_init_weights",
    "pooled_bow_loss",
    "resolve_init",
    "sample_timesteps",
    "soften_text_attention",
]
