"""``glide_text2im.model_creation``: the options dicts and the (model, diffusion) they build.

Options, argument names and meanings are the official ones; the models are glidekit's
(:class:`glidekit.nn.GlideUNet`, same state-dict keys, so the released checkpoints load
strictly) with what only the official API needs (:class:`OfficialUNet`: tokens at every step,
each prompt encoded once; ``tokenizer``; ``del_cache``), the diffusion is
:class:`~glidekit.compat.respace.SpacedDiffusion`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from glidekit.compat.gaussian_diffusion import get_named_beta_schedule
from glidekit.compat.respace import SpacedDiffusion, space_timesteps
from glidekit.compat.tokenizer.bpe import Encoder, get_encoder
from glidekit.diffusion import space_timesteps as _space_timesteps
from glidekit.nn.config import CONFIG_CLASSES, UNetConfig
from glidekit.nn.unet import GlideUNet, TextCondition, init_weights

_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 192,
    "num_res_blocks": 3,
    "channel_mult": "",
    "num_heads": 1,
    "num_head_channels": 64,
    "num_heads_upsample": -1,
    "attention_resolutions": "32,16,8",
    "dropout": 0.1,
    "text_ctx": 128,
    "xf_width": 512,
    "xf_layers": 16,
    "xf_heads": 8,
    "xf_final_ln": True,
    "xf_padding": True,
    "diffusion_steps": 1000,
    "noise_schedule": "squaredcos_cap_v2",
    "timestep_respacing": "",
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "use_fp16": True,
    "cache_text_emb": False,
    "inpaint": False,
    "super_res": False,
}


def model_and_diffusion_defaults() -> dict[str, Any]:
    """The base (64x64) model's options, as officially (``use_fp16`` True: the notebooks set
    it to ``th.cuda.is_available()``)."""
    return dict(_DEFAULTS)


def model_and_diffusion_defaults_upsampler() -> dict[str, Any]:
    """The upsampler's (64 -> 256) options."""
    return {
        **_DEFAULTS,
        "image_size": 256,
        "num_res_blocks": 2,
        "noise_schedule": "linear",
        "super_res": True,
    }


def _ints(value: str | tuple[int, ...] | list[int], name: str) -> tuple[int, ...]:
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"{name}: expected comma-separated integers, got {value!r}") from None
    return tuple(int(v) for v in value)


def config_from_options(options: dict[str, Any]) -> UNetConfig:
    """The glidekit config for an official options dict (the model options; the diffusion's
    are ignored)."""
    kind = {
        (False, False): "text2im",
        (True, False): "inpaint",
        (False, True): "super_res",
        (True, True): "super_res_inpaint",
    }[(bool(options["inpaint"]), bool(options["super_res"]))]
    cls = CONFIG_CLASSES[kind]
    # The official option names are the config's field names (the diffusion's are not fields).
    values = {f.name: options[f.name] for f in dataclasses.fields(cls) if f.name in options}
    for name in ("channel_mult", "attention_resolutions"):
        values[name] = _ints(options[name], name)
    return cls(**values)


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.device == b.device and torch.equal(a, b)


