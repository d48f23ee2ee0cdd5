"""Random inpainting masks and the inpainting model's conditioning inputs.

Convention (the released GLIDE inpainting models'): a mask is float ``(1, S, S)`` with
**1 = known (kept) pixel, 0 = region to fill**. The inpainting UNet gets
``inpaint_image = image * mask`` and ``inpaint_mask = mask`` as extra input channels.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = [
    "random_box_mask",
    "random_brush_mask",
    "random_mask",
    "make_inpaint_example",
    "add_inpaint",
]

MaskKind = Literal["mixed", "box", "brush"]


def _u(gen: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _randint(gen: torch.Generator | None, lo: int, hi: int) -> int:
    """Uniform int in ``[lo, hi]`` (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def _check_size(size: int, who: str) -> int:
    if int(size) < 4:
        raise ValueError(f"{who}: size must be an int >= 4, got {size}")
    return int(size)


def _holes_to_mask(holes: Image.Image) -> torch.Tensor:
    arr = np.asarray(holes, dtype=np.uint8)
    return torch.from_numpy((arr < 128).astype(np.float32))[None]


def random_box_mask(
    size: int,
    generator: torch.Generator | None = None,
    *,
    max_boxes: int = 3,
    min_side: float = 0.1,
    max_side: float = 0.6,
) -> torch.Tensor:
    """1 to ``max_boxes`` random axis-aligned rectangles to fill.

    Box sides are uniform in ``[min_side, max_side] * size``. Returns ``(1, size, size)``
    float32 in {0, 1} (1 = known, 0 = fill).
    """
    size = _check_size(size, "random_box_mask")
    if not 0 < min_side <= max_side <= 1:
        raise ValueError(
            f"random_box_mask: need 0 < min_side <= max_side <= 1, got {min_side}, {max_side}"
        )
    mask = torch.ones(1, size, size)
    for _ in range(_randint(generator, 1, max(1, max_boxes))):
        h = max(1, round(_u(generator, min_side, max_side) * size))
        w = max(1, round(_u(generator, min_side, max_side) * size))
        top = _randint(generator, 0, size - h)
        left = _randint(generator, 0, size - w)
        mask[:, top : top + h, left : left + w] = 0.0
    return mask


def random_brush_mask(
    size: int,
    generator: torch.Generator | None = None,
    *,
    max_strokes: int = 4,
    max_vertices: int = 10,
    min_width: float = 1 / 24,
    max_width: float = 1 / 8,
) -> torch.Tensor:
    """Free-form brush strokes to fill (random-walk polylines with round joints).

    Each stroke has 4 to ``max_vertices`` vertices, segment lengths up to ``size / 4`` and a
    width uniform in ``[min_width, max_width] * size``. Returns ``(1, size, size)`` float32 in
    {0, 1} (1 = known, 0 = fill).
    """
    size = _check_size(size, "random_brush_mask")
    holes = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(holes)
    for _ in range(_randint(generator, 1, max(1, max_strokes))):
        width = max(1, round(_u(generator, min_width, max_width) * size))
        x, y = _u(generator, 0, size), _u(generator, 0, size)
        angle = _u(generator, 0, 2 * math.pi)
        points = [(x, y)]
        for _ in range(_randint(generator, 4, max(4, max_vertices))):
            angle += _u(generator, -math.pi / 2, math.pi / 2)
            length = _u(generator, size / 16, size / 4)
            x = min(max(x + length * math.cos(angle), 0.0), size - 1.0)
            y = min(max(y + length * math.sin(angle), 0.0), size - 1.0)
            points.append((x, y))
        draw.line(points, fill=255, width=width)
        r = width / 2
        for px, py in points:
            draw.ellipse((px - r, py - r, px + r, py + r), fill=255)
    return _holes_to_mask(holes)


def random_mask(
    size: int,
    generator: torch.Generator | None = None,
    *,
    kind: MaskKind = "mixed",
    box_prob: float = 0.5,
    min_fill: float = 0.05,
    max_fill: float = 0.75,
    max_tries: int = 10,
) -> torch.Tensor:
    """A random inpainting mask ``(1, size, size)`` float32 in {0, 1}: 1 = known, 0 = fill.

    ``kind="mixed"`` picks boxes with probability ``box_prob``, else brush strokes. Masks whose
    fill fraction (share of zeros) is outside ``[min_fill, max_fill]`` are redrawn, up to
    ``max_tries`` times. Deterministic for a seeded ``generator``.
    """
    if kind not in ("mixed", "box", "brush"):
        raise ValueError(f"random_mask: kind must be 'mixed', 'box' or 'brush', got {kind!r}")
    if not 0 <= min_fill <= max_fill <= 1:
        raise ValueError(
            f"random_mask: need 0 <= min_fill <= max_fill <= 1, got {min_fill}, {max_fill}"
        )
    mask = torch.ones(1, int(size), int(size))
    for _ in range(max(1, max_tries)):
        use_box = kind == "box" or (kind == "mixed" and _u(generator, 0, 1) < box_prob)
        mask = random_box_mask(size, generator) if use_box else random_brush_mask(size, generator)
        fill = 1.0 - float(mask.mean())
        if min_fill <= fill <= max_fill:
            break
    return mask


def make_inpaint_example(image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The inpainting UNet's conditioning inputs for ``image`` and ``mask``.

    ``image``: ``(3, S, S)`` or ``(B, 3, S, S)`` in ``[-1, 1]``; ``mask``: ``(1, S, S)`` or
    ``(B, 1, S, S)`` with 1 = known, 0 = fill. Returns ``{"inpaint_image": image * mask,
    "inpaint_mask": mask}`` (mask cast to the image dtype, same batch layout as ``image``).
    """
    if image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(
            f"make_inpaint_example: image must be (3, S, S) or (B, 3, S, S), got {tuple(image.shape)}"
        )
    if mask.ndim not in (3, 4) or mask.shape[-3] != 1 or mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            "make_inpaint_example: mask must be (1, S, S) or (B, 1, S, S) with the image's "
            f"S, got mask {tuple(mask.shape)} for image {tuple(image.shape)}"
        )
    mask = mask.to(dtype=image.dtype, device=image.device)
    if image.ndim == 4 and mask.ndim == 3:
        mask = mask[None].expand(image.shape[0], -1, -1, -1)
    elif image.ndim == 3 and mask.ndim == 4:
        raise ValueError("make_inpaint_example: batched mask for an unbatched image")
    return {"inpaint_image": image * mask, "inpaint_mask": mask}


def add_inpaint(
    sample: dict,
    generator: torch.Generator | None = None,
    *,
    kind: MaskKind = "mixed",
) -> dict:
    """Return ``sample`` with a :func:`random_mask` and the inpainting inputs added.

    ``sample["image"]`` is ``(3, S, S)``; adds ``"inpaint_image"`` ``(3, S, S)`` and
    ``"inpaint_mask"`` ``(1, S, S)``.
    """
    image = sample["image"]
    mask = random_mask(image.shape[-1], generator, kind=kind)
    out = dict(sample)
    out.update(make_inpaint_example(image, mask))
    return out
