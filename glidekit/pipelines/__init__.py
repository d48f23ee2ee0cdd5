"""Pipelines: GLIDE's models, samplers and guidance wired together, with PIL images out.

* :class:`Text2ImagePipeline` - prompt -> base (classifier-free or CLIP guidance) -> upsampler.
* :class:`InpaintPipeline` - image + mask (white = replace) + prompt; the known region is kept.
* :class:`ClipGuidedPipeline` - text to image always guided by the noise-aware CLIP.
* :class:`EditPipeline` - SDEdit: noise a picture or sketch to ``strength``, denoise with a prompt.
* :class:`UpsamplePipeline` - the upsampler alone on a user's low-resolution picture.

Each has ``from_pretrained(...)`` (released names, glidekit model files, or nothing for the
package defaults) and returns a :class:`PipelineResult` with ``.images`` and ``.params``. A
run's options are one typed object per kind of run (:mod:`glidekit.pipelines.options`), given
as keyword arguments or ``options=``; defaults come from the model file, then GLIDE's.

One job a file: ``options`` (a run's options, checked once), ``presets`` (named combinations
of dtype, memory use and options: "official", "fast"), ``sources`` (which model, and its
own defaults), ``slots`` (models loaded on first use), ``devices``, ``images`` (input pictures
and masks), ``results`` (results and PNG files), ``engine`` (the base-then-upsampler flow), and
one file per pipeline.

Layer: imports :mod:`glidekit.checkpoints`, :mod:`glidekit.guidance` and everything below
(nn, clip, diffusion, data, tokenizer, utilities); never the faces (cli, web), train or compat.
"""

from glidekit.diffusion import SAMPLERS
from glidekit.pipelines.clip_guided import ClipGuidedPipeline
from glidekit.pipelines.devices import resolve_device, resolve_dtype
from glidekit.pipelines.edit import EditPipeline
from glidekit.pipelines.engine import GlidePipeline, StepCallback
from glidekit.pipelines.inpaint import InpaintPipeline
from glidekit.pipelines.options import (
    ClipGuidedOptions,
    EditOptions,
    InpaintOptions,
    RunOptions,
    Text2ImageOptions,
    UpsampleOptions,
)
from glidekit.pipelines.presets import PRESETS, Preset
from glidekit.pipelines.results import PipelineResult, make_grid, read_png_params, save_png
from glidekit.pipelines.slots import LoadedModel, ModelSlot
from glidekit.pipelines.text2image import Text2ImagePipeline
from glidekit.pipelines.upsample import UpsamplePipeline


def available_samplers() -> list[str]:
    """Sampler names every pipeline (and ``--sampler``) accepts."""
    return list(SAMPLERS)


__all__ = [
    "ClipGuidedOptions",
    "ClipGuidedPipeline",
    "EditOptions",
    "EditPipeline",
    "GlidePipeline",
    "InpaintOptions",
    "InpaintPipeline",
    "LoadedModel",
    "ModelSlot",
    "PRESETS",
    "PipelineResult",
    "Preset",
    "RunOptions",
    "StepCallback",
    "Text2ImageOptions",
    "Text2ImagePipeline",
    "UpsampleOptions",
    "UpsamplePipeline",
    "available_samplers",
    "make_grid",
    "read_png_params",
    "resolve_device",
    "resolve_dtype",
    "save_png",
]
