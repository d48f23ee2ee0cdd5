"""``glide_text2im.tokenizer.simple_tokenizer``: CLIP's BPE, what the noise-aware CLIP reads.

:class:`SimpleTokenizer` is :class:`glidekit.tokenizer.ClipTokenizer` (the official ids: the
same vocabulary file, cleaning, regex and word-final BPE) with the official attribute names and
the official :meth:`~SimpleTokenizer.decode` (word ends become spaces; nothing is stripped).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence

import ftfy
import regex

from glidekit.compat.tokenizer.bpe import get_pairs
from glidekit.tokenizer.clip import PACKAGED_VOCAB, ClipTokenizer, bytes_to_unicode

_BLANKS = regex.compile(r"\s+")
_WORD_END = "</w>"


def default_bpe() -> str:
    """Path of the CLIP merges file shipped inside the package (``bpe_simple_vocab_16e6.txt.gz``)."""
    return str(PACKAGED_VOCAB)


def basic_clean(text: str) -> str:
    """``ftfy.fix_text``, HTML-unescaped twice, stripped."""
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def whitespace_clean(text: str) -> str:
    """Every run of whitespace collapsed to one space, stripped."""
    return _BLANKS.sub(" ", text).strip()


_DEFAULT_BPE = default_bpe()


class SimpleTokenizer(ClipTokenizer):
    """CLIP BPE tokenizer (49,408 ids; start 49406, end 49407) with the official interface.

    ``bpe_path``: the gzipped merges file (default: the one shipped with glidekit).
    Attributes as officially: ``encoder`` ({token: id}), ``decoder`` ({id: token}),
    ``byte_encoder``/``byte_decoder``, ``bpe_ranks`` ({pair: rank}), ``cache``, ``pat``.
    """

    def __init__(self, bpe_path: str | os.PathLike[str] = _DEFAULT_BPE) -> None:
        super().__init__(bpe_path)
        self.byte_encoder = self._byte_encoder
        self.byte_decoder = self._byte_decoder
        self.encoder = self._encoder
        self.decoder = dict(enumerate(self._decoder))
        self.bpe_ranks = self._ranks
        self.cache: dict[str, str] = {}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
            r"""|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def padded_tokens_and_len(  # type: ignore[override]
        self, tokens: Sequence[int], text_ctx: int
    ) -> tuple[list[int], int]:
        """``[start] + tokens[:text_ctx - 2] + [end]`` padded with 0 to ``text_ctx``, and the
        number of real tokens (start and end included)."""
        return super().padded_tokens_and_len(tokens, text_ctx)

    def bpe(self, token: str) -> str:
        """The BPE pieces of one word ``token`` (in the byte alphabet), space-separated, the
        last one ending in ``</w>``."""
        if token not in self.cache:
            self.cache[token] = " ".join(self._bpe(token))
        return self.cache[token]

    def decode(self, tokens: Sequence[int]) -> str:  # type: ignore[override]
        """The text of ``tokens``: every word end (``</w>``) becomes a space (a trailing one
        included), special tokens are spelled out, invalid UTF-8 becomes U+FFFD."""
        # Token texts, "</w>" and the special tokens are all in the byte alphabet (printable
        # ASCII maps to itself), so one pass over the characters gives the bytes.
        text = "".join(self.decoder[t] for t in tokens)
        raw = bytes(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")
        return raw.replace(_WORD_END, " ")


__all__ = [
    "SimpleTokenizer",
    "basic_clean",
    "bytes_to_unicode",
    "default_bpe",
    "get_pairs",
    "whitespace_clean",
]
