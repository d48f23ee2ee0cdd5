"""Inpainting: replace the masked region of a picture, keeping the rest exactly.

The mask is white (True / 1) where the model should paint and black where the source is kept;
without a mask the image's alpha channel is used (transparent = paint). The inpainting base runs
with classifier-free guidance 5.0 and the known region replaced in every x_0 estimate; the
inpainting upsampler gets the source and mask at its size and does the same.
``clip_guidance_scale`` > 0 adds the noise-aware CLIP's gradient to every base step (CLIP
guidance composed with classifier-free guidance; not in the official notebooks).
"""

from __future__ import annotations

from typing import Any

from glidekit.pipelines.engine import GlidePipeline, Stage, StepCallback, expand_prompts
from glidekit.pipelines.images import (
    check_mask_coverage,
    image_tensors,
    input_label,
    keep_tensors,
    load_replace_mask,
    load_source,
)
from glidekit.pipelines.options import InpaintOptions
from glidekit.pipelines.results import PipelineResult


class InpaintPipeline(GlidePipeline):
    """GLIDE inpainting, as the official inpaint notebook runs it.

    >>> pipe = InpaintPipeline.from_pretrained()     # the package's default inpainting models
    >>> result = pipe("a corgi", "photo.jpg", mask="mask.png", seed=0)

    ``image``: a path, bytes or PIL image of any size and mode; ``mask``: the same (white =
    replace) or None for the image's alpha channel; both must have the same size. Options
    (:class:`~glidekit.pipelines.options.InpaintOptions`): those of text to image without
    ``guidance``, plus clip_guidance_scale (0 = off) and fit ("crop": centre square; "pad":
    grey borders, kept).
    """

    pipeline_name = "inpaint"
    options_class = InpaintOptions
    base_role = "base_inpaint"
    upsampler_role = "upsampler_inpaint"

    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        mask: Any | None = None,
        options: InpaintOptions | None = None,
        *,
        progress: bool = False,
        callback: StepCallback | None = None,
        **kwargs: Any,
    ) -> PipelineResult:
        """Repaint the masked region of ``image`` with ``prompt``."""
        # 1. check inputs: options, picture and mask (before any model is loaded)
        prompts, opts = self.check_inputs(prompt, options, **kwargs)
        square = load_source(image, opts.fit, keep_hidden=mask is None)
        replace = check_mask_coverage(load_replace_mask(image, mask, opts.fit), "mask")
        upsample = opts.upsample and self.upsampler_slot is not None
        # 2. source and keep-mask at each stage's size
        sizes = self.image_sizes(upsample)
        sources, keeps = image_tensors(square, sizes), keep_tensors(replace, sizes)
        rows = expand_prompts(prompts, opts.num_images)
        # 3. the base stage: classifier-free guidance, plus the CLIP's gradient if asked
        cond_fn, extra = None, {}
        if opts.clip_guidance_scale > 0:
            size = self.base.model.config.image_size
            cond_fn = self.clip_slot.cond_fn(self.device, rows, opts.clip_guidance_scale, size)
            extra["clip"] = self.clip_label
        base = Stage.of("base", opts, guidance_scale=opts.guidance_scale,
                     source=sources[0], keep=keeps[0],
                     cond_fn=cond_fn)  # fmt: skip
        up = Stage.upsampler(opts, source=sources[1], keep=keeps[1]) if upsample else None
        # 4. sample both stages and decode
        return self.run_cascade(
            rows, opts.replace(upsample=upsample), base, up, progress=progress,
            callback=callback, image=input_label(image),
            mask=input_label(mask) if mask is not None else "alpha",
            guidance="classifier-free+clip" if cond_fn is not None else "classifier-free",
            **extra,
        )  # fmt: skip
