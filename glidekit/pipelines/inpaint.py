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

from glidekit.pipelines.engine import PictureInputs, PicturePipeline, Stage
from glidekit.pipelines.options import InpaintOptions


class InpaintPipeline(PicturePipeline):
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

    def stages(self, opts: InpaintOptions, rows: list[str],
               inputs: PictureInputs) -> tuple[Stage, Stage | None, dict[str, Any]]:  # fmt: skip
        """Classifier-free guidance, plus the CLIP's gradient if asked, with the known region
        kept in both stages."""
        cond_fn, extra = None, {"guidance": "classifier-free"}
        if opts.clip_guidance_scale > 0:
            size = self.base.model.config.image_size
            cond_fn = self.clip_slot.cond_fn(self.device, rows, opts.clip_guidance_scale, size)
            extra = {"guidance": "classifier-free+clip", "clip": self.clip_label}
        src, up_src = (inputs.sources + [None])[:2]
        keep, up_keep = (inputs.keeps + [None])[:2]
        base = Stage.of("base", opts, guidance_scale=opts.guidance_scale,
                        guidance_interval=opts.guidance_interval, source=src, keep=keep,
                        cond_fn=cond_fn)  # fmt: skip
        up = Stage.upsampler(opts, source=up_src, keep=up_keep) if opts.upsample else None
        return base, up, extra
