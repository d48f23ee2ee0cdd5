"""SDEdit-style editing (Meng et al. 2021): noise a picture to ``strength``, denoise with a prompt.

``strength`` in (0, 1] picks the step the reverse process starts from: small values stay close
to the input (a light touch-up), 1 starts from (almost) pure noise. A rough sketch at 0.5-0.8
turns into a picture of the prompt with the sketch's layout and colours. With a ``mask`` (white
= edit) only that region changes; the rest is kept exactly (the known-region replacement of
inpainting, with any base model; an inpainting model also gets the source as input).

The upsampler refines the edited 64x64 picture starting from the source at 256x256 noised to
``upsample_strength`` (default: the same strength), so details survive light edits.
"""

from __future__ import annotations

from typing import Any

from glidekit.guidance import check_guidance_scale
from glidekit.pipelines.common import (
    PipelineResult,
    check_count,
    check_prompts,
    check_seed,
    check_strength,
    get_sampler,
    respacing_spelling,
)
from glidekit.pipelines.engine import GlidePipeline, Stage, StepCallback, upsample_stage_args
from glidekit.pipelines.images import (
    check_fit,
    check_mask_coverage,
    image_tensors,
    keep_tensors,
    load_replace_mask,
    load_source,
)
from glidekit.pipelines.inpaint import input_label
from glidekit.pipelines.text2image import Text2ImagePipeline, expand_prompts


class EditPipeline(GlidePipeline):
    """Image editing by partial noising and denoising (SDEdit) with the text-to-image models.

    >>> pipe = EditPipeline.from_pretrained()               # released base + upsample
    >>> result = pipe("a watercolor of a lighthouse", "sketch.png", strength=0.7, seed=1)

    Pass inpainting models (``from_pretrained("base-inpaint", "upsample-inpaint")``) to edit
    inside a mask with models that also see the kept region.
    """

    pipeline_name = "edit"

    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        *,
        strength: float = 0.6,
        mask: Any | None = None,
        num_images: int = 1,
        guidance_scale: float = 3.0,
        seed: int | None = None,
        steps: int | str = 100,
        sampler: str = "ancestral",
        sampler_options: dict[str, Any] | None = None,
        fit: str = "crop",
        upsample: bool = True,
        upsample_strength: float | None = None,
        upsample_steps: int | str = "fast27",
        upsample_sampler: str = "ddim",
        upsample_temp: float = 0.997,
        upsample_sampler_options: dict[str, Any] | None = None,
        progress: bool = False,
        callback: StepCallback | None = None,
    ) -> PipelineResult:
        prompts = check_prompts(prompt)
        strength = check_strength(strength, "strength")
        upsample_strength = (
            strength
            if upsample_strength is None
            else check_strength(upsample_strength, "upsample_strength")
        )
        num_images = check_count(num_images, "num_images")
        guidance_scale = check_guidance_scale(guidance_scale, "guidance_scale")
        seed = check_seed(seed)
        steps = respacing_spelling(steps, "steps")
        get_sampler(sampler, "sampler")
        check_fit(fit)
        up = upsample_stage_args(
            upsample_steps, upsample_sampler, upsample_temp, upsample_sampler_options
        )
        upsample = bool(upsample) and self.upsampler_slot is not None
        square = load_source(image, fit)  # read (and check) the inputs before loading models
        replace = None
        if mask is not None:
            replace = check_mask_coverage(load_replace_mask(image, mask, fit), "mask",
                                          allow_full=True)  # fmt: skip
        sizes = self._image_sizes(upsample)
        sources = image_tensors(square, sizes)
        keeps = keep_tensors(replace, sizes) if replace is not None else [None] * 2
        base_stage = Stage(
            steps,
            sampler,
            dict(sampler_options or {}),
            guidance_scale,
            strength=strength,
            source=sources[0],
            keep=keeps[0],
        )
        up_stage = (
            Text2ImagePipeline._up_stage(
                up, strength=upsample_strength, source=sources[1], keep=keeps[1]
            )
            if upsample
            else None
        )
        extra = {"upsample_strength": upsample_strength, **up} if upsample else {}
        return self._run(
            expand_prompts(prompts, num_images),
            seed=seed,
            base_stage=base_stage,
            up_stage=up_stage,
            progress=progress,
            callback=callback,
            num_images=num_images,
            strength=strength,
            guidance="classifier-free",
            guidance_scale=guidance_scale,
            steps=steps,
            sampler=sampler,
            sampler_options=dict(sampler_options or {}),
            image=input_label(image),
            mask=input_label(mask),
            fit=fit,
            upsampled=upsample,
            **extra,
        )
