"""The upsampler alone: a user's small picture (any size, resized to the model's low-res input,
64x64 for the released model) to 256x256, guided by a prompt."""

from __future__ import annotations

from typing import Any

from glidekit.pipelines.engine import GlidePipeline, Stage, StepCallback, expand_prompts
from glidekit.pipelines.images import image_tensors, input_label, load_source
from glidekit.pipelines.options import UpsampleOptions
from glidekit.pipelines.results import PipelineResult
from glidekit.pipelines.sources import default_source


class UpsamplePipeline(GlidePipeline):
    """``UpsamplePipeline.from_pretrained()(prompt, "small.png", seed=0)`` -> 256x256 images.

    Options (:class:`~glidekit.pipelines.options.UpsampleOptions`): num_images, seed, steps
    ("fast27"), sampler ("ddim"), sampler_options, temperature (0.997), low_res_size (default:
    a quarter of the upsampler's size, as it was trained), fit ("crop" or "pad").
    """

    pipeline_name = "upsample"
    options_class = UpsampleOptions
    base_role = None

    @classmethod
    def from_pretrained(cls, upsampler: Any = None, **kwargs: Any):  # type: ignore[override]
        """The package's default upsampler, or the one named."""
        return cls(None, upsampler or default_source(cls.upsampler_role), **kwargs)

    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        options: UpsampleOptions | None = None,
        *,
        progress: bool = False,
        callback: StepCallback | None = None,
        **kwargs: Any,
    ) -> PipelineResult:
        """Upsample ``image`` (a path, bytes, PIL image or (3, H, W) tensor in [-1, 1])."""
        # 1. check inputs: options, then the picture (before any model is loaded)
        prompts, opts = self.check_inputs(prompt, options, **kwargs)
        square = load_source(image, opts.fit)
        # 2. the low-res input at the size the upsampler was trained on
        low_size = opts.low_res_size or self._upsampler_size() // 4
        (low,) = image_tensors(square, [low_size])
        rows = expand_prompts(prompts, opts.num_images)
        stage = Stage.of("upsampler", opts, temperature=opts.temperature,
                      low_res=low.expand(len(rows), -1, -1, -1))  # fmt: skip
        # 3. sample and decode
        return self.run_cascade(rows, opts.replace(low_res_size=low_size), None, stage,
                                progress=progress, callback=callback,
                                image=input_label(image))  # fmt: skip

    def _upsampler_size(self) -> int:
        slot = self.upsampler_slot
        size = slot.image_size() if slot is not None else None
        if size is None:
            lm = self.upsampler
            if lm is None:
                raise ValueError("upsampler: this pipeline has no upsampler")
            size = lm.model.config.image_size
        return size
