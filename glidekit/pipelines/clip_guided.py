"""CLIP-guided text to image: the base model steered by the noise-aware CLIP's gradient.

As in the official clip_guided notebook: no classifier-free guidance; at each base step the
gradient of the CLIP similarity between x_t and the prompt, times ``guidance_scale`` (3.0),
shifts the mean (ancestral) or the noise estimate (DDIM). The upsampler then runs as usual.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from glidekit.pipelines.common import (
    ModelSource,
    PipelineResult,
    check_count,
    check_number,
    check_prompts,
    check_seed,
    get_sampler,
    respacing_spelling,
)
from glidekit.pipelines.engine import _DEFAULT, GlidePipeline, Stage, upsample_stage_args
from glidekit.pipelines.text2image import Text2ImagePipeline, expand_prompts

#: The released CLIP towers, as (image encoder, text encoder) sources.
RELEASED_CLIP = ("clip/image-enc", "clip/text-enc")


class ClipGuidedPipeline(GlidePipeline):
    """Text to image guided by GLIDE's noise-aware CLIP.

    ``clip``: a :class:`glidekit.clip.NoisedCLIP` (used as is), or an ``(image_encoder,
    text_encoder)`` pair of released names or checkpoint paths loaded into the released
    architecture (default: the released towers), loaded on first use. ``clip_tokenizer``: path
    of the CLIP BPE merges file if it is not in the glidekit cache.
    """

    pipeline_name = "clip-guided"

    def __init__(
        self,
        base: ModelSource | None = None,
        upsampler: ModelSource | None = None,
        *,
        clip: Any = RELEASED_CLIP,
        clip_tokenizer: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(base, upsampler, **kwargs)
        self._clip_source = clip if clip is not None else RELEASED_CLIP
        self._clip_tokenizer = clip_tokenizer
        self._clip = None
        self._cache_dir = kwargs.get("cache_dir")

    @classmethod
    def from_pretrained(cls, base=None, upsampler=_DEFAULT, clip=None, **kwargs: Any):  # type: ignore[override]
        """As :meth:`GlidePipeline.from_pretrained`; ``clip`` defaults to the package's CLIP
        (``glidekit.models.default_clip()``) if it ships one, else the released towers."""
        from glidekit.pipelines.common import default_source

        clip = default_source("clip") if clip is None else clip
        return super().from_pretrained(base, upsampler, clip=clip, **kwargs)

    @property
    def clip_label(self) -> str:
        src = self._clip_source
        if isinstance(src, tuple):
            return ",".join(str(s) for s in src)
        return "custom"

    @property
    def clip(self):
        """The noise-aware CLIP, on the pipeline's device (float32)."""
        if self._clip is None:
            from glidekit.clip import NoisedCLIP, create_clip_model

            src = self._clip_source
            if isinstance(src, NoisedCLIP):
                model = src
            elif isinstance(src, tuple) and len(src) == 2:
                from glidekit.checkpoints import load_into

                model = create_clip_model(tokenizer=self._clip_tokenizer)
                image_src, text_src = src
                load_into(model.image_encoder, image_src, checkpoint="clip/image-enc",
                          cache_dir=self._cache_dir)  # fmt: skip
                load_into(model.text_encoder, text_src, checkpoint="clip/text-enc",
                          cache_dir=self._cache_dir)  # fmt: skip
            else:
                raise TypeError(
                    "clip must be a NoisedCLIP or an (image encoder, text encoder) pair of "
                    f"names/paths, got {type(src).__name__}"
                )
            self._clip = model.to(self.device).float().eval()
        return self._clip

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
    ) -> PipelineResult:
        """Like :class:`Text2ImagePipeline`, with ``guidance_scale`` scaling the CLIP gradient."""
        prompts = check_prompts(prompt)
        num_images = check_count(num_images, "num_images")
        guidance_scale = check_number(guidance_scale, "guidance_scale")
        seed = check_seed(seed)
        steps = respacing_spelling(steps, "steps")
        get_sampler(sampler, "sampler")
        up = upsample_stage_args(
            upsample_steps, upsample_sampler, upsample_temp, upsample_sampler_options
        )
        upsample = bool(upsample) and self.upsampler_slot is not None
        rows = expand_prompts(prompts, num_images)
        base_size = self.base.model.config.image_size
        clip = self.clip
        if clip.config.image_size != base_size:
            raise ValueError(
                f"clip: the CLIP model sees {clip.config.image_size}x{clip.config.image_size} "
                f"images but the base model makes {base_size}x{base_size}"
            )
        with torch.no_grad():
            cond_fn = clip.cond_fn(rows, guidance_scale)
        base_stage = Stage(steps, sampler, dict(sampler_options or {}), None, cond_fn=cond_fn)
        up_stage = Text2ImagePipeline._up_stage(up) if upsample else None
        return self._run(
            rows,
            seed=seed,
            base_stage=base_stage,
            up_stage=up_stage,
            progress=progress,
            num_images=num_images,
            guidance="clip",
            guidance_scale=guidance_scale,
            clip=self.clip_label,
            steps=steps,
            sampler=sampler,
            sampler_options=dict(sampler_options or {}),
            upsampled=upsample,
            **(up if upsample else {}),
        )
