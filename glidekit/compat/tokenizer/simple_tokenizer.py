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


class SimpleTokenizer(ClipTokenizer):
    """CLIP BPE tokenizer (49,408 ids; start 49406, end 49407) with the official interface.

    ``bpe_path``: the gzipped merges file (default: the one shipped with glidekit).
    Attributes as officially: ``encoder`` ({token: id}), ``decoder`` ({id: token}),
    ``byte_encoder``/``byte_decoder``, ``bpe_ranks`` ({pair: rank}), ``cache``, ``pat``.
    """

    def __init__(self, bpe_path: str | os.PathLike[str] = default_bpe()) -> None:
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

    def bpe(self, token: str) -> str:
        """The BPE pieces of one word ``token`` (in the byte alphabet), space-separated, the
        last one ending in ``</w>``."""
        if token not in self.cache:
            self.cache[token] = " ".join(self._bpe(token))
        return self.cache[token]

    def decode(self, tokens: Sequence[int]) -> str:  # type: ignore[override]
        """The text of ``tokens``: each word end (``</w>``) becomes a space; special tokens are
        spelled out; invalid UTF-8 becomes U+FFFD."""
        text = "".join(self.decoder[t] for t in tokens)
        parts = [
            part
            if part in ("<|startoftext|>", "<|endoftext|>")
            else bytes(self.byte_decoder[c] for c in part).decode("utf-8", errors="replace")
            for part in regex.split(r"(<\|startoftext\|>|<\|endoftext\|>|</w>)", text)
            if part and part != _WORD_END
        ]
        del parts
        raw = bytearray()
        for part in regex.split(r"(</w>)", text):
            if part == _WORD_END:
                raw += b" "
            else:
                raw += _to_bytes(part, self.byte_decoder)
        return raw.decode("utf-8", errors="replace")


def _to_bytes(text: str, byte_decoder: dict[str, int]) -> bytes:
    # Special tokens are not in the byte alphabet: they stand for their own UTF-8 text.
    out = bytearray()
    for piece in regex.split(r"(<\|startoftext\|>|<\|endoftext\|>)", text):
        if piece in ("<|startoftext|>", "<|endoftext|>"):
            out += piece.encode("utf-8")
        else:
            out += bytes(byte_decoder[c] for c in piece)
    return bytes(out)


__all__ = [
    "SimpleTokenizer",
    "basic_clean",
    "bytes_to_unicode",
    "default_bpe",
    "default_bpe",
    "get_pairs",
    "whitespace_clean",
]
