"""Word-level tokenizers of the shapes world (the embedded shapes models' vocabulary).

:class:`ShapesTokenizer` has the GPT-2 tokenizer's interface over :data:`SHAPES_WORDS`, small
enough to ship with a model as JSON; :class:`ShapesClipTokenizer` gives the same words in the form
the CLIP text encoder reads. The vocabulary is every word the shapes world's captions use
(:mod:`glidekit.data.shapes`), spelled out here because the tokenizer layer sits below the data
layer; ``tests/test_shapes.py`` checks the two agree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from glidekit.tokenizer.base import padded_tokens_and_mask

#: Punctuation marks the captions may use; each is one token.
PUNCTUATION: tuple[str, ...] = (",", ".", ":", ";", "-")
#: Every word the shapes world's captions use, plus punctuation: fillers, sizes, colours,
#: shapes, position words (in this order; the order fixes the token ids of shipped models).
SHAPES_WORDS: tuple[str, ...] = (
    *("a", "in", "the", "at", "on", "background", "shape"),
    *("small", "large"),
    *("red", "green", "blue", "yellow", "purple", "orange", "white", "black"),
    *("circle", "square", "triangle"),
    *("top", "bottom", "left", "right", "center"),
    *PUNCTUATION,
)

_TOKEN_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words (runs of a-z0-9) and single other marks."""
    return _TOKEN_RE.findall(text.lower())


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
        bad = [w for w in words if w in (self.UNK, self.END) or split_words(w) != [w]]
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
        return [self._ids.get(w, self.unk_token) for w in split_words(text)]

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` outside the vocabulary (they encode as :attr:`unk_token`)."""
        return [w for w in split_words(text) if w not in self._ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Words of ``ids`` joined by spaces (punctuation attached); end/pad tokens are dropped."""
        out = ""
        for i in ids:
            i = int(i)
            if i == self.end_token:
                continue
            tok = self.words[i] if 0 <= i < len(self.words) else self.UNK
            out += tok if (tok in PUNCTUATION or not out) else " " + tok
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


__all__ = ["PUNCTUATION", "SHAPES_WORDS", "ShapesClipTokenizer", "ShapesTokenizer", "split_words"]
