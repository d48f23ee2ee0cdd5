"""Drop-in entry points of the official ``glide_text2im`` package.

A user of the official notebooks changes only the import lines::

    from glidekit.compat import (
        create_model_and_diffusion, model_and_diffusion_defaults,
        model_and_diffusion_defaults_upsampler, load_checkpoint, create_clip_model,
    )

Options dicts, argument names and meanings are those of the official code; everything runs on
glidekit's models and samplers (so the numbers are the released models' numbers). What only the
official API needs lives here: the model that takes tokens at every step and encodes each
prompt once (:class:`OfficialUNet`), the CLIP with a ``cond_fn`` method (:class:`OfficialCLIP`)
and the diffusion with the official loop methods (:class:`Diffusion`).

Layer: a face beside ``glidekit.web`` and ``glidekit.train``; nothing inside glidekit imports it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from functools import partialmethod
from typing import Any

import torch
import yaml

from glidekit.checkpoints import compat_load_checkpoint
from glidekit.clip import CLIPConfig, NoisedCLIP
from glidekit.diffusion import (
    SAMPLERS,
    GaussianDiffusion,
    SamplingRun,
    sample_progressive,
    take_step,
)
from glidekit.guidance import ClipGuidance, clip_cond_fn
from glidekit.nn.config import CONFIG_CLASSES, UNetConfig
from glidekit.nn.unet import GlideUNet, TextCondition, init_weights
from glidekit.tokenizer import GPT2Tokenizer

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
    "use_fp16": False,
    "cache_text_emb": False,
    "inpaint": False,
    "super_res": False,
}


def model_and_diffusion_defaults() -> dict[str, Any]:
    """The base (64x64) model's options, as the official function returns them."""
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
    """The glidekit config for an official options dict."""
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
    released checkpoints load strictly. ``tokenizer`` is the GPT-2 BPE.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config)
        self.tokenizer = GPT2Tokenizer(config.text_ctx)
        self._encoded: tuple[torch.Tensor, torch.Tensor | None, TextCondition] | None = None

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


class Diffusion(GaussianDiffusion):
    """A respaced diffusion with the official sampling methods, each returning what the
    official one does (a step: ``{"sample", "pred_xstart"}``; a loop: the final sample)."""

    def _step(self, sampler, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None,
              model_kwargs=None, eta=0.0) -> dict[str, torch.Tensor]:  # fmt: skip
        spec = SAMPLERS[sampler]
        run = SamplingRun(self, model, clip_denoised, denoised_fn, cond_fn, model_kwargs,
                          options=spec.pick({"eta": eta}))  # fmt: skip
        out = take_step(spec, run, x, t)
        return {"sample": out.sample, "pred_xstart": out.pred_xstart}

    def _progressive(self, sampler, model, shape, noise=None, clip_denoised=True,
                     denoised_fn=None, cond_fn=None, model_kwargs=None, device=None,
                     progress=False, eta=0.0) -> Iterator[dict[str, torch.Tensor]]:  # fmt: skip
        if device is None:
            device = (
                next(model.parameters()).device if isinstance(model, torch.nn.Module) else "cpu"
            )
        for out in sample_progressive(
            self, model, tuple(shape), sampler=sampler, noise=noise, eta=eta,
            clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
            model_kwargs=model_kwargs, device=device, progress=progress,
        ):  # fmt: skip
            yield {"sample": out.sample, "pred_xstart": out.pred_xstart}

    def _loop(self, sampler: str, *args: Any, **kwargs: Any) -> torch.Tensor:
        *_, final = self._progressive(sampler, *args, **kwargs)
        return final["sample"]

    # The official methods: the ancestral ones take no eta; their arguments come in one order.
    p_sample = partialmethod(_step, "ancestral")
    ddim_sample = partialmethod(_step, "ddim")
    p_sample_loop_progressive = partialmethod(_progressive, "ancestral")
    ddim_sample_loop_progressive = partialmethod(_progressive, "ddim")
    p_sample_loop = partialmethod(_loop, "ancestral")
    ddim_sample_loop = partialmethod(_loop, "ddim")


def create_gaussian_diffusion(
    steps: int = 1000, noise_schedule: str = "squaredcos_cap_v2", timestep_respacing: str = ""
) -> Diffusion:
    """The official function: the ``steps``-step process respaced by ``timestep_respacing``."""
    return Diffusion.from_config(noise_schedule, steps, timestep_respacing)  # type: ignore[return-value]


def create_model_and_diffusion(**options: Any) -> tuple[OfficialUNet, Diffusion]:
    """(model, diffusion) for an official options dict; ``model.tokenizer`` is the GPT-2 BPE."""
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise TypeError(f"create_model_and_diffusion: unknown options {unknown}")
    missing = sorted(set(_DEFAULTS) - set(options))
    if missing:
        raise TypeError(
            f"create_model_and_diffusion: missing options {missing}; "
            "start from model_and_diffusion_defaults()"
        )
    model = OfficialUNet(config_from_options(options))
    init_weights(model)
    if options["use_fp16"]:
        model.convert_to_fp16()
    diffusion = create_gaussian_diffusion(
        options["diffusion_steps"], options["noise_schedule"], options["timestep_respacing"]
    )
    return model, diffusion


def load_checkpoint(
    checkpoint_name: str, device: torch.device | str = "cpu", cache_dir: str | None = None
) -> dict[str, torch.Tensor]:
    """The released checkpoint ``checkpoint_name`` as a state dict on ``device`` (safe loading)."""
    return compat_load_checkpoint(checkpoint_name, device, cache_dir=cache_dir)


class OfficialCLIP(NoisedCLIP):
    """The noise-aware CLIP with the official ``cond_fn(prompts, grad_scale)`` method."""

    def cond_fn(self, prompts: Sequence[str] | torch.Tensor, grad_scale: float) -> ClipGuidance:
        """CLIP guidance towards ``prompts`` (:func:`glidekit.guidance.clip_cond_fn`)."""
        return clip_cond_fn(self, prompts, grad_scale)


def create_clip_model(
    config_path: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    tokenizer: Any = None,
) -> OfficialCLIP:
    """The noise-aware CLIP with ``.image_encoder``, ``.text_encoder`` and ``.cond_fn``.

    ``config_path``: a config.yaml (or JSON) with the CLIP options, as the official function
    takes; None gives the released model's.
    """
    config = None
    if config_path is not None:
        with open(config_path, encoding="utf-8") as f:
            config = CLIPConfig.from_dict(yaml.safe_load(f))
    return OfficialCLIP(config, device=device, tokenizer=tokenizer).eval()


__all__ = [
    "Diffusion",
    "OfficialCLIP",
    "OfficialUNet",
    "config_from_options",
    "create_clip_model",
    "create_gaussian_diffusion",
    "create_model_and_diffusion",
    "load_checkpoint",
    "model_and_diffusion_defaults",
    "model_and_diffusion_defaults_upsampler",
]