class OfficialUNet(GlideUNet):
    """The UNet as the official notebooks drive it: ``tokens`` and ``mask`` at every step.

    Outside autograd it encodes each distinct (tokens, mask) once and reuses that encoding while
    the same tokens come back, until :meth:`del_cache` (which the notebooks call around each
    sampling loop), :meth:`load_state_dict` or a dtype change; after editing weights in place,
    call :meth:`del_cache`. Same parameters and state-dict keys as :class:`GlideUNet`, so the
    released checkpoints load strictly. ``tokenizer`` is the GPT-2 BPE
    (:func:`~glidekit.compat.tokenizer.bpe.get_encoder`, loaded on first use).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config)
        self._tokenizer: Encoder | None = None
        self._encoded: tuple[torch.Tensor, torch.Tensor | None, TextCondition] | None = None

    @property
    def tokenizer(self) -> Encoder:
        """The GPT-2 :class:`~glidekit.compat.tokenizer.bpe.Encoder` (``encode``,
        ``padded_tokens_and_mask``, ``decode``, ...)."""
        if self._tokenizer is None:
            self._tokenizer = get_encoder()
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Encoder) -> None:
        self._tokenizer = value

    def forward(self, x, timesteps, tokens=None, mask=None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if kwargs.get("text") is None and tokens is not None and not torch.is_grad_enabled():
            kwargs["text"] = self._text_of(tokens, mask)
        return super().forward(x, timesteps, tokens, mask, **kwargs)

    def _text_of(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> TextCondition:
        if self._encoded is not None:
            known_tokens, known_mask, text = self._encoded
            if _same(known_tokens, tokens) and _same(known_mask, mask):
                return text
        text = self.encode_text(tokens, mask)
        self._encoded = (tokens.clone(), None if mask is None else mask.clone(), text)
        return text

    def del_cache(self) -> None:
        """Forget the encoded prompt (the official model's method)."""
        self._encoded = None

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        self.del_cache()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def convert_to_fp16(self, dtype: torch.dtype = torch.float16) -> OfficialUNet:
        self.del_cache()
        return super().convert_to_fp16(dtype)  # type: ignore[return-value]

    def convert_to_fp32(self) -> OfficialUNet:
        self.del_cache()
        return super().convert_to_fp32()  # type: ignore[return-value]


def create_model(
    image_size: int,
    num_channels: int,
    num_res_blocks: int,
    channel_mult: str,
    attention_resolutions: str,
    num_heads: int,
    num_head_channels: int,
    num_heads_upsample: int,
    use_scale_shift_norm: bool,
    dropout: float,
    text_ctx: int,
    xf_width: int,
    xf_layers: int,
    xf_heads: int,
    xf_final_ln: bool,
    xf_padding: bool,
    resblock_updown: bool,
    use_fp16: bool,
    cache_text_emb: bool,
    inpaint: bool,
    super_res: bool,
) -> OfficialUNet:
    """The UNet for these options (text2im, inpaint, super_res or both), freshly initialised;
    with ``use_fp16`` its convolutions and text transformer are held in float16.

    ``channel_mult``: "" (the default for 64, 128 or 256 pixels) or e.g. "1,2,3,4";
    ``attention_resolutions``: e.g. "32,16,8" (pixels). ``cache_text_emb`` is accepted: the
    model always encodes a repeated prompt once outside autograd.
    """
    options = dict(locals())  # the arguments, by their official option names
    model = OfficialUNet(config_from_options(options))
    init_weights(model)
    if use_fp16:
        model.convert_to_fp16()
    return model


def create_gaussian_diffusion(
    steps: int = 1000, noise_schedule: str = "squaredcos_cap_v2", timestep_respacing: Any = ""
) -> SpacedDiffusion:
    """The ``steps``-step ``noise_schedule`` process respaced by ``timestep_respacing`` ("" or
    a list/str of section counts, "ddimN", "fast27"; glidekit also takes "karrasN")."""
    betas = get_named_beta_schedule(noise_schedule, steps)
    if not timestep_respacing:
        timestep_respacing = [steps]
    if isinstance(timestep_respacing, str):
        # glidekit's own spellings (karrasN) need the schedule.
        use = set(_space_timesteps(steps, timestep_respacing, betas))
    else:
        use = space_timesteps(steps, timestep_respacing)
    return SpacedDiffusion(use_timesteps=use, betas=betas)


def create_model_and_diffusion(
    image_size: int,
    num_channels: int,
    num_res_blocks: int,
    channel_mult: str,
    num_heads: int,
    num_head_channels: int,
    num_heads_upsample: int,
    attention_resolutions: str,
    dropout: float,
    text_ctx: int,
    xf_width: int,
    xf_layers: int,
    xf_heads: int,
    xf_final_ln: bool,
    xf_padding: bool,
    diffusion_steps: int,
    noise_schedule: str,
    timestep_respacing: Any,
    use_scale_shift_norm: bool,
    resblock_updown: bool,
    use_fp16: bool,
    cache_text_emb: bool,
    inpaint: bool,
    super_res: bool,
) -> tuple[OfficialUNet, SpacedDiffusion]:
    """(model, diffusion) for an official options dict: ``create_model_and_diffusion(
    **model_and_diffusion_defaults())``. ``model.tokenizer`` is the GPT-2 BPE."""
    model = create_model(
        image_size, num_channels, num_res_blocks, channel_mult, attention_resolutions,
        num_heads, num_head_channels, num_heads_upsample, use_scale_shift_norm, dropout,
        text_ctx, xf_width, xf_layers, xf_heads, xf_final_ln, xf_padding, resblock_updown,
        use_fp16, cache_text_emb, inpaint, super_res,
    )  # fmt: skip
    diffusion = create_gaussian_diffusion(diffusion_steps, noise_schedule, timestep_respacing)
    return model, diffusion


__all__ = [
    "OfficialUNet",
    "config_from_options",
    "create_gaussian_diffusion",
    "create_model",
    "create_model_and_diffusion",
    "model_and_diffusion_defaults",
    "model_and_diffusion_defaults_upsampler",
]
