"""Drop-in entry points of the official ``glide_text2im`` package.

A user of the official notebooks changes only the import lines::

    from glidekit.compat import (
        create_model_and_diffusion, model_and_diffusion_defaults,
        model_and_diffusion_defaults_upsampler, load_checkpoint, create_clip_model,
    )

Options dicts, argument names and meanings are those of the official code; everything runs on
glidekit's models and samplers (so the numbers are the released models' numbers).
"""

from __future__ import annotations

from typing import Any

import torch

from glidekit.diffusion import samplers
from glidekit.diffusion.gaussian import GaussianDiffusion
from glidekit.nn.config import CONFIG_CLASSES, UNetConfig
from glidekit.nn.unet import GlideUNet, create_model
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
    return CONFIG_CLASSES[kind](
        image_size=options["image_size"],
        num_channels=options["num_channels"],
        num_res_blocks=options["num_res_blocks"],
        channel_mult=_ints(options["channel_mult"], "channel_mult"),
        num_heads=options["num_heads"],
        num_head_channels=options["num_head_channels"],
        num_heads_upsample=options["num_heads_upsample"],
        attention_resolutions=_ints(options["attention_resolutions"], "attention_resolutions"),
        dropout=options["dropout"],
        text_ctx=options["text_ctx"],
        xf_width=options["xf_width"],
        xf_layers=options["xf_layers"],
        xf_heads=options["xf_heads"],
        xf_final_ln=options["xf_final_ln"],
        xf_padding=options["xf_padding"],
        use_scale_shift_norm=options["use_scale_shift_norm"],
        resblock_updown=options["resblock_updown"],
    )


class Diffusion(GaussianDiffusion):
    """A respaced diffusion with the official sampling-loop methods."""

    def p_sample(
        self,
        model,
        x,
        t,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
    ) -> dict[str, torch.Tensor]:
        out = samplers.p_sample(
            self,
            model,
            x,
            t,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
            cond_fn=cond_fn,
            model_kwargs=model_kwargs,
        )
        return {"sample": out.sample, "pred_xstart": out.pred_xstart}

    def ddim_sample(
        self,
        model,
        x,
        t,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        eta=0.0,
    ) -> dict[str, torch.Tensor]:
        out = samplers.ddim_sample(
            self,
            model,
            x,
            t,
            eta=eta,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
            cond_fn=cond_fn,
            model_kwargs=model_kwargs,
        )
        return {"sample": out.sample, "pred_xstart": out.pred_xstart}

    def _progressive(self, sampler, model, shape, noise, clip_denoised, denoised_fn, cond_fn,
                     model_kwargs, device, progress, eta=0.0):  # fmt: skip
        if device is None:
            device = (
                next(model.parameters()).device if isinstance(model, torch.nn.Module) else "cpu"
            )
        for out in samplers.sample_progressive(
            self,
            model,
            tuple(shape),
            sampler=sampler,
            noise=noise,
            eta=eta,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
            cond_fn=cond_fn,
            model_kwargs=model_kwargs,
            device=device,
            progress=progress,
        ):
            yield {"sample": out.sample, "pred_xstart": out.pred_xstart}

    def p_sample_loop_progressive(
        self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
        model_kwargs=None, device=None, progress=False,
    ):  # fmt: skip
        yield from self._progressive("ancestral", model, shape, noise, clip_denoised, denoised_fn,
                                     cond_fn, model_kwargs, device, progress)  # fmt: skip

    def p_sample_loop(
        self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
        model_kwargs=None, device=None, progress=False,
    ) -> torch.Tensor:  # fmt: skip
        *_, final = self.p_sample_loop_progressive(model, shape, noise, clip_denoised, denoised_fn,
                                                   cond_fn, model_kwargs, device, progress)  # fmt: skip
        return final["sample"]

    def ddim_sample_loop_progressive(
        self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
        model_kwargs=None, device=None, progress=False, eta=0.0,
    ):  # fmt: skip
        yield from self._progressive("ddim", model, shape, noise, clip_denoised, denoised_fn,
                                     cond_fn, model_kwargs, device, progress, eta)  # fmt: skip

    def ddim_sample_loop(
        self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
        model_kwargs=None, device=None, progress=False, eta=0.0,
    ) -> torch.Tensor:  # fmt: skip
        *_, final = self.ddim_sample_loop_progressive(model, shape, noise, clip_denoised,
                                                      denoised_fn, cond_fn, model_kwargs, device,
                                                      progress, eta)  # fmt: skip
        return final["sample"]


def create_gaussian_diffusion(
    steps: int = 1000, noise_schedule: str = "squaredcos_cap_v2", timestep_respacing: str = ""
) -> Diffusion:
    base = GaussianDiffusion.from_config(noise_schedule, steps, timestep_respacing)
    return Diffusion(base.betas, base.timestep_map)


def create_model_and_diffusion(**options: Any) -> tuple[GlideUNet, Diffusion]:
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
    model = create_model(config_from_options(options))
    model.tokenizer = GPT2Tokenizer(options["text_ctx"])
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
    from glidekit.checkpoints import compat_load_checkpoint

    return compat_load_checkpoint(checkpoint_name, device, cache_dir=cache_dir)


def create_clip_model(
    config_path: str | None = None,
    device: torch.device | str | None = None,
    tokenizer: Any = None,
):
    """The noise-aware CLIP with ``.image_encoder``, ``.text_encoder`` and ``.cond_fn``.

    ``config_path``: a config.yaml (or JSON) with the CLIP options, as the official function
    takes; None gives the released model's.
    """
    from glidekit.clip import CLIPConfig
    from glidekit.clip import create_clip_model as _create

    config = None
    if config_path is not None:
        import yaml

        with open(config_path, encoding="utf-8") as f:
            config = CLIPConfig.from_dict(yaml.safe_load(f))
    return _create(config=config, device=device, tokenizer=tokenizer)


__all__ = [
    "Diffusion",
    "config_from_options",
    "create_clip_model",
    "create_gaussian_diffusion",
    "create_model_and_diffusion",
    "load_checkpoint",
    "model_and_diffusion_defaults",
    "model_and_diffusion_defaults_upsampler",
]
