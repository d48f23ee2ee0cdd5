"""The shapes world itself: its vocabulary of attributes, random scenes, and their rendering.

One coloured circle, square or triangle on a plain background. Geometry (fractions of the image
side ``N``): small objects have a bounding box side in ``[0.21, 0.27]``, large ones
``[0.42, 0.48]``; the bounding-box centre is at the quadrant centre (0.25 / 0.75) or the image
centre, jittered by up to 0.04 while staying >= 0.01 inside the image. Triangles are isosceles,
apex up, base = height = side (bbox fill 1/2). Rendering is anti-aliased: drawn at
``supersample`` x the size with ``ImageDraw``, then box-downsampled.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

#: Colour name -> RGB.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 170),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right", "center")
#: The four corner positions, each the centre of one quadrant.
QUADRANTS: tuple[str, ...] = POSITIONS[:4]
#: Attribute names, in canonical caption order.
ATTRIBUTES: tuple[str, ...] = ("size", "color", "shape", "position", "background")
#: Value the judge gives attributes it cannot read (e.g. an image with no object).
UNKNOWN = "unknown"

#: Bounding-box side range (fraction of the image side) of each size.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.21, 0.27), "large": (0.42, 0.48)}
#: Nominal bounding-box centre (x, y), as fractions of the image side, of each position.
POSITION_CENTERS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
_MAX_JITTER = 0.04
_MARGIN = 0.01

RngLike = random.Random | int | str | None


def as_rng(rng: RngLike) -> random.Random:
    """``rng`` itself if it is a ``random.Random``, else a new one seeded with it."""
    return rng if isinstance(rng, random.Random) else random.Random(rng)


@dataclass(frozen=True)
class ShapeScene:
    """The attributes of one scene, plus its geometry (not part of equality).

    ``cx, cy``: bounding-box centre and ``side``: bounding-box side, as fractions of the image
    side (``x`` right, ``y`` down). The judge fills them with its estimates.
    """

    shape: str
    color: str
    size: str
    position: str
    background: str
    cx: float = field(default=0.5, compare=False)
    cy: float = field(default=0.5, compare=False)
    side: float = field(default=0.25, compare=False)

    def attributes(self) -> dict[str, str]:
        """``{attribute: value}`` for the five attributes of :data:`ATTRIBUTES`."""
        return {a: getattr(self, a) for a in ATTRIBUTES}

    def validate(self) -> None:
        """Raise ``ValueError`` if an attribute is outside the world's vocabulary."""
        allowed = {
            "shape": SHAPES,
            "color": COLORS,
            "size": SIZES,
            "position": POSITIONS,
            "background": COLORS,
        }
        for name, values in allowed.items():
            if getattr(self, name) not in values:
                raise ValueError(
                    f"ShapeScene: {name}={getattr(self, name)!r} is not one of {values}"
                )
        if self.color == self.background:
            raise ValueError(f"ShapeScene: color and background are both {self.color!r}")


def _jitter_limit(side: float) -> float:
    return max(0.0, min(_MAX_JITTER, 0.25 - side / 2 - _MARGIN))


def random_scene(rng: RngLike = None, **fixed: str) -> ShapeScene:
    """A uniformly random scene (object colour != background), with random geometry.

    Keyword arguments fix attributes, e.g. ``random_scene(rng, shape="circle")``.
    """
    rng = as_rng(rng)
    unknown = set(fixed) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"random_scene: unknown attributes {sorted(unknown)}; use {ATTRIBUTES}")
    shape = fixed.get("shape") or rng.choice(SHAPES)
    size = fixed.get("size") or rng.choice(SIZES)
    position = fixed.get("position") or rng.choice(POSITIONS)
    background = fixed.get("background")
    color = fixed.get("color")
    if background is None:
        background = rng.choice([c for c in COLORS if c != color])
    if color is None:
        color = rng.choice([c for c in COLORS if c != background])
    lo, hi = SIZE_RANGES.get(size, (0.25, 0.25))
    side = rng.uniform(lo, hi)
    jit = _jitter_limit(side)
    x0, y0 = POSITION_CENTERS.get(position, (0.5, 0.5))
    scene = ShapeScene(
        shape=shape,
        color=color,
        size=size,
        position=position,
        background=background,
        cx=x0 + rng.uniform(-jit, jit),
        cy=y0 + rng.uniform(-jit, jit),
        side=side,
    )
    scene.validate()
    return scene


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, side: float, scale: float, fill
) -> None:
    """Draw ``shape`` with bbox centre ``(cx, cy)`` and side ``side`` (fractions) on a canvas of
    side ``scale`` pixels; pixel ``i`` covers ``[i, i + 1)``."""
    h = side * scale / 2
    x, y = cx * scale, cy * scale
    x0, y0, x1, y1 = x - h, y - h, x + h, y + h
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape == "square":
        draw.rectangle((round(x0), round(y0), round(x1) - 1, round(y1) - 1), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y0), (x1 - 0.5, y1 - 0.5), (x0, y1 - 0.5)], fill=fill)
    else:
        raise ValueError(f"render: unknown shape {shape!r}; use one of {SHAPES}")


