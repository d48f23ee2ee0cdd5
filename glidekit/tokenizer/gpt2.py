"""The GPT-2 byte-level BPE tokenizer the released GLIDE models read (through tiktoken).

The prompt is lower-cased, encoded, then truncated or padded to ``text_ctx`` (128) with the end
token 50256 (:func:`glidekit.tokenizer.base.padded_tokens_and_mask`).
"""

from __future__ import annotations

from collections.abc import Sequence

import tiktoken

from glidekit.errors import VocabularyUnavailableError
from glidekit.tokenizer.base import padded_tokens_and_mask


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
