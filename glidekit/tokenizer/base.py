"""What every tokenizer provides, and the padding the diffusion models' text transformer reads.

The released models read token ids truncated or padded to ``text_ctx`` (128) with the end token,
plus a boolean mask (True for real tokens). Any object with the :class:`Tokenizer` interface can
stand in for GPT-2 (the shapes models ship a tiny word-level vocabulary).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

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


def unknown_words(tokenizer: Tokenizer, prompts: Sequence[str]) -> list[str]:
    """Words of ``prompts`` that ``tokenizer`` does not know, each once, in order of appearance.

    A closed vocabulary (:class:`~glidekit.tokenizer.shapes.ShapesTokenizer`) reports them
    through an ``unknown_words(text)`` method and maps them to its unknown token; byte-level BPE
    (GPT-2, CLIP) encodes any text, so it has none.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single str")
    find = getattr(tokenizer, "unknown_words", None)
    if find is None:
        return []
    return list(dict.fromkeys(w for prompt in prompts for w in find(prompt)))
