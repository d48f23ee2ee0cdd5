"""The shapes world: one coloured shape on a plain background, with captions and a judge.

A tiny, fully-specified text-to-image world for training and *measuring* small GLIDE models:

* :func:`generate` draws a random :class:`ShapeScene` and renders it (anti-aliased: drawn at
  ``supersample`` x the size with ``ImageDraw``, then box-downsampled) at any resolution.
* :func:`canonical_caption` / :func:`caption` describe a scene ("a small red circle in the top
  left on a white background"; in training each attribute is dropped with probability
  ``drop_prob`` and the phrase order is sometimes varied).
* :func:`judge` reads the attributes back from an image (generated or model-sampled),
  :func:`parse_caption` reads them from any caption, :func:`check` compares the two.
* :class:`ShapesTokenizer` is a word-level tokenizer over :data:`SHAPES_WORDS` with the GPT-2
  tokenizer's interface, small enough to ship with a model as JSON.
* :class:`ShapesDataset` (map-style, fixed length) and :class:`ShapesIterableDataset`
  (infinite) yield ``{"image": FloatTensor (3, S, S) in [-1, 1], "caption": str}``.

Geometry (fractions of the image side ``N``): small objects have a bounding box side in
``[0.21, 0.27]``, large ones ``[0.42, 0.48]``; the bounding-box centre is at the quadrant
centre (0.25 / 0.75) or the image centre, jittered by up to 0.04 while staying >= 0.01 inside
the image. Triangles are isosceles, apex up, base = height = side (bbox fill 1/2).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..tokenizer import padded_tokens_and_mask
from .transforms import to_tensor

__all__ = [
    "PALETTE",
    "COLORS",
    "SHAPES",
    "SIZES",
    "POSITIONS",
    "QUADRANTS",
    "ATTRIBUTES",
    "UNKNOWN",
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
    "ShapesIterableDataset",
]

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
_SIZE_THRESHOLD = 0.345  # between the small and large side ranges
_PALETTE_ARR = np.array([PALETTE[c] for c in COLORS], dtype=np.float64)

_FILLER_WORDS = ("a", "in", "the", "at", "on", "background", "shape")
_PUNCTUATION = (",", ".", ":", ";", "-")
#: Every word the world's captions use, plus punctuation (the tokenizer's vocabulary).
SHAPES_WORDS: tuple[str, ...] = (
    _FILLER_WORDS
    + SIZES
    + COLORS
    + SHAPES
    + ("top", "bottom", "left", "right", "center")
    + _PUNCTUATION
)

_TOKEN_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
_SIZE_SYNONYMS = {
    "small": "small",
    "little": "small",
    "tiny": "small",
    "large": "large",
    "big": "large",
}
_CENTER_WORDS = ("center", "centre", "middle")

RngLike = random.Random | int | str | None


def _as_rng(rng: RngLike) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)


# --------------------------------------------------------------------------------------------
# Scenes and rendering
# --------------------------------------------------------------------------------------------


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
    rng = _as_rng(rng)
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
    rng = _as_rng(rng)
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


def _coverage(
    shape: str, cx: float, cy: float, side: float, n: int, supersample: int = 4
) -> np.ndarray:
    """Anti-aliased coverage map ``(n, n)`` in [0, 1] of one shape."""
    big = n * supersample
    img = Image.new("L", (big, big), 0)
    _draw_shape(ImageDraw.Draw(img), shape, cx, cy, side, big, 255)
    return np.asarray(img.reduce(supersample), dtype=np.float64) / 255.0


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------


def _position_phrase(position: str, *, bare: bool = False) -> str:
    if bare:
        return position
    return "at the center" if position == "center" else f"in the {position}"


def canonical_caption(scene: ShapeScene) -> str:
    """``"a {size} {color} {shape} in the {position} on a {background} background"``.

    The centre reads "at the center": "a small red circle at the center on a white background".
    """
    return (
        f"a {scene.size} {scene.color} {scene.shape} {_position_phrase(scene.position)} "
        f"on a {scene.background} background"
    )


def caption(
    scene: ShapeScene,
    rng: RngLike = None,
    drop_prob: float = 0.25,
    vary_order_prob: float = 0.3,
) -> str:
    """A training caption of ``scene``.

    Each attribute's words are dropped independently with probability ``drop_prob`` (a dropped
    shape reads "shape"); with probability ``vary_order_prob`` the phrases are given as a
    comma list in random order ("a red circle, small, top left, white background").
    ``drop_prob=0, vary_order_prob=0`` gives :func:`canonical_caption`.
    """
    if not 0 <= drop_prob <= 1 or not 0 <= vary_order_prob <= 1:
        raise ValueError(
            f"caption: drop_prob and vary_order_prob must be in [0, 1], got {drop_prob}, "
            f"{vary_order_prob}"
        )
    rng = _as_rng(rng)
    keep = {a: rng.random() >= drop_prob for a in ATTRIBUTES}
    noun = scene.shape if keep["shape"] else "shape"
    if rng.random() >= vary_order_prob:
        words = ["a"]
        if keep["size"]:
            words.append(scene.size)
        if keep["color"]:
            words.append(scene.color)
        words.append(noun)
        if keep["position"]:
            words.append(_position_phrase(scene.position))
        if keep["background"]:
            words.append(f"on a {scene.background} background")
        return " ".join(words)
    head = "a " + (f"{scene.color} " if keep["color"] else "") + noun
    parts = []
    if keep["size"]:
        parts.append(scene.size)
    if keep["position"]:
        parts.append(_position_phrase(scene.position, bare=rng.random() < 0.5))
    if keep["background"]:
        bg = f"{scene.background} background"
        parts.append(bg if rng.random() < 0.5 else f"on a {bg}")
    rng.shuffle(parts)
    parts.insert(0 if rng.random() < 0.5 else rng.randrange(len(parts) + 1), head)
    return ", ".join(parts)


def _words(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption states, as ``{attribute: value}`` (absent ones left out).

    Order-free: a colour followed by "background" is the background, another colour word is the
    object's colour; "top"/"bottom" + "left"/"right" or "center" ("centre", "middle") is the
    position; "big"/"little"/"tiny" are read as sizes. The first mention of each attribute wins.
    """
    words = [w for w in _words(text) if w[0].isalnum()]
    found: dict[str, str] = {}
    for i, w in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w in SHAPES:
            found.setdefault("shape", w)
        elif w in _SIZE_SYNONYMS:
            found.setdefault("size", _SIZE_SYNONYMS[w])
        elif w in PALETTE:
            found.setdefault("background" if nxt == "background" else "color", w)
        elif w in ("top", "bottom") and nxt in ("left", "right"):
            found.setdefault("position", f"{w} {nxt}")
        elif w in _CENTER_WORDS:
            found.setdefault("position", "center")
    return {a: found[a] for a in ATTRIBUTES if a in found}


