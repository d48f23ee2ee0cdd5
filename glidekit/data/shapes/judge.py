"""The judge: reading a shapes-world image's attributes back, and checking them against a caption.

:func:`judge` works on generated and model-sampled images alike; :func:`check` compares what it
reads with what :func:`~glidekit.data.shapes.captions.parse_caption` finds in a caption.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from glidekit.data.shapes.captions import parse_caption
from glidekit.data.shapes.world import (
    COLORS,
    PALETTE,
    POSITION_CENTERS,
    SHAPES,
    UNKNOWN,
    ShapeScene,
    coverage,
)

_SIZE_THRESHOLD = 0.345  # between the small and large side ranges
_PALETTE_ARR = np.array([PALETTE[c] for c in COLORS], dtype=np.float64)


def _to_rgb_array(image: Any) -> np.ndarray:
    """PIL image / uint8 HWC array / (3, H, W) tensor in [-1, 1] -> float64 (H, W, 3) in 0..255."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(
                f"judge: a tensor image must be (3, H, W) in [-1, 1], got {tuple(image.shape)}"
            )
        return ((t.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy().astype(np.float64)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"judge: a numpy image must be uint8 (H, W, 3), got {image.shape}")
        return image[..., :3].astype(np.float64)
    raise ValueError(
        f"judge: image must be a PIL image, a uint8 HWC array or a (3, H, W) tensor, got "
        f"{type(image).__name__}"
    )


def _nearest_color(pixels: np.ndarray, exclude: int | None = None) -> np.ndarray:
    d = ((pixels[..., None, :] - _PALETTE_ARR) ** 2).sum(-1)
    if exclude is not None:
        d[..., exclude] = np.inf
    return d.argmin(-1)


def _soft(alpha: np.ndarray) -> np.ndarray:
    """Suppress faint noise; roughly area-preserving on anti-aliased edges."""
    return np.clip((alpha - 0.1) / 0.8, 0.0, 1.0)


def _box3(a: np.ndarray) -> np.ndarray:
    """3x3 mean filter over the first two axes (edges replicated)."""
    p = np.pad(a, [(1, 1), (1, 1)] + [(0, 0)] * (a.ndim - 2), mode="edge")
    h, w = a.shape[:2]
    return sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Binary 3x3 dilation."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for i in range(3):
        for j in range(3):
            out |= p[i : i + h, j : j + w]
    return out


def judge(image: Any) -> ShapeScene:
    """Read the attributes of a shapes-world image.

    ``image``: PIL image, numpy uint8 ``(H, W, 3)`` or tensor ``(3, H, W)`` in ``[-1, 1]``
    (square). Background = majority nearest-palette colour of the border; object colour =
    nearest palette colour of the object's core pixels; the object's soft coverage map gives
    its area and centroid, and the shape is the one whose rendered template (sized to the
    area) matches the coverage best. Size comes from that template's side, position from its
    bounding-box centre (nearest quadrant centre or image centre). Attributes that cannot be
    read (no object) are :data:`UNKNOWN`. Geometry estimates go to ``cx, cy, side``.
    """
    rgb = _to_rgb_array(image)
    h, w = rgb.shape[:2]
    if h != w:
        raise ValueError(f"judge: the shapes world is square, got an image of {w}x{h}")
    if h < 8:
        raise ValueError(f"judge: image too small ({w}x{h}); need at least 8x8")
    n = h
    b = max(1, n // 32)
    border = np.concatenate(
        [
            rgb[:b].reshape(-1, 3),
            rgb[-b:].reshape(-1, 3),
            rgb[b:-b, :b].reshape(-1, 3),
            rgb[b:-b, -b:].reshape(-1, 3),
        ]
    )
    border_cls = _nearest_color(border)
    bg_idx = int(np.bincount(border_cls, minlength=len(COLORS)).argmax())
    background = COLORS[bg_idx]
    bg_rgb = np.median(border[border_cls == bg_idx], axis=0)

    # Locate the object on a 3x3-smoothed copy (robust to sampling noise), but measure its
    # coverage on the original pixels (keeps anti-aliased edges exact).
    smooth = _box3(rgb)
    dist = np.sqrt(((smooth - bg_rgb) ** 2).sum(-1))
    candidate = dist > 35.0
    none = ShapeScene(UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, background, 0.5, 0.5, 0.0)
    if not candidate.any():
        return none
    core = candidate & (dist >= 0.8 * np.percentile(dist[candidate], 90))
    obj_rgb = np.median(rgb[core], axis=0)
    color_idx = int(_nearest_color(obj_rgb[None], exclude=bg_idx)[0])
    color = COLORS[color_idx]

    d = obj_rgb - bg_rgb
    dd = max(float(d @ d), 1e-6)
    support = _dilate(np.clip(((smooth - bg_rgb) @ d) / dd, 0.0, 1.0) > 0.25)
    alpha = _soft(np.clip(((rgb - bg_rgb) @ d) / dd, 0.0, 1.0)) * support
    area = float(alpha.sum())
    if area < 0.5:
        return dataclasses.replace(none, color=color)
    coords = (np.arange(n, dtype=np.float64) + 0.5) / n
    mx = float((alpha.sum(0) * coords).sum() / area)
    my = float((alpha.sum(1) * coords).sum() / area)
    area_frac = area / (n * n)

    fits: list[tuple[float, str, float, float, float]] = []
    for shape in SHAPES:
        if shape == "circle":
            side = math.sqrt(4 * area_frac / math.pi)
            cx, cy = mx, my
        elif shape == "square":
            side = math.sqrt(area_frac)
            cx, cy = mx, my
        else:
            side = math.sqrt(2 * area_frac)
            cx, cy = mx, my - side / 6  # the centroid is side/6 below the bbox centre
        err = float(np.abs(_soft(coverage(shape, cx, cy, side, n)) - alpha).sum())
        fits.append((err, shape, cx, cy, side))
    _, shape, cx, cy, side = min(fits)
    size = "small" if side < _SIZE_THRESHOLD else "large"
    position = min(
        POSITION_CENTERS,
        key=lambda p: (POSITION_CENTERS[p][0] - cx) ** 2 + (POSITION_CENTERS[p][1] - cy) ** 2,
    )
    return ShapeScene(shape, color, size, position, background, cx, cy, side)


def check(image: Any, caption_text: str) -> dict[str, bool]:
    """``{attribute: judged == stated}`` for every attribute ``caption_text`` states.

    E.g. ``check(img, "a red circle")`` -> ``{"color": True, "shape": False}``.
    """
    stated = parse_caption(caption_text)
    if not stated:
        return {}
    seen = judge(image).attributes()
    return {a: seen[a] == v for a, v in stated.items()}


__all__ = ["check", "judge"]
