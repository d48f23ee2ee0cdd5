"""The two-stage sampling every pipeline runs: the base model, then the upsampler.

:class:`GlidePipeline` holds the model slots (loaded lazily, once), the device and dtype, and
runs stages: :meth:`GlidePipeline.sample_stage` wires tokenizer, text encoder, guidance,
sampler and the optional source image, known-region mask and SDEdit start together for one
stage; :meth:`GlidePipeline.run_cascade` runs the base stage then the upsampler stage and makes
the :class:`~glidekit.pipelines.results.PipelineResult`. The public pipelines only check their
inputs (:meth:`GlidePipeline.check_inputs`) and prepare the stages.

Random numbers: one ``torch.Generator`` on the pipeline's device, seeded with the run's seed,
supplies in order the base stage's start noise and every step's noise, then the upsampler's:
the order of the official notebooks, so a seed means the same images for the same batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from glidekit import __version__
from glidekit.diffusion import (
    GaussianDiffusion,
    RowGenerators,
    create_diffusion,
    randn_like_rows,
    sample_progressive,
)
from glidekit.errors import OptionError, OptionTypeError
from glidekit.guidance import ClassifierFreeGuidance, known_region_replacer
from glidekit.pipelines.devices import dtype_name, resolve_device, resolve_dtype
from glidekit.pipelines.images import (
    check_mask_coverage,
    image_tensors,
    input_label,
    keep_tensors,
    load_replace_mask,
    load_source,
)
from glidekit.pipelines.options import CascadeOptions, RunOptions, check_prompts
from glidekit.pipelines.presets import Preset, get_preset
from glidekit.pipelines.results import PipelineResult, jsonable, tensor_to_images
from glidekit.pipelines.slots import ClipSlot, LoadedModel, ModelSlot
from glidekit.pipelines.sources import ModelSource, default_source
from glidekit.tokenizer import tokenize_batch, unknown_words

logger = logging.getLogger(__name__)

#: Called after every sampler step as ``callback(stage, step, total)`` with stage "base" or
#: "upsampler" and step counting from 1; an exception it raises stops the run (cancel).
StepCallback = Callable[[str, int, int], None]

_DEFAULT = object()  # "use the default model" in from_pretrained


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] images to the 8-bit grid, as the upsampler's low-res input is in the
    notebooks."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def start_index(strength: float, num_steps: int) -> int:
    """The step SDEdit starts from: strength 1 is the last (noisiest) step, small ones step 0."""
    return min(num_steps - 1, max(0, round(strength * num_steps) - 1))


def stage_diffusion(lm: LoadedModel, stage: Stage) -> GaussianDiffusion:
    """The diffusion ``lm`` was trained with, respaced to the stage's steps (a spelling the
    model's schedule cannot take, e.g. karras25 on some schedules, names the stage's option)."""
    try:
        return create_diffusion(lm.diffusion, stage.steps)
    except ValueError as exc:
        raise OptionError(f"{stage.arg_prefix}steps", str(exc)) from None


def expand_prompts(prompts: list[str], num_images: int) -> list[str]:
    """The batch rows: each prompt ``num_images`` times, prompt-major."""
    return [p for p in prompts for _ in range(num_images)]


@dataclass
class Stage:
    """What one stage (base or upsampler) is asked to do."""

    name: str  # "base" or "upsampler"; also the prefix of its options in errors
    steps: str
    sampler: str
    sampler_options: dict[str, Any]
    guidance_scale: float | None = None  # classifier-free guidance; None: plain model
    guidance_interval: tuple[float, float] | None = None  # guided t/T range; None: every step
    temperature: float = 1.0  # scale of the start noise
    strength: float | None = None  # SDEdit start from the source; None: from pure noise
    source: torch.Tensor | None = None  # (1, 3, S, S) in [-1, 1]
    keep: torch.Tensor | None = None  # (1, 1, S, S), 1 = keep the source
    low_res: torch.Tensor | None = None  # (B, 3, s, s) in [-1, 1], upsampler only
    cond_fn: Any = None  # e.g. CLIP guidance, called on the stage's rows
    arg_prefix: str = field(default="")  # "upsample_" for the upsampler's options in errors

    @classmethod
    def of(cls, name: str, opts: RunOptions, **kwargs: Any) -> Stage:
        """The stage ``name`` sampled with the run's own steps and sampler (the base stage of
        a cascade, or the only stage of an upsampling run)."""
        return cls(name, opts.steps, opts.sampler, opts.sampler_options, **kwargs)

    @classmethod
    def upsampler(cls, opts: CascadeOptions, **kwargs: Any) -> Stage:
        """The upsampler stage of a cascade run."""
        return cls("upsampler", opts.upsample_steps, opts.upsample_sampler,
                   opts.upsample_sampler_options, temperature=opts.upsample_temp,
                   arg_prefix="upsample_", **kwargs)  # fmt: skip


class GlidePipeline:
    """Base class: a base model, an optional upsampler and an optional CLIP on one device.

    ``base`` / ``upsampler``: anything :class:`~glidekit.pipelines.slots.ModelSlot` accepts;
    ``upsampler=None`` stops at the base resolution. ``clip``: anything
    :class:`~glidekit.pipelines.slots.ClipSlot` accepts, used only by CLIP guidance (default:
    the package's CLIP beside the embedded models, else the released towers). ``device``:
    "auto" (cuda, then mps, then cpu) or a torch device. ``preset``: "official" (GLIDE's
    sampling, the default) or "fast" (:mod:`glidekit.pipelines.presets`): it chooses the dtype
    and ``low_memory`` left at None/"auto" and a layer of run options under the ones given.
    ``dtype``: "auto" (the preset's: for "official" fp16 on GPUs, fp32 on CPU), "fp32", "fp16"
    or "bf16". Models load on first use. ``low_memory``: hold one model at a time (the peak is
    the larger model, not both; every call then loads its models again); None: the preset's.
    ``compile``: run the UNets through ``torch.compile`` (the first step compiles: minutes on a
    CPU).
    """

    pipeline_name: ClassVar[str] = "glide"
    options_class: ClassVar[type[RunOptions]] = RunOptions
    base_role: ClassVar[str | None] = "base"
    upsampler_role: ClassVar[str] = "upsampler"

    def __init__(
        self,
        base: ModelSource | None = None,
        upsampler: ModelSource | None = None,
        *,
        clip: Any = None,
        clip_tokenizer: str | os.PathLike | None = None,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        cache_dir: str | os.PathLike | None = None,
        low_memory: bool | None = None,
        compile: bool = False,
        preset: str | Preset | None = None,
    ) -> None:
        if not isinstance(compile, bool):
            raise OptionTypeError("compile", f"expected True or False, got {compile!r}")
        if low_memory is not None and not isinstance(low_memory, bool):
            raise OptionTypeError("low_memory", f"expected True, False or None, got {low_memory!r}")
        self.preset = get_preset(preset)
        self.compile = compile
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device, auto=self.preset.dtype(self.device))
        self.low_memory = self.preset.low_memory(self.device) if low_memory is None else low_memory
        if self.base_role is not None and base is None:
            raise OptionError(self.base_role, "a base model is required")
        self.base_slot = ModelSlot(base, self.base_role, cache_dir) if self.base_role else None
        self.upsampler_slot = (
            ModelSlot(upsampler, self.upsampler_role, cache_dir) if upsampler is not None else None
        )
        self._clip_args = (clip, clip_tokenizer, cache_dir)
        self._clip_slot: ClipSlot | None = None

    @classmethod
    def from_pretrained(cls, base: ModelSource | None = None,
                        upsampler: ModelSource | None = _DEFAULT,  # type: ignore[assignment]
                        **kwargs: Any):  # fmt: skip
        """A pipeline on named/saved models; no arguments: the package's default models
        (:func:`~glidekit.pipelines.sources.default_source`). ``upsampler=None``: none.
        Keyword arguments go to the constructor. Nothing is loaded until the first call."""
        if cls.base_role is not None and base is None:
            base = default_source(cls.base_role)
        if upsampler is _DEFAULT:
            upsampler = default_source(cls.upsampler_role)
        return cls(base, upsampler, **kwargs)

    # ------------------------------------------------------------------ models
    @property
    def base(self) -> LoadedModel:
        if self.base_slot is None:
            raise OptionError("base", f"the {self.pipeline_name} pipeline has no base model")
        lm = self._hold(self.base_slot)
        if lm.model.config.super_res:
            raise OptionError(self.base_slot.role, f"{lm.label} is a super-resolution model "
                              f"({lm.model.config.kind}); pass it as the upsampler")  # fmt: skip
        return lm

    @property
    def upsampler(self) -> LoadedModel | None:
        if self.upsampler_slot is None:
            return None
        lm = self._hold(self.upsampler_slot)
        if not lm.model.config.super_res:
            raise OptionError(self.upsampler_slot.role, f"{lm.label} is not a super-resolution "
                              f"model ({lm.model.config.kind})")  # fmt: skip
        return lm

    @property
    def clip_slot(self) -> ClipSlot:
        """The CLIP for CLIP guidance (its source is decided on first use)."""
        if self._clip_slot is None:
            clip, tokenizer, cache_dir = self._clip_args
            source = default_source("clip") if clip is None else clip
            self._clip_slot = ClipSlot(source, tokenizer, cache_dir)
        return self._clip_slot

    @property
    def clip_label(self) -> str:
        return self.clip_slot.label

    @property
    def clip(self):
        """The noise-aware CLIP, on the pipeline's device (float32)."""
        return self.clip_slot.get(self.device)

    def _hold(self, slot: ModelSlot) -> LoadedModel:
        """``slot``'s model, loaded; with ``low_memory`` the other models are released first."""
        if self.low_memory:
            for other in (self.base_slot, self.upsampler_slot):
                if other is not None and other is not slot:
                    other.release()
        return slot.get(self.device, self.dtype, compile=self.compile)

    def image_sizes(self, upsample: bool) -> list[int]:
        """Output sides of the base and (with ``upsample``) the upsampler, read without loading
        the weights where the sources tell them (low_memory then loads each model once)."""
        sizes = []
        for slot, role in [(self.base_slot, "base"), (self.upsampler_slot, "upsampler")][
            : 1 + upsample
        ]:
            size = slot.image_size() if slot is not None else None
            if size is None:
                lm = self.base if role == "base" else self.upsampler
                size = lm.model.config.image_size  # type: ignore[union-attr]
            sizes.append(size)
        return sizes

    # ------------------------------------------------------------------ options
    def model_defaults(self) -> dict[str, Any]:
        """The sampling defaults of the model that decides this pipeline's (the base's; the
        upsampler's for a pipeline without a base)."""
        slot = self.base_slot or self.upsampler_slot
        return slot.defaults() if slot is not None else {}

    def build_options(self, given: Any = ()) -> Any:
        """This pipeline's options from ``given`` (keyword arguments), over its preset's, over
        the model file's own defaults (:meth:`RunOptions.build`)."""
        return self.options_class.build(
            given, self.model_defaults(), self.preset.options_for(self.options_class)
        )

    def check_inputs(self, prompt: Any, options: RunOptions | None = None,
                     **kwargs: Any) -> tuple[list[str], Any]:  # fmt: skip
        """The prompts and this run's options, checked, before any model is loaded.

        ``options``: a ready options object (``kwargs`` then change it); else the options are
        built from ``kwargs`` over the preset's and the model's own (:meth:`build_options`)."""
        prompts = check_prompts(prompt)
        if options is None:
            options = self.build_options(kwargs)
        else:
            if not isinstance(options, self.options_class):
                raise OptionError("options", f"expected {self.options_class.__name__}, got "
                                  f"{type(options).__name__}")  # fmt: skip
            options = options.replace(**kwargs) if kwargs else options
        if isinstance(options.seed, list) and len(options.seed) != len(prompts):
            raise OptionError("seed", f"{len(options.seed)} seeds for {len(prompts)} prompts; "
                              "pass one seed, or one per prompt")  # fmt: skip
        return prompts, options

    def params(self, opts: RunOptions, **extra: Any) -> dict[str, Any]:
        """Everything that made a result: models, device, options and ``extra``."""
        out = {
            "pipeline": self.pipeline_name,
            "base": self.base_slot.label if self.base_slot else None,
            "upsampler": self.upsampler_slot.label if self.upsampler_slot else None,
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "preset": self.preset.name,
            "glidekit_version": __version__,
        }
        out.update(opts.to_params())
        out.update(extra)
        if self.base_slot is not None and not extra.get("upsampled", True):
            out["upsampler"] = None  # the base's images: no upsampler options either
            out = {k: v for k, v in out.items() if not k.startswith("upsample_")}
        return jsonable(out)

    # ------------------------------------------------------------------ sampling
    def sample_stage(self, lm: LoadedModel, prompts: list[str], stage: Stage,
                     generator: torch.Generator | list[torch.Generator], progress: bool = False,
                     callback: StepCallback | None = None) -> torch.Tensor:  # fmt: skip
        """Sample one stage for ``prompts`` (B rows); returns (B, 3, S, S) in [-1, 1].

        ``generator``: one for the batch, or one per item (B divisible by their number; row r
        belongs to item r // (B / items)): each item's noise then comes from its own."""
        size, b = lm.model.config.image_size, len(prompts)
        diffusion = stage_diffusion(lm, stage)
        guided = stage.guidance_scale is not None
        n = 2 * b if guided else b
        kwargs = self._model_kwargs(lm, prompts + [""] * b if guided else prompts, stage, n)
        source, keep = kwargs.pop("_source"), kwargs.pop("_keep")
        if isinstance(generator, list):  # per item: its conditional and unconditional rows
            per = b // len(generator)
            generator = RowGenerators(generator, [r // per for r in range(b)] * (n // b))
        model_fn = lm.model
        if guided:
            model_fn = ClassifierFreeGuidance(lm.model, stage.guidance_scale,
                                              interval=stage.guidance_interval,
                                              num_timesteps=lm.diffusion.steps)  # fmt: skip

        shape = (n, 3, size, size)
        noise = randn_like_rows(shape, generator, device=self.device)
        start = diffusion.num_timesteps - 1
        x = noise * stage.temperature
        if stage.strength is not None:  # SDEdit: the source, noised to the start step
            start = start_index(stage.strength, diffusion.num_timesteps)
            t = torch.full((n,), start, dtype=torch.long, device=self.device)
            x = diffusion.q_sample(source, t, noise=noise * stage.temperature)
        steps = sample_progressive(
            diffusion, model_fn, shape, sampler=stage.sampler, noise=x, start_index=start,
            generator=generator, clip_denoised=True, cond_fn=stage.cond_fn, model_kwargs=kwargs,
            denoised_fn=known_region_replacer(source, keep) if keep is not None else None,
            progress=progress, **stage.sampler_options,
        )  # fmt: skip
        final = x
        for k, out in enumerate(steps, start=1):
            final = out.sample
            if callback is not None:
                callback(stage.name, k, start + 1)  # may raise to cancel the run
        result = final[:b].float()
        if keep is not None:  # the known region, exactly (the last step already nearly is)
            result = result * (1 - keep[:b]) + source[:b] * keep[:b]
        return result.clamp(-1, 1)

    def _model_kwargs(self, lm: LoadedModel, rows: list[str], stage: Stage,
                      n: int) -> dict[str, Any]:  # fmt: skip
        """The model's inputs for ``rows``: the encoded text (computed once per stage), the
        low-res input, the inpainting source and mask; plus ``_source``/``_keep`` for the
        known-region replacement."""
        cfg, size = lm.model.config, lm.model.config.image_size
        tokens, mask = tokenize_batch(lm.tokenizer, rows, cfg.text_ctx, self.device)
        with torch.no_grad():
            kwargs: dict[str, Any] = {"text": lm.model.encode_text(tokens, mask)}
        if stage.low_res is not None:
            b = stage.low_res.shape[0]
            kwargs["low_res"] = stage.low_res.to(self.device).repeat(n // b, 1, 1, 1)
        source, keep = (None if t is None else t.to(self.device).expand(n, -1, size, size)
                        for t in (stage.source, stage.keep))  # fmt: skip
        if cfg.inpaint and source is not None and keep is not None:
            kwargs["inpaint_image"], kwargs["inpaint_mask"] = source, keep
        kwargs["_source"], kwargs["_keep"] = source, keep
        return kwargs

    def run_cascade(self, rows: list[str], opts: RunOptions, base_stage: Stage | None,
                    up_stage: Stage | None, *, progress: bool = False,
                    callback: StepCallback | None = None, **extra: Any) -> PipelineResult:  # fmt: skip
        """Sample the base stage, then the upsampler stage on its (8-bit rounded) output.

        Both stages' models are loaded and their step spellings checked before anything is
        sampled (with ``low_memory`` the upsampler is loaded once the base is released)."""
        base = self.base if base_stage is not None else None
        if base is not None and base_stage is not None:
            stage_diffusion(base, base_stage)
            unknown = unknown_words(base.tokenizer, list(dict.fromkeys(rows)))
            if unknown:  # a closed-vocabulary model (the embedded ones) ignores them
                logger.warning("the base model does not know the words %s and ignores them "
                               "(its vocabulary: `glidekit info`)",
                               ", ".join(repr(w) for w in unknown))  # fmt: skip
        up = self.upsampler if up_stage is not None and not self.low_memory else None
        if up is not None and up_stage is not None:
            stage_diffusion(up, up_stage)
        generator: Any  # one generator for the batch, or one per item (a list of seeds)
        if isinstance(opts.seed, list):
            generator = [torch.Generator(device=self.device).manual_seed(s) for s in opts.seed]
        else:
            generator = torch.Generator(device=self.device).manual_seed(opts.seed)
        low = None
        if base is not None and base_stage is not None:
            low = self.sample_stage(base, rows, base_stage, generator, progress, callback)
        del base  # low_memory: the slot's reference is the last one
        final = low
        if up_stage is not None:
            up = self.upsampler if self.low_memory else up
            if up is None:
                raise OptionError("upsampler", "this pipeline has no upsampler")
            if up_stage.low_res is None:
                up_stage.low_res = quantize(low)  # type: ignore[arg-type]
            final = self.sample_stage(up, rows, up_stage, generator, progress, callback)
        if final is None:
            raise OptionError("upsample", "nothing to sample: no base and no upsampler stage")
        params = self.params(opts, prompts=rows, size=final.shape[-1],
                             upsampled=up_stage is not None and base_stage is not None,
                             **extra)  # fmt: skip
        return PipelineResult(
            images=tensor_to_images(final),
            params=params,
            samples=final.detach().cpu(),
            low_res=tensor_to_images(low) if (low is not None and up_stage is not None) else None,
        )


@dataclass
class PictureInputs:
    """A run's input picture (and mask) at each stage's size: ``sources[i]`` (1, 3, S, S) in
    [-1, 1], ``keeps[i]`` (1, 1, S, S), 1 = keep the source (None: no mask)."""

    sources: list[torch.Tensor]
    keeps: list[torch.Tensor | None]


class PicturePipeline(GlidePipeline):
    """A cascade that starts from the user's picture (inpainting, editing): one ``__call__``;
    each pipeline says what its stages are (:meth:`stages`) and whether a mask is required."""

    mask_required: ClassVar[bool] = True

    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        mask: Any | None = None,
        options: RunOptions | None = None,
        *,
        progress: bool = False,
        callback: StepCallback | None = None,
        **kwargs: Any,
    ) -> PipelineResult:
        """Run on ``image`` (a path, bytes, PIL image or (3, H, W) tensor in [-1, 1]) with
        ``mask`` (the same kinds; white = replace; inpainting without a mask: the image's
        alpha channel); the options are the pipeline's (keyword arguments or ``options=``)."""
        # 1. check inputs: options, picture and mask (before any model is loaded)
        prompts, opts = self.check_inputs(prompt, options, **kwargs)
        square = load_source(image, opts.fit, keep_hidden=mask is None and self.mask_required)
        replace = None
        if mask is not None or self.mask_required:
            replace = check_mask_coverage(load_replace_mask(image, mask, opts.fit), "mask",
                                          allow_full=not self.mask_required)  # fmt: skip
        opts = opts.replace(upsample=opts.upsample and self.upsampler_slot is not None)
        # 2. source and keep-mask at each stage's size
        sizes = self.image_sizes(opts.upsample)
        keeps = keep_tensors(replace, sizes) if replace is not None else [None, None]
        inputs = PictureInputs(image_tensors(square, sizes), keeps)
        rows = expand_prompts(prompts, opts.num_images)
        # 3. the stages (each pipeline's own)
        base, up, extra = self.stages(opts, rows, inputs)
        # 4. sample both stages and decode
        mask_label = input_label(mask) if mask is not None or not self.mask_required else "alpha"
        return self.run_cascade(rows, opts, base, up, progress=progress, callback=callback,
                                image=input_label(image), mask=mask_label, **extra)  # fmt: skip

    def stages(self, opts: Any, rows: list[str],
               inputs: PictureInputs) -> tuple[Stage, Stage | None, dict[str, Any]]:  # fmt: skip
        """(base stage, upsampler stage or None, extra params) of this run."""
        raise NotImplementedError
