"""The two-stage sampling every pipeline runs: the base model at 64x64, then the upsampler.

:class:`GlidePipeline` holds the models (loaded lazily, once), the device and dtype, and
:meth:`GlidePipeline._generate`, which wires tokenizer, text encoder, guidance, samplers and
the optional source image, known-region mask and SDEdit start together. The public pipelines
(:mod:`glidekit.pipelines`) only check their arguments and prepare inputs.

Random numbers: one ``torch.Generator`` on the pipeline's device, seeded with ``seed``, supplies
in order the base stage's start noise and every step's noise, then the upsampler's — the order
of the official notebooks, so a seed means the same images for the same batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from glidekit.diffusion.samplers import sample_progressive
from glidekit.guidance import ClassifierFreeGuidance, known_region_replacer
from glidekit.pipelines.common import (
    LoadedModel,
    ModelSlot,
    ModelSource,
    PipelineResult,
    check_number,
    check_sampler_options,
    default_source,
    dtype_name,
    get_sampler,
    jsonable,
    resolve_device,
    resolve_dtype,
    respacing_spelling,
    tensor_to_images,
)
from glidekit.tokenizer import tokenize_batch

logger = logging.getLogger(__name__)

#: Called after every sampler step as ``callback(stage, step, total)`` with stage "base" or
#: "upsampler" and step counting from 1; an exception it raises stops the run (cancel).
StepCallback = Callable[[str, int, int], None]

_DEFAULT = object()  # "use the default model" in from_pretrained


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] images to the 8-bit grid, as the upsampler's low-res input is in the notebooks."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def start_index(strength: float, num_steps: int) -> int:
    """The step SDEdit starts from: strength 1 is the last (noisiest) step, small ones step 0."""
    return min(num_steps - 1, max(0, round(strength * num_steps) - 1))


@dataclass
class Stage:
    """What one stage (base or upsampler) is asked to do."""

    steps: str
    sampler: str
    sampler_options: dict[str, Any]
    guidance_scale: float | None = None  # classifier-free guidance; None: plain model
    temperature: float = 1.0  # scale of the start noise
    strength: float | None = None  # SDEdit start from the source; None: from pure noise
    source: torch.Tensor | None = None  # (1, 3, S, S) in [-1, 1]
    keep: torch.Tensor | None = None  # (1, 1, S, S), 1 = keep the source
    low_res: torch.Tensor | None = None  # (B, 3, s, s), upsampler only
    cond_fn: Any = None  # e.g. CLIP guidance, called on the stage's rows


class GlidePipeline:
    """Base class: a base model and an optional upsampler on one device.

    ``base`` / ``upsampler``: anything :class:`~glidekit.pipelines.common.ModelSlot` accepts (a
    released name, a glidekit model file, a released-layout checkpoint file, a ``GlideUNet`` or
    a ``(model, DiffusionConfig, tokenizer)`` tuple); ``upsampler=None`` stops at the base
    resolution. ``device``: "auto" (cuda, then mps, then cpu) or a torch device. ``dtype``:
    "auto" (fp16 on GPUs, fp32 on CPU), "fp32", "fp16" or "bf16". Models load on first use.
    ``low_memory``: hold one model at a time (each stage loads its model and releases the
    other), so the peak is the larger model, not both; every call then loads its models again.
    ``compile``: run the UNets through ``torch.compile`` (the first step of each stage, and of
    each new batch size, compiles: minutes on a CPU; later steps run the compiled code).
    """

    pipeline_name: ClassVar[str] = "glide"
    base_role: ClassVar[str | None] = "base"
    upsampler_role: ClassVar[str] = "upsampler"

    def __init__(
        self,
        base: ModelSource | None = None,
        upsampler: ModelSource | None = None,
        *,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        cache_dir: str | os.PathLike | None = None,
        low_memory: bool = False,
        compile: bool = False,
    ) -> None:
        for name, flag in (("low_memory", low_memory), ("compile", compile)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        self.low_memory = low_memory
        self.compile = compile
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if self.base_role is not None and base is None:
            raise ValueError(f"{self.base_role}: a base model is required")
        self.base_slot = (
            ModelSlot(base, self.base_role, cache_dir)
            if self.base_role and base is not None
            else None
        )
        self.upsampler_slot = (
            ModelSlot(upsampler, self.upsampler_role, cache_dir) if upsampler is not None else None
        )

    @classmethod
    def from_pretrained(
        cls,
        base: ModelSource | None = None,
        upsampler: ModelSource | None = _DEFAULT,  # type: ignore[assignment]
        **kwargs: Any,
    ):
        """A pipeline on named/saved models; no arguments: the package's default models.

        ``base``: released name or path (default: ``glidekit.models.default_base()`` if the
        package ships models, else the released name). ``upsampler``: the same, or None for
        none. Keyword arguments go to the constructor (device, dtype, cache_dir). Nothing is
        loaded until the first call.
        """
        if cls.base_role is not None and base is None:
            base = default_source(cls.base_role)
        if upsampler is _DEFAULT:
            upsampler = default_source(cls.upsampler_role)
        return cls(base, upsampler, **kwargs)

    # ------------------------------------------------------------------ models
    @property
    def base(self) -> LoadedModel:
        if self.base_slot is None:
            raise ValueError(f"{self.pipeline_name}: this pipeline has no base model")
        lm = self._hold(self.base_slot)
        if lm.model.config.super_res:
            raise ValueError(
                f"base: {lm.label} is a super-resolution model ({lm.model.config.kind}); "
                "pass it as the upsampler"
            )
        return lm

    @property
    def upsampler(self) -> LoadedModel | None:
        if self.upsampler_slot is None:
            return None
        lm = self._hold(self.upsampler_slot)
        if not lm.model.config.super_res:
            raise ValueError(
                f"upsampler: {lm.label} is not a super-resolution model ({lm.model.config.kind})"
            )
        return lm

    def _image_sizes(self, upsample: bool) -> list[int]:
        """Output sides of the base and (with ``upsample``) the upsampler, read without loading
        the weights where the sources tell them (low_memory then loads each model once)."""
        slots = [(self.base_slot, "base"), (self.upsampler_slot, "upsampler")][: 1 + upsample]
        sizes = []
        for slot, role in slots:
            size = slot.image_size() if slot is not None else None
            if size is None:
                lm = self.base if role == "base" else self.upsampler
                size = lm.model.config.image_size  # type: ignore[union-attr]
            sizes.append(size)
        return sizes

    def _hold(self, slot: ModelSlot) -> LoadedModel:
        """``slot``'s model, loaded; with ``low_memory`` the other models are released first."""
        if self.low_memory:
            for other in (self.base_slot, self.upsampler_slot):
                if other is not None and other is not slot:
                    other.release()
        return slot.get(self.device, self.dtype, compile=self.compile)

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def _params(self, **params: Any) -> dict[str, Any]:
        from glidekit import __version__

        out = {
            "pipeline": self.pipeline_name,
            "base": self.base_slot.label if self.base_slot else None,
            "upsampler": self.upsampler_slot.label if self.upsampler_slot else None,
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "glidekit_version": __version__,
        }
        out.update(params)
        return jsonable(out)

    # ------------------------------------------------------------------ sampling
    def _stage(
        self,
        lm: LoadedModel,
        prompts: list[str],
        stage: Stage,
        generator: torch.Generator,
        progress: bool,
        arg_prefix: str = "",
        callback: StepCallback | None = None,
        stage_name: str = "base",
    ) -> torch.Tensor:
        """Sample one stage for ``prompts`` (B rows); returns (B, 3, S, S) in [-1, 1]."""
        model = lm.model
        cfg = model.config
        size = cfg.image_size
        b = len(prompts)
        sampler = get_sampler(stage.sampler, f"{arg_prefix}sampler")
        options = check_sampler_options(
            sampler, stage.sampler_options, f"{arg_prefix}sampler_options"
        )
        diffusion = lm.process(stage.steps, f"{arg_prefix}steps")
        n_steps = diffusion.num_timesteps

        guided = stage.guidance_scale is not None
        rows = prompts + [""] * b if guided else list(prompts)
        n = len(rows)
        tokens, mask = tokenize_batch(lm.tokenizer, rows, cfg.text_ctx, self.device)
        with torch.no_grad():
            text = model.encode_text(tokens, mask)
        model.del_cache()
        model_kwargs: dict[str, Any] = {"text": text}
        if stage.low_res is not None:
            model_kwargs["low_res"] = stage.low_res.to(self.device).repeat(n // b, 1, 1, 1)

        source = keep = None
        if stage.source is not None:
            source = stage.source.to(self.device).expand(n, -1, size, size)
        if stage.keep is not None:
            keep = stage.keep.to(self.device).expand(n, -1, size, size)
        if cfg.inpaint and source is not None and keep is not None:
            model_kwargs["inpaint_image"] = source
            model_kwargs["inpaint_mask"] = keep
        denoised_fn = known_region_replacer(source, keep) if keep is not None else None
        model_fn = ClassifierFreeGuidance(model, stage.guidance_scale) if guided else model

        shape = (n, 3, size, size)
        noise = torch.randn(shape, generator=generator, device=self.device)
        if stage.strength is None:
            start = n_steps - 1
            x = noise * stage.temperature
        else:
            if source is None:
                raise ValueError("strength needs a source image")
            start = start_index(stage.strength, n_steps)
            t = torch.full((n,), start, dtype=torch.long, device=self.device)
            x = diffusion.q_sample(source, t, noise=noise * stage.temperature)
        total = start + 1
        final = x
        for k, out in enumerate(
            sample_progressive(
                diffusion,
                model_fn,
                shape,
                sampler=sampler,
                noise=x,
                start_index=start,
                generator=generator,
                clip_denoised=True,
                denoised_fn=denoised_fn,
                cond_fn=stage.cond_fn,
                model_kwargs=model_kwargs,
                progress=progress,
                **options,
            ),
            start=1,
        ):
            final = out.sample
            if callback is not None:
                callback(stage_name, k, total)  # may raise to cancel the run
        result = final[:b].float()
        if keep is not None:  # the known region, exactly (the last step already nearly is)
            result = result * (1 - keep[:b]) + source[:b] * keep[:b]
        return result.clamp(-1, 1)

    def _run(
        self,
        prompts: list[str],
        *,
        seed: int,
        base_stage: Stage | None,
        up_stage: Stage | None,
        progress: bool = False,
        callback: StepCallback | None = None,
        up_prefix: str = "upsample_",
        **params: Any,
    ) -> PipelineResult:
        # Load the models and check both stages' step spellings before sampling anything
        # (low_memory: the upsampler is loaded, and checked, once the base has been released).
        base = self.base if base_stage is not None else None
        up = self.upsampler if up_stage is not None and not self.low_memory else None
        if base is not None and base_stage is not None:
            base.process(base_stage.steps, "steps")
        if up is not None and up_stage is not None:
            up.process(up_stage.steps, f"{up_prefix}steps")
        generator = self._generator(seed)
        low = None
        if base is not None and base_stage is not None:
            low = self._stage(base, prompts, base_stage, generator, progress, callback=callback)
        del base  # low_memory: the slot's reference is the last one
        if up_stage is not None and self.low_memory:
            up = self.upsampler
            if up is not None:
                up.process(up_stage.steps, f"{up_prefix}steps")
        final = low
        if up is not None and up_stage is not None:
            if up_stage.low_res is None:
                if low is None:
                    raise ValueError("the upsampler stage needs a low-resolution input")
                up_stage.low_res = quantize(low)
            final = self._stage(
                up, prompts, up_stage, generator, progress, up_prefix, callback, "upsampler"
            )
        if final is None:
            raise ValueError("nothing to sample: no base stage and no upsampler stage")
        images = tensor_to_images(final)
        return PipelineResult(
            images=images,
            params=self._params(
                prompts=prompts,
                seed=seed,
                size=final.shape[-1],
                **({} if up_stage is not None else {"upsampler": None}),
                **params,
            ),
            samples=final.detach().cpu(),
            low_res=tensor_to_images(low) if (low is not None and up_stage is not None) else None,
        )


def upsample_stage_args(
    upsample_steps: int | str,
    upsample_sampler: str,
    upsample_temp: float,
    upsample_sampler_options: dict[str, Any] | None,
    names: tuple[str, str, str] = ("upsample_steps", "upsample_sampler", "upsample_temp"),
) -> dict[str, Any]:
    """Checked upsampler-stage arguments (also recorded in the params); ``names``: how the
    caller calls steps, sampler and temperature, for the error messages."""
    get_sampler(upsample_sampler, names[1])
    return {
        "upsample_steps": respacing_spelling(upsample_steps, names[0]),
        "upsample_sampler": upsample_sampler,
        "upsample_temp": check_number(upsample_temp, names[2], low=0.0),
        "upsample_sampler_options": dict(upsample_sampler_options or {}),
    }
