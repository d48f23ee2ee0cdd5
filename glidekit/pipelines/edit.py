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

from glidekit.pipelines.engine import GlidePipeline, Stage, StepCallback, expand_prompts
from glidekit.pipelines.images import (
    check_mask_coverage,
    image_tensors,
    input_label,
    keep_tensors,
    load_replace_mask,
    load_source,
)
from glidekit.pipelines.options import EditOptions
from glidekit.pipelines.results import PipelineResult


class EditPipeline(GlidePipeline):
    """Image editing by partial noising and denoising (SDEdit) with the text-to-image models.

    >>> pipe = EditPipeline.from_pretrained()
    >>> result = pipe("a watercolor of a lighthouse", "sketch.png", strength=0.7, seed=1)

    Options (:class:`~glidekit.pipelines.options.EditOptions`): those of text to image with
    classifier-free guidance, plus strength (0.6), upsample_strength and fit. Pass inpainting
    models (``from_pretrained("base-inpaint", "upsample-inpaint")``) to edit inside a mask with
    models that also see the kept region.
    """

    pipeline_name = "edit"
    options_class = EditOptions

    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        options: EditOptions | None = None,
        *,
        mask: Any | None = None,
        progress: bool = False,
        callback: StepCallback | None = None,
        **kwargs: Any,
    ) -> PipelineResult:
        """Edit ``image`` towards ``prompt``; ``mask`` (white = edit) limits the change."""
        # 1. check inputs: options, picture and optional mask (before any model is loaded)
        prompts, opts = self.check_inputs(prompt, options, **kwargs)
        square = load_source(image, opts.fit)
        replace = None
        if mask is not None:
            replace = check_mask_coverage(load_replace_mask(image, mask, opts.fit), "mask",
                                          allow_full=True)  # fmt: skip
        upsample = opts.upsample and self.upsampler_slot is not None
        # 2. source (and keep-mask) at each stage's size
        sizes = self.image_sizes(upsample)
        sources = image_tensors(square, sizes)
        keeps = keep_tensors(replace, sizes) if replace is not None else [None, None]
        # 3. both stages start from the source noised to their strength
        base = Stage.of("base", opts, guidance_scale=opts.guidance_scale,
                     strength=opts.strength, source=sources[0],
                     keep=keeps[0])  # fmt: skip
        up = None
        if upsample:
            up = Stage.upsampler(opts, strength=opts.upsample_strength, source=sources[1],
                                 keep=keeps[1])  # fmt: skip
        # 4. sample both stages and decode
        return self.run_cascade(
            expand_prompts(prompts, opts.num_images), opts.replace(upsample=upsample), base, up,
            progress=progress, callback=callback, image=input_label(image),
            mask=input_label(mask), guidance="classifier-free",
        )  # fmt: skip
