"""The embedded default models: a small GLIDE cascade trained on the shapes world.

Data only (layer: utilities; imports nothing from glidekit): fp16 safetensors files with their
config, word vocabulary and sampling defaults in the metadata, shipped inside the package so a
new user sees glidekit work with no download. Which model a pipeline uses by default is decided
in :mod:`glidekit.pipelines.sources`; how it samples by default is written in each file
(:func:`glidekit.checkpoints.modelfile.read_sampling_defaults`).
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent

#: role -> the embedded file of that role (the CLIP: both towers and its vocabulary in one file)
EMBEDDED_FILES: dict[str, str] = {
    "base": "shapes-base.safetensors",
    "upsampler": "shapes-upsample.safetensors",
    "base_inpaint": "shapes-base-inpaint.safetensors",
    "upsampler_inpaint": "shapes-upsample-inpaint.safetensors",
    "clip": "shapes-clip.safetensors",
}

#: What the embedded models can draw: every word their tokenizers know (also in each file).
VOCABULARY_NOTE = (
    "The embedded shapes-world models (32x32, upsampled to 128x128) draw one circle, square or "
    "triangle, small or large, red, green, blue, yellow, purple, orange, white or black, in the "
    "top left, top right, bottom left, bottom right or at the center, on a plain background of "
    "one of those colours, e.g. 'a small red circle in the top left on a white background'; "
    "other words are ignored."
)


def embedded_path(role: str) -> Path | None:
    """The embedded model file for ``role`` (base, upsampler, base_inpaint, upsampler_inpaint,
    clip), if the package ships one."""
    name = EMBEDDED_FILES.get(role)
    path = MODELS_DIR / name if name else None
    return path if path is not None and path.is_file() else None
