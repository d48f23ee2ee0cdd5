"""The shapes world: one coloured shape on a plain background, with captions and a judge.

A tiny, fully-specified text-to-image world for training and *measuring* small GLIDE models:

* :mod:`~glidekit.data.shapes.world`: the attributes (:data:`PALETTE`, :data:`SHAPES`, ...),
  random scenes (:func:`random_scene`, :func:`generate`, :func:`inpaint_scene`) and their
  anti-aliased rendering (:func:`render`) at any resolution;
* :mod:`~glidekit.data.shapes.captions`: :func:`canonical_caption` / :func:`caption` describe a
  scene, :func:`parse_caption` reads the attributes any caption states;
* :mod:`~glidekit.data.shapes.judge`: :func:`judge` reads the attributes back from an image
  (generated or model-sampled), :func:`check` compares them with a caption;
* :mod:`~glidekit.data.shapes.datasets`: :class:`ShapesDataset` (map-style, fixed length) and
  :class:`ShapesIterableDataset` (infinite) yield ``{"image": FloatTensor (3, S, S) in [-1, 1],
  "caption": str}``.

The word-level tokenizers over the captions' words (:class:`ShapesTokenizer`,
:class:`ShapesClipTokenizer`, :data:`SHAPES_WORDS`) live in :mod:`glidekit.tokenizer.shapes`
and are re-exported here.

Layer: part of ``glidekit.data``; imports ``glidekit.tokenizer`` and the utilities only.
"""

from glidekit.data.shapes.captions import canonical_caption, caption, parse_caption
from glidekit.data.shapes.datasets import ShapesDataset, ShapesItems, ShapesIterableDataset
from glidekit.data.shapes.judge import check, judge
from glidekit.data.shapes.world import (
    ATTRIBUTES,
    COLORS,
    PALETTE,
    POSITION_CENTERS,
    POSITIONS,
    QUADRANTS,
    SHAPES,
    SIZE_RANGES,
    SIZES,
    UNKNOWN,
    ShapeScene,
    generate,
    inpaint_scene,
    quadrant_box,
    random_scene,
    render,
)
from glidekit.tokenizer.shapes import SHAPES_WORDS, ShapesClipTokenizer, ShapesTokenizer

__all__ = [
    "PALETTE",
    "COLORS",
    "SHAPES",
    "SIZES",
    "POSITIONS",
    "QUADRANTS",
    "ATTRIBUTES",
    "UNKNOWN",
    "SIZE_RANGES",
    "POSITION_CENTERS",
    "SHAPES_WORDS",
    "ShapeScene",
    "random_scene",
    "render",
    "quadrant_box",
    "inpaint_scene",
    "generate",
    "canonical_caption",
    "caption",
    "judge",
    "parse_caption",
    "check",
    "ShapesTokenizer",
    "ShapesClipTokenizer",
    "ShapesDataset",
    "ShapesItems",
    "ShapesIterableDataset",
]