def render(
    scene: ShapeScene,
    image_size: int = 64,
    *,
    supersample: int = 4,
    extra: Sequence[ShapeScene] = (),
) -> Image.Image:
    """Render ``scene`` as an RGB PIL image ``image_size`` x ``image_size``.

    Drawn at ``supersample`` x the size, then downsampled with a box (area) filter. ``extra``:
    more objects drawn over it (their backgrounds are ignored), as in inpainting sources.
    """
    if int(image_size) < 8:
        raise ValueError(f"render: image_size must be >= 8, got {image_size}")
    if int(supersample) < 1:
        raise ValueError(f"render: supersample must be >= 1, got {supersample}")
    big = int(image_size) * int(supersample)
    img = Image.new("RGB", (big, big), PALETTE[scene.background])
    draw = ImageDraw.Draw(img)
    for obj in (scene, *extra):
        _draw_shape(draw, obj.shape, obj.cx, obj.cy, obj.side, big, PALETTE[obj.color])
    return img.reduce(int(supersample)) if supersample > 1 else img


def quadrant_box(position: str, image_size: int) -> tuple[int, int, int, int]:
    """The pixel box (left, upper, right, lower) of the quadrant whose centre is ``position``
    (one of :data:`QUADRANTS`). An object placed there stays inside it."""
    if position not in QUADRANTS:
        raise ValueError(f"quadrant_box: position must be one of {QUADRANTS}, got {position!r}")
    half = int(image_size) // 2
    x0 = half if "right" in position else 0
    y0 = half if "bottom" in position else 0
    return (x0, y0, x0 + half, y0 + half)


def inpaint_scene(
    rng: RngLike = None, image_size: int = 64, distractor_prob: float = 0.75
) -> tuple[Image.Image, ShapeScene, tuple[int, int, int, int]]:
    """An inpainting example of the shapes world: ``(image, target, box)``.

    ``target`` is an object in a random quadrant; ``box`` is that quadrant (the region to
    repaint, which the target's caption describes); with probability ``distractor_prob``
    another random object (same background) sits in another quadrant, so a model learns to
    paint what the caption asks for even where the picture already has an object.
    """
    rng = as_rng(rng)
    target_pos, other_pos = rng.sample(QUADRANTS, 2)
    target = random_scene(rng, position=target_pos)
    extra = []
    if rng.random() < distractor_prob:
        extra.append(random_scene(rng, position=other_pos, background=target.background))
    return render(target, image_size, extra=extra), target, quadrant_box(target_pos, image_size)


def generate(
    rng: RngLike = None, image_size: int = 64, **fixed: str
) -> tuple[Image.Image, ShapeScene]:
    """A random scene and its rendering: ``(RGB PIL image image_size^2, ShapeScene)``."""
    scene = random_scene(rng, **fixed)
    return render(scene, image_size), scene


def coverage(
    shape: str, cx: float, cy: float, side: float, n: int, supersample: int = 4
) -> np.ndarray:
    """Anti-aliased coverage map ``(n, n)`` in [0, 1] of one shape."""
    big = n * supersample
    img = Image.new("L", (big, big), 0)
    _draw_shape(ImageDraw.Draw(img), shape, cx, cy, side, big, 255)
    return np.asarray(img.reduce(supersample), dtype=np.float64) / 255.0


__all__ = [
    "ATTRIBUTES",
    "COLORS",
    "PALETTE",
    "POSITIONS",
    "POSITION_CENTERS",
    "QUADRANTS",
    "SHAPES",
    "SIZES",
    "SIZE_RANGES",
    "UNKNOWN",
    "RngLike",
    "ShapeScene",
    "as_rng",
    "coverage",
    "generate",
    "inpaint_scene",
    "quadrant_box",
    "random_scene",
    "render",
]
