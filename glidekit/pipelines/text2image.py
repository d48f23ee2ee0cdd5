"""Text to image: the base model guided by classifier-free guidance (GLIDE's) or by the
noise-aware CLIP, then the upsampler."""

from __future__ import annotations

from typing import Any

from glidekit.pipelines.engine import GlidePipeline, Stage, StepCallback, expand_prompts
from glidekit.pipelines.options import Text2ImageOptions
from glidekit.pipelines.results import PipelineResult


class Text2ImagePipeline(GlidePipeline):
    """GLIDE text-to-image, as the official text2im notebook runs it.

    >>> pipe = Text2ImagePipeline.from_pretrained()   # the package's default models
    >>> result = pipe("a small red circle in the top left on a white background", seed=0)
    >>> result.images[0].save("circle.png"); result.params["seed"]

    Options (:class:`~glidekit.pipelines.options.Text2ImageOptions`, as keyword arguments or
    ``options=``): num_images, seed, guidance ("classifier-free" or "clip"), guidance_scale,
    steps, sampler, sampler_options, upsample, upsample_steps, upsample_sampler, upsample_temp,
    upsample_sampler_options. Defaults: the base model file's own (the embedded shapes models
    carry theirs), else GLIDE's: 100 ancestral steps with classifier-free guidance 3.0, then
    the upsampler with "fast27" DDIM steps from noise scaled by 0.997.
    """

    pipeline_name = "text2image"
    options_class = Text2ImageOptions

    def __call__(
        self,
        prompt: str | list[str],
        options: Text2ImageOptions | None = None,
        *,
        progress: bool = False,
        callback: StepCallback | None = None,
        **kwargs: Any,
    ) -> PipelineResult:
        """``num_images`` images per prompt (a list of prompts makes one batch).

        ``progress`` shows tqdm bars; ``callback(stage, step, total)`` is called after every
        step (raise in it to cancel). Returns images (B = prompts x num_images, prompt-major)
        of the upsampler's size, or the base's with ``upsample=False`` or no upsampler."""
        # 1. check inputs (no model is loaded before they pass)
        prompts, opts = self.check_inputs(prompt, options, **kwargs)
        rows = expand_prompts(prompts, opts.num_images)
        upsample = opts.upsample and self.upsampler_slot is not None
        # 2. the base stage: classifier-free guidance, or the CLIP's gradient
        clip: dict[str, Any] = {}
        if opts.guidance == "clip":
            size = self.base.model.config.image_size
            cond_fn = self.clip_slot.cond_fn(self.device, rows, opts.guidance_scale, size)
            base = Stage.of("base", opts, cond_fn=cond_fn)
            clip = {"clip": self.clip_label, "pipeline": "clip-guided"}  # as the notebook names it
        else:
            base = Stage.of("base", opts, guidance_scale=opts.guidance_scale,
                        guidance_interval=opts.guidance_interval)  # fmt: skip
        # 3. the upsampler stage (its low-res input is the base's output)
        up = Stage.upsampler(opts) if upsample else None
        # 4. sample both stages and decode to PIL images
        return self.run_cascade(rows, opts.replace(upsample=upsample), base, up,
                                progress=progress, callback=callback, **clip)  # fmt: skip
