"""CLIP-guided text to image, as the official clip_guided notebook runs it: no classifier-free
guidance; at each base step the gradient of the noise-aware CLIP's similarity between x_t and
the prompt, times ``guidance_scale`` (3.0), shifts the mean (ancestral) or the noise estimate
(DDIM, DPM-Solver++). The upsampler then runs as usual."""

from __future__ import annotations

from glidekit.pipelines.options import ClipGuidedOptions
from glidekit.pipelines.sources import RELEASED_CLIP
from glidekit.pipelines.text2image import Text2ImagePipeline

__all__ = ["RELEASED_CLIP", "ClipGuidedPipeline"]


class ClipGuidedPipeline(Text2ImagePipeline):
    """:class:`Text2ImagePipeline` with ``guidance="clip"`` always (``clip=`` as for every
    pipeline: a glidekit CLIP file, an (image encoder, text encoder) pair, or the default)."""

    pipeline_name = "clip-guided"
    options_class = ClipGuidedOptions