# --------------------------------------------------------------------------------------------
# Judge
# --------------------------------------------------------------------------------------------


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
        err = float(np.abs(_soft(_coverage(shape, cx, cy, side, n)) - alpha).sum())
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


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


class ShapesTokenizer:
    """Word-level tokenizer for the shapes world, with the GPT-2 tokenizer's interface.

    Text is lower-cased and split into words and single punctuation marks; words outside the
    vocabulary map to :attr:`unk_token`. Ids: the vocabulary words in order, then ``<unk>``,
    then ``<end>`` (:attr:`end_token`, also used as padding).
    """

    UNK = "<unk>"
    END = "<end>"
    KIND = "glidekit.shapes_word_tokenizer"

    def __init__(self, words: Sequence[str] = SHAPES_WORDS, text_ctx: int = 32) -> None:
        words = [str(w) for w in words]
        if len(set(words)) != len(words):
            raise ValueError("ShapesTokenizer: words must be unique")
        bad = [w for w in words if w in (self.UNK, self.END) or _words(w) != [w]]
        if bad:
            raise ValueError(
                f"ShapesTokenizer: words must be single lower-case tokens, got {bad[:5]}"
            )
        if int(text_ctx) <= 0:
            raise ValueError(f"ShapesTokenizer: text_ctx must be positive, got {text_ctx}")
        self.words: tuple[str, ...] = tuple(words)
        self.text_ctx = int(text_ctx)
        self._ids = {w: i for i, w in enumerate(self.words)}
        self.unk_token = len(self.words)
        self.end_token = len(self.words) + 1

    @property
    def n_vocab(self) -> int:
        """Number of token ids (words + ``<unk>`` + ``<end>``)."""
        return len(self.words) + 2

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no end token appended)."""
        if not isinstance(text, str):
            raise TypeError(
                f"ShapesTokenizer.encode: text must be a str, got {type(text).__name__}"
            )
        return [self._ids.get(w, self.unk_token) for w in _words(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Words of ``ids`` joined by spaces (punctuation attached); end/pad tokens are dropped."""
        out = ""
        for i in ids:
            i = int(i)
            if i == self.end_token:
                continue
            tok = self.words[i] if 0 <= i < len(self.words) else self.UNK
            out += tok if (tok in _PUNCTUATION or not out) else " " + tok
        return out

    def padded_tokens_and_mask(
        self, tokens: Sequence[int], text_ctx: int | None = None
    ) -> tuple[list[int], list[bool]]:
        """Truncate ``tokens`` to ``text_ctx`` (default :attr:`text_ctx`) and pad with
        :attr:`end_token`; the mask is True for real tokens."""
        ctx = self.text_ctx if text_ctx is None else int(text_ctx)
        return padded_tokens_and_mask(tokens, ctx, self.end_token)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (ship it with a model)."""
        return {
            "kind": self.KIND,
            "version": 1,
            "words": list(self.words),
            "text_ctx": self.text_ctx,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShapesTokenizer:
        """Inverse of :meth:`to_dict`."""
        if data.get("kind") != cls.KIND or "words" not in data:
            raise ValueError(
                f"ShapesTokenizer.from_dict: not a shapes tokenizer dict (kind={data.get('kind')!r}); "
                "pass the output of ShapesTokenizer.to_dict()"
            )
        return cls(data["words"], int(data.get("text_ctx", 32)))

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict())

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ShapesTokenizer)
            and self.words == other.words
            and self.text_ctx == other.text_ctx
        )

    def __hash__(self) -> int:
        return hash((self.words, self.text_ctx))

    def __repr__(self) -> str:
        return f"ShapesTokenizer(n_vocab={self.n_vocab}, text_ctx={self.text_ctx})"


class ShapesClipTokenizer:
    """The shapes-world vocabulary in the form the CLIP text encoder reads: word ids shifted by
    one (0 is CLIP's padding), then the end token; the interface of
    :class:`glidekit.clip.ClipTokenizer` (``tokenize``), so a shapes CLIP guides from prompts."""

    def __init__(self, words: ShapesTokenizer) -> None:
        self.words = words

    def tokenize(self, texts: Sequence[str], ctx: int) -> tuple[list[list[int]], list[int]]:
        """Texts -> (rows of ``ctx`` ids, lengths including the end token)."""
        rows, lens = [], []
        for text in texts:
            ids = [i + 1 for i in self.words.encode(text)][: ctx - 1] + [self.words.end_token + 1]
            lens.append(len(ids))
            rows.append(ids + [0] * (ctx - len(ids)))
        return rows, lens

    def __repr__(self) -> str:
        return f"ShapesClipTokenizer({self.words!r})"


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


class _ShapesSampler:
    def __init__(
        self,
        image_size: int,
        seed: int,
        drop_prob: float,
        vary_order_prob: float,
        canonical: bool,
        include_scene: bool,
        inpaint_prob: float = 0.0,
    ) -> None:
        if int(image_size) < 8:
            raise ValueError(f"shapes dataset: image_size must be >= 8, got {image_size}")
        if not 0 <= inpaint_prob <= 1:
            raise ValueError(f"shapes dataset: inpaint_prob must be in [0, 1], got {inpaint_prob}")
        self.inpaint_prob = float(inpaint_prob)
        if not 0 <= drop_prob <= 1 or not 0 <= vary_order_prob <= 1:
            raise ValueError(
                "shapes dataset: drop_prob and vary_order_prob must be in [0, 1], got "
                f"{drop_prob}, {vary_order_prob}"
            )
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.drop_prob = float(drop_prob)
        self.vary_order_prob = float(vary_order_prob)
        self.canonical = bool(canonical)
        self.include_scene = bool(include_scene)

    def sample(self, scene_rng: random.Random, caption_rng: random.Random) -> dict:
        keep = None
        # The extra draw only when asked for: plain datasets keep their exact scenes.
        if self.inpaint_prob > 0 and scene_rng.random() < self.inpaint_prob:
            img, scene, box = inpaint_scene(scene_rng, self.image_size)
            keep = torch.ones(1, self.image_size, self.image_size)
            keep[:, box[1] : box[3], box[0] : box[2]] = 0
        else:
            img, scene = generate(scene_rng, self.image_size)
        text = (
            canonical_caption(scene)
            if self.canonical
            else caption(scene, caption_rng, self.drop_prob, self.vary_order_prob)
        )
        out: dict[str, Any] = {"image": to_tensor(img), "caption": text}
        if keep is not None:
            out["inpaint_keep"] = keep
        if self.include_scene:
            out["scene"] = scene.attributes()
        return out


class ShapesDataset(Dataset):
    """A fixed-length, seeded shapes-world dataset (map-style).

    Item ``i`` is ``{"image": FloatTensor (3, S, S) in [-1, 1], "caption": str}`` (plus
    ``"scene": {attribute: value}`` with ``include_scene``). The scene depends on
    ``(seed, i)`` only; the caption's drops/order also on the epoch (:meth:`set_epoch`).
    ``canonical=True`` gives canonical captions. ``inpaint_prob``: the share of items that are
    inpainting examples (:func:`inpaint_scene`): they also hold ``"inpaint_keep"``, a
    (1, S, S) float mask, 0 over the quadrant to repaint (which the caption describes), 1 else.
    """

    def __init__(
        self,
        length: int = 10_000,
        image_size: int = 64,
        *,
        seed: int = 0,
        drop_prob: float = 0.25,
        vary_order_prob: float = 0.3,
        canonical: bool = False,
        include_scene: bool = False,
        inpaint_prob: float = 0.0,
    ) -> None:
        if int(length) <= 0:
            raise ValueError(f"ShapesDataset: length must be positive, got {length}")
        self.length = int(length)
        self._sampler = _ShapesSampler(
            image_size, seed, drop_prob, vary_order_prob, canonical, include_scene, inpaint_prob
        )
        self.epoch = 0

    @property
    def image_size(self) -> int:
        return self._sampler.image_size

    def set_epoch(self, epoch: int) -> None:
        """Vary the captions' drops/order with the epoch (images stay the same)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not -self.length <= index < self.length:
            raise IndexError(f"ShapesDataset: index {index} out of range for {self.length} items")
        index %= self.length
        seed = self._sampler.seed
        return self._sampler.sample(
            random.Random(f"shapes-scene-{seed}-{index}"),
            random.Random(f"shapes-caption-{seed}-{self.epoch}-{index}"),
        )


class ShapesIterableDataset(IterableDataset):
    """An infinite (or ``samples_per_epoch``-long) seeded stream of shapes-world samples.

    Each (rank, DataLoader worker) gets its own stream, seeded by ``(seed, epoch, rank,
    worker)``; ``rank`` defaults to ``torch.distributed``'s when initialised. With
    ``samples_per_epoch``, that many samples are split over all ranks x workers. Items as
    :class:`ShapesDataset`.
    """

    def __init__(
        self,
        image_size: int = 64,
        *,
        seed: int = 0,
        drop_prob: float = 0.25,
        vary_order_prob: float = 0.3,
        canonical: bool = False,
        include_scene: bool = False,
        inpaint_prob: float = 0.0,
        samples_per_epoch: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if samples_per_epoch is not None and int(samples_per_epoch) <= 0:
            raise ValueError(
                f"ShapesIterableDataset: samples_per_epoch must be positive, got {samples_per_epoch}"
            )
        if (rank is None) != (world_size is None):
            raise ValueError("ShapesIterableDataset: pass both rank and world_size, or neither")
        self._sampler = _ShapesSampler(
            image_size, seed, drop_prob, vary_order_prob, canonical, include_scene, inpaint_prob
        )
        self.samples_per_epoch = None if samples_per_epoch is None else int(samples_per_epoch)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose streams the next iteration produces."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict]:
        if self.world_size is not None:
            rank, world = int(self.rank), int(self.world_size)  # type: ignore[arg-type]
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = 0, 1
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        slot, n_slots = rank * nw + wid, world * nw
        rng = random.Random(f"shapes-stream-{self._sampler.seed}-{self.epoch}-{slot}")
        count = 0
        while True:
            if self.samples_per_epoch is not None:
                # this slot's share of samples_per_epoch
                if count >= (self.samples_per_epoch - slot + n_slots - 1) // n_slots:
                    return
            count += 1
            yield self._sampler.sample(rng, rng)
