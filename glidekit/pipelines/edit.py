"""SDEdit-style editing (Meng et al. 2021): noise a picture to ``strength``, denoise with a prompt.

``strength`` in (0, 1] picks the step the reverse process starts from: small values stay close
to the input (a light touch-up), 1 starts from (almost) pure noise. A rough sketch at 0.5-0.8
turns into a picture of the prompt with the sketch's layout and colours. With a ``mask`` (white
= edit) only that region changes; the rest is kept exactly (the known-region replacement of
inpainting, with any base model; an inpainting model also gets the source as input).

The upsampler refines the edited picture starting from the source at its size noised to
``upsample_strength`` (default: the same strength), so details survive light edits.
"""

from __future__ import annotations

from typing import Any

from glidekit.pipelines.engine import PictureInputs, PicturePipeline, Stage
from glidekit.pipelines.options import EditOptions


class EditPipeline(PicturePipeline):
    """Image editing by partial noising and denoising (SDEdit) with the text-to-image models.

    >>> pipe = EditPipeline.from_pretrained()
    >>> result = pipe("a watercolor of a lighthouse", "sketch.png", strength=0.7, seed=1)

    ``mask`` (optional; white = edit) limits the change. Options
    (:class:`~glidekit.pipelines.options.EditOptions`): those of text to image with
    classifier-free guidance, plus strength (0.6), upsample_strength and fit. Pass inpainting
    models (``from_pretrained("base-inpaint", "upsample-inpaint")``) to edit inside a mask with
    models that also see the kept region.
    """

    pipeline_name = "edit"
    options_class = EditOptions
    mask_required = False

    def stages(self, opts: EditOptions, rows: list[str],
               inputs: PictureInputs) -> tuple[Stage, Stage | None, dict[str, Any]]:  # fmt: skip
        """Both stages start from the source noised to their strength."""
        src, up_src = (inputs.sources + [None])[:2]
        keep, up_keep = (inputs.keeps + [None])[:2]
        base = Stage.of("base", opts, guidance_scale=opts.guidance_scale,
                        guidance_interval=opts.guidance_interval, strength=opts.strength,
                        source=src, keep=keep)  # fmt: skip
        up = None
        if opts.upsample:
            up = Stage.upsampler(opts, strength=opts.upsample_strength, source=up_src,
                                 keep=up_keep)  # fmt: skip
        return base, up, {"guidance": "classifier-free"}
