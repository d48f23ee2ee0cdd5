"""Inpainting: replace the masked region of a picture, keeping the rest exactly.

The mask is white (True / 1) where the model should paint and black where the source is kept;
without a mask the image's alpha channel is used (transparent = paint). The inpainting base runs
at 64x64 with classifier-free guidance 5.0 and the known region replaced in every x_0 estimate;
the inpainting upsampler gets the source and mask at 256x256 and does the same.
``clip_guidance_scale`` > 0 adds the noise-aware CLIP's gradient to every base step (CLIP
guidance composed with classifier-free guidance; not in the official notebooks).
"""

from __future__ import annotations

import os
from typing import Any

from PIL import Image

from glidekit.guidance import check_guidance_scale
from glidekit.pipelines.clip_guided import ClipGuidable
from glidekit.pipelines.common import (
    PipelineResult,
    check_count,
    check_number,
    check_prompts,
    check_seed,
    get_sampler,
    respacing_spelling,
)
from glidekit.pipelines.engine import Stage, StepCallback, upsample_stage_args
from glidekit.pipelines.images import (
    check_fit,
    check_mask_coverage,
    image_tensors,
    keep_tensors,
    load_replace_mask,
    load_source,
)
from glidekit.pipelines.text2image import Text2ImagePipeline, expand_prompts


def input_label(source: Any) -> str | None:
    """How an input image is named in the params."""
    if source is None:
        return None
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Image.Image):
        return f"<PIL image {source.width}x{source.height}>"
    return f"<{type(source).__name__}>"


class InpaintPipeline(ClipGuidable):
    """GLIDE inpainting, as the official inpaint notebook runs it.

    >>> pipe = InpaintPipeline.from_pretrained()     # released base-inpaint + upsample-inpaint
    >>> result = pipe("a corgi", "photo.jpg", mask="mask.png", seed=0)

    ``image``: a path, bytes or PIL image of any size and mode; ``mask``: the same (white =
    replace) or None for the image's alpha channel; both must have the same size. ``fit``:
    "crop" (centre square) or "pad" (grey borders, kept) for non-square pictures. ``clip``
    (see :class:`~glidekit.pipelines.clip_guided.ClipGuidable`) is used only with
    ``clip_guidance_scale`` > 0.
    """

    pipeline_name = "inpaint"
    base_role = "base_inpaint"
    upsampler_role = "upsampler_inpaint"

    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        mask: Any | None = None,
        *,
        num_images: int = 1,
        guidance_scale: float = 5.0,
        clip_guidance_scale: float = 0.0,
        seed: int | None = None,
        steps: int | str = 100,
        sampler: str = "ancestral",
        sampler_options: dict[str, Any] | None = None,
        fit: str = "crop",
        upsample: bool = True,
        upsample_steps: int | str = "fast27",
        upsample_sampler: str = "ddim",
        upsample_temp: float = 0.997,
        upsample_sampler_options: dict[str, Any] | None = None,
        progress: bool = False,
        callback: StepCallback | None = None,
    ) -> PipelineResult:
        """Repaint the masked region; the other arguments are as for
        :class:`~glidekit.pipelines.Text2ImagePipeline`. ``guidance_scale``: classifier-free
        (5.0); ``clip_guidance_scale``: the CLIP gradient's scale, added at every base step
        (0 = off); it needs a CLIP that sees the base model's image size."""
        prompts = check_prompts(prompt)
        num_images = check_count(num_images, "num_images")
        guidance_scale = check_guidance_scale(guidance_scale, "guidance_scale")
        clip_guidance_scale = check_number(clip_guidance_scale, "clip_guidance_scale", low=0.0)
        seed = check_seed(seed)
        steps = respacing_spelling(steps, "steps")
        get_sampler(sampler, "sampler")
        check_fit(fit)
        up = upsample_stage_args(
            upsample_steps, upsample_sampler, upsample_temp, upsample_sampler_options
        )
        upsample = bool(upsample) and self.upsampler_slot is not None
        # Read (and check) the inputs before loading models.
        square = load_source(image, fit, keep_hidden=mask is None)
        replace = check_mask_coverage(load_replace_mask(image, mask, fit), "mask")
        sizes = self._image_sizes(upsample)
        sources = image_tensors(square, sizes)
        keeps = keep_tensors(replace, sizes)
        rows = expand_prompts(prompts, num_images)
        cond_fn = None
        if clip_guidance_scale > 0:
            size = self.base.model.config.image_size
            cond_fn = self.clip_slot.cond_fn(self.device, rows, clip_guidance_scale, size)
        base_stage = Stage(
            steps,
            sampler,
            dict(sampler_options or {}),
            guidance_scale,
            source=sources[0],
            keep=keeps[0],
            cond_fn=cond_fn,
        )
        up_stage = (
            Text2ImagePipeline._up_stage(up, source=sources[1], keep=keeps[1]) if upsample else None
        )
        clip_params = (
            {"clip_guidance_scale": clip_guidance_scale, "clip": self.clip_slot.label}
            if cond_fn is not None
            else {}
        )
        return self._run(
            rows,
            seed=seed,
            base_stage=base_stage,
            up_stage=up_stage,
            progress=progress,
            callback=callback,
            num_images=num_images,
            guidance="classifier-free+clip" if cond_fn is not None else "classifier-free",
            guidance_scale=guidance_scale,
            **clip_params,
            steps=steps,
            sampler=sampler,
            sampler_options=dict(sampler_options or {}),
            image=input_label(image),
            mask=input_label(mask) if mask is not None else "alpha",
            fit=fit,
            upsampled=upsample,
            **(up if upsample else {}),
        )
