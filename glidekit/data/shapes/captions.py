"""Captions of shapes-world scenes, and reading the attributes a caption states.

:func:`canonical_caption` / :func:`caption` describe a scene ("a small red circle in the top
left on a white background"; in training each attribute is dropped with probability
``drop_prob`` and the phrase order is sometimes varied); :func:`parse_caption` reads the
attributes back from any caption. The words they use are the tokenizer's
:data:`glidekit.tokenizer.shapes.SHAPES_WORDS`.
"""

from __future__ import annotations

from glidekit.data.shapes.world import ATTRIBUTES, PALETTE, SHAPES, RngLike, ShapeScene, as_rng
from glidekit.tokenizer.shapes import split_words

_SIZE_SYNONYMS = {
    "small": "small",
    "little": "small",
    "tiny": "small",
    "large": "large",
    "big": "large",
}
_CENTER_WORDS = ("center", "centre", "middle")


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
    rng = as_rng(rng)
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


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption states, as ``{attribute: value}`` (absent ones left out).

    Order-free: a colour followed by "background" is the background, another colour word is the
    object's colour; "top"/"bottom" + "left"/"right" or "center" ("centre", "middle") is the
    position; "big"/"little"/"tiny" are read as sizes. The first mention of each attribute wins.
    """
    words = [w for w in split_words(text) if w[0].isalnum()]
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


__all__ = ["canonical_caption", "caption", "parse_caption"]
