"""Text to image: the base model at 64x64 with classifier-free guidance, then the upsampler."""

from __future__ import annotations

from typing import Any

from glidekit.guidance import check_guidance_scale
from glidekit.pipelines.common import (
    PipelineResult,
    check_count,
    check_prompts,
    check_seed,
    get_sampler,
    respacing_spelling,
)
from glidekit.pipelines.engine import GlidePipeline, Stage, StepCallback, upsample_stage_args


def expand_prompts(prompts: list[str], num_images: int) -> list[str]:
    """The batch rows: each prompt ``num_images`` times, prompt-major."""
    return [p for p in prompts for _ in range(num_images)]


class Text2ImagePipeline(GlidePipeline):
    """GLIDE text-to-image, as the official text2im notebook runs it.

    >>> pipe = Text2ImagePipeline.from_pretrained()             # released base + upsample
    >>> result = pipe("an oil painting of a corgi", num_images=4, seed=0)
    >>> result.images[0].save("corgi.png"); result.params["seed"]

    Defaults: 100 ancestral base steps with classifier-free guidance 3.0, then the upsampler with
    27 DDIM steps ("fast27") from noise scaled by 0.997.
    """

    pipeline_name = "text2image"

    def __call__(
        self,
        prompt: str | list[str],
        *,
        num_images: int = 1,
        guidance_scale: float = 3.0,
        seed: int | None = None,
        steps: int | str = 100,
        sampler: str = "ancestral",
        sampler_options: dict[str, Any] | None = None,
        upsample: bool = True,
        upsample_steps: int | str = "fast27",
        upsample_sampler: str = "ddim",
        upsample_temp: float = 0.997,
        upsample_sampler_options: dict[str, Any] | None = None,
        progress: bool = False,
        callback: StepCallback | None = None,
    ) -> PipelineResult:
        """Generate ``num_images`` images per prompt (a list of prompts makes one batch).

        ``steps`` / ``upsample_steps``: a step count or a respacing spelling ("100", "ddim50",
        "fast27", "10,10,3,2,2", "karras25"). ``sampler``: "ancestral", "ddim" or "dpm++2m";
        ``sampler_options`` go to it (e.g. ``{"eta": 0.5}`` for DDIM). ``seed``: None picks one
        at random (it is in ``result.params``). ``upsample=False`` (or a pipeline without an
        upsampler) returns the base model's images. ``progress`` shows tqdm bars;
        ``callback(stage, step, total)`` is called after every step (raise in it to cancel).
        """
        prompts = check_prompts(prompt)
        num_images = check_count(num_images, "num_images")
        guidance_scale = check_guidance_scale(guidance_scale, "guidance_scale")
        seed = check_seed(seed)
        steps = respacing_spelling(steps, "steps")
        get_sampler(sampler, "sampler")
        up = upsample_stage_args(
            upsample_steps, upsample_sampler, upsample_temp, upsample_sampler_options
        )
        upsample = bool(upsample) and self.upsampler_slot is not None
        base_stage = Stage(steps, sampler, dict(sampler_options or {}), guidance_scale)
        up_stage = self._up_stage(up) if upsample else None
        rows = expand_prompts(prompts, num_images)
        return self._run(
            rows,
            seed=seed,
            base_stage=base_stage,
            up_stage=up_stage,
            progress=progress,
            callback=callback,
            num_images=num_images,
            guidance="classifier-free",
            guidance_scale=guidance_scale,
            steps=steps,
            sampler=sampler,
            sampler_options=dict(sampler_options or {}),
            upsampled=upsample,
            **(up if upsample else {}),
        )

    @staticmethod
    def _up_stage(up: dict[str, Any], **kwargs: Any) -> Stage:
        return Stage(
            up["upsample_steps"],
            up["upsample_sampler"],
            up["upsample_sampler_options"],
            temperature=up["upsample_temp"],
            **kwargs,
        )
