"""The upsampler alone: a user's small picture (any size, resized to the model's low-res input,
64x64 for the released model) to 256x256, guided by a prompt."""

from __future__ import annotations

from typing import Any

from glidekit.pipelines.common import (
    PipelineResult,
    check_count,
    check_prompts,
    check_seed,
)
from glidekit.pipelines.engine import GlidePipeline, StepCallback, upsample_stage_args
from glidekit.pipelines.images import check_fit, image_tensors, load_source
from glidekit.pipelines.inpaint import input_label
from glidekit.pipelines.text2image import Text2ImagePipeline, expand_prompts


class UpsamplePipeline(GlidePipeline):
    """``UpsamplePipeline.from_pretrained()(prompt, "small.png", seed=0)`` -> 256x256 images.

    Build with ``UpsamplePipeline(upsampler=...)`` or ``from_pretrained(upsampler=...)``.
    ``low_res_size``: the size the picture is resized to first (default: a quarter of the
    upsampler's size, as it was trained).
    """

    pipeline_name = "upsample"
    base_role = None

    @classmethod
    def from_pretrained(cls, upsampler: Any = None, **kwargs: Any):  # type: ignore[override]
        from glidekit.pipelines.common import default_source

        if upsampler is None:
            upsampler = default_source(cls.upsampler_role)
        return cls(None, upsampler, **kwargs)

    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        *,
        num_images: int = 1,
        seed: int | None = None,
        steps: int | str = "fast27",
        sampler: str = "ddim",
        sampler_options: dict[str, Any] | None = None,
        temperature: float = 0.997,
        low_res_size: int | None = None,
        fit: str = "crop",
        progress: bool = False,
        callback: StepCallback | None = None,
    ) -> PipelineResult:
        prompts = check_prompts(prompt)
        num_images = check_count(num_images, "num_images")
        seed = check_seed(seed)
        check_fit(fit)
        up = upsample_stage_args(
            steps, sampler, temperature, sampler_options, ("steps", "sampler", "temperature")
        )
        square = load_source(image, fit)
        lm = self.upsampler
        if lm is None:
            raise ValueError("upsampler: this pipeline has no upsampler")
        size = lm.model.config.image_size
        low_size = size // 4 if low_res_size is None else check_count(low_res_size, "low_res_size")
        (low,) = image_tensors(square, [low_size])
        rows = expand_prompts(prompts, num_images)
        stage = Text2ImagePipeline._up_stage(up, low_res=low.expand(len(rows), -1, -1, -1))
        return self._run(
            rows,
            seed=seed,
            base_stage=None,
            up_stage=stage,
            up_prefix="",
            progress=progress,
            callback=callback,
            num_images=num_images,
            steps=up["upsample_steps"],
            sampler=up["upsample_sampler"],
            sampler_options=up["upsample_sampler_options"],
            upsample_temp=up["upsample_temp"],
            low_res_size=low_size,
            image=input_label(image),
            fit=fit,
        )
