"""Tokenizers for the diffusion models' text transformer.

The released models read GPT-2 byte-level BPE ids of the lower-cased prompt, truncated or padded
to ``text_ctx`` (128) with the end token 50256, plus a boolean mask (True for real tokens). Any
object with the :class:`Tokenizer` interface can stand in (the shapes models ship a tiny
word-level vocabulary).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from glidekit.errors import VocabularyUnavailableError

logger = logging.getLogger(__name__)


@runtime_checkable
class Tokenizer(Protocol):
    """What the diffusion models need from a tokenizer."""

    @property
    def n_vocab(self) -> int: ...

    @property
    def end_token(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...


def padded_tokens_and_mask(
    ids: Sequence[int], text_ctx: int, end_token: int, *, warn: bool = True
) -> tuple[list[int], list[bool]]:
    """Truncate ``ids`` to ``text_ctx`` and pad with ``end_token``.

    Returns (tokens, mask): both of length ``text_ctx``; mask is True for real tokens. The empty
    list gives the unconditional row used by classifier-free guidance (all padding, all False).
    """
    if text_ctx <= 0:
        raise ValueError(f"text_ctx must be positive, got {text_ctx}")
    ids = list(ids)
    if len(ids) > text_ctx:
        if warn:
            logger.warning(
                "prompt is %d tokens long; truncated to the model's text_ctx=%d",
                len(ids),
                text_ctx,
            )
        ids = ids[:text_ctx]
    n = len(ids)
    return ids + [end_token] * (text_ctx - n), [True] * n + [False] * (text_ctx - n)


class GPT2Tokenizer:
    """GPT-2 byte-level BPE through tiktoken's "gpt2" encoding, lower-casing first as GLIDE does.

    tiktoken downloads and caches its vocabulary on first use (``TIKTOKEN_CACHE_DIR`` points it
    at a local copy). Literal special-token text such as ``<|endoftext|>`` is ordinary text here.
    """

    def __init__(self, text_ctx: int = 128) -> None:
        self.text_ctx = text_ctx
        self._encoding = None

    @property
    def encoding(self):  # tiktoken.Encoding, loaded on first use
        if self._encoding is None:
            import tiktoken

            try:
                self._encoding = tiktoken.get_encoding("gpt2")
            except Exception as exc:  # no network and no cached vocabulary, most likely
                raise VocabularyUnavailableError(
                    "GPT-2 tokenizer: tiktoken could not load its 'gpt2' vocabulary "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). It downloads it "
                    "once on first use; offline, set TIKTOKEN_CACHE_DIR to a folder holding "
                    "tiktoken's cached vocabulary files (the released models need it; the "
                    "embedded shapes models do not)."
                ) from exc
        return self._encoding

    @property
    def n_vocab(self) -> int:
        return 50257

    @property
    def end_token(self) -> int:
        return 50256

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self.encoding.encode(text.lower(), disallowed_special=())

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode(list(ids))

    def padded_tokens_and_mask(
        self, ids: Sequence[int], text_ctx: int | None = None
    ) -> tuple[list[int], list[bool]]:
        return padded_tokens_and_mask(ids, text_ctx or self.text_ctx, self.end_token)


def tokenize_batch(
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    text_ctx: int,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (tokens (B, text_ctx) int64, mask (B, text_ctx) bool). "" is unconditional."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single str")
    toks, masks = [], []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        t, m = padded_tokens_and_mask(ids, text_ctx, tokenizer.end_token)
        toks.append(t)
        masks.append(m)
    return (
        torch.tensor(toks, dtype=torch.long, device=device),
        torch.tensor(masks, dtype=torch.bool, device=device),
    )


def tokenizer_to_dict(tokenizer: Tokenizer) -> dict:
    """A JSON-able description from which :func:`tokenizer_from_dict` rebuilds the tokenizer."""
    if isinstance(tokenizer, GPT2Tokenizer):
        return {"type": "gpt2", "text_ctx": tokenizer.text_ctx}
    to_dict = getattr(tokenizer, "to_dict", None)
    if to_dict is None:
        raise TypeError(f"{type(tokenizer).__name__} cannot be saved: it has no to_dict()")
    return {"type": getattr(tokenizer, "type_name", type(tokenizer).__name__), "data": to_dict()}


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer saved by :func:`tokenizer_to_dict` (e.g. a model's shipped vocabulary)."""
    kind = d.get("type")
    if kind == "gpt2":
        return GPT2Tokenizer(int(d.get("text_ctx", 128)))
    if kind in ("shapes", "ShapesTokenizer"):
        from glidekit.data.shapes import ShapesTokenizer

        return ShapesTokenizer.from_dict(d["data"])
    raise ValueError(f"tokenizer type {kind!r} is unknown; expected 'gpt2' or 'shapes'")
