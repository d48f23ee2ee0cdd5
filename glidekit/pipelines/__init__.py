"""Pipelines: GLIDE's models, samplers and guidance wired together, with PIL images out.

* :class:`Text2ImagePipeline` - prompt -> 64x64 base (classifier-free guidance 3.0) -> 256x256.
* :class:`InpaintPipeline` - image + mask (white = replace) + prompt; the known region is kept.
* :class:`ClipGuidedPipeline` - text to image guided by the noise-aware CLIP instead.
* :class:`EditPipeline` - SDEdit: noise a picture or sketch to ``strength``, denoise with a prompt.
* :class:`UpsamplePipeline` - the upsampler alone on a user's low-resolution picture.

Each has ``from_pretrained(...)`` (released names, glidekit model files, or nothing for the
package defaults) and returns a :class:`PipelineResult` with ``.images`` and ``.params``.
Samplers are chosen by name (:func:`available_samplers`: ancestral, ddim, dpm++2m); every
pipeline call takes ``callback(stage, step, total)`` for live progress and cancel.
"""

from glidekit.pipelines.clip_guided import ClipGuidedPipeline
from glidekit.pipelines.common import (
    LoadedModel,
    ModelSlot,
    PipelineResult,
    available_samplers,
    get_sampler,
    make_grid,
    resolve_device,
    resolve_dtype,
)
from glidekit.pipelines.edit import EditPipeline
from glidekit.pipelines.engine import GlidePipeline, StepCallback
from glidekit.pipelines.images import read_png_params, save_png
from glidekit.pipelines.inpaint import InpaintPipeline
from glidekit.pipelines.text2image import Text2ImagePipeline
from glidekit.pipelines.upsample import UpsamplePipeline

__all__ = [
    "ClipGuidedPipeline",
    "EditPipeline",
    "GlidePipeline",
    "InpaintPipeline",
    "LoadedModel",
    "ModelSlot",
    "PipelineResult",
    "StepCallback",
    "Text2ImagePipeline",
    "UpsamplePipeline",
    "available_samplers",
    "get_sampler",
    "make_grid",
    "read_png_params",
    "resolve_device",
    "resolve_dtype",
    "save_png",
]
