"""The CLIP byte-level BPE tokenizer used by GLIDE's noise-aware CLIP text encoder.

Text is cleaned (``ftfy.fix_text``, HTML-unescaped twice, stripped, whitespace runs collapsed to
one space, lower-cased), split with the CLIP pre-tokenisation regex, mapped byte-by-byte through
the GPT-2 byte-to-unicode table and merged with word-final (``</w>``) BPE. The literal strings
``<|startoftext|>`` / ``<|endoftext|>`` become the special ids 49406 / 49407.

The vocabulary is the merges file ``bpe_simple_vocab_16e6.txt.gz`` shipped with GLIDE (and CLIP,
MIT licence); glidekit ships it inside the package, so nothing is downloaded. A copy in the cache
directory's ``vocab/`` folder takes precedence; pass ``vocab_path`` to read it from elsewhere.
"""

from __future__ import annotations

import gzip
import html
import os
from collections.abc import Sequence
from pathlib import Path

import ftfy
import regex

from glidekit.fileio import cache_dir

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
START_TEXT = "<|startoftext|>"
END_TEXT = "<|endoftext|>"
# Number of merges used: 49152 tokens - 256 byte tokens - 2 special tokens.
_N_MERGES = 49152 - 256 - 2
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


PACKAGED_VOCAB = Path(__file__).with_name(VOCAB_FILENAME)


def default_cache_dir() -> Path:
    """The glidekit cache directory (:func:`glidekit.fileio.cache_dir`)."""
    return cache_dir()


def default_vocab_path() -> Path:
    """The CLIP merges file used by default: ``<cache>/vocab/<VOCAB_FILENAME>`` if a user put one
    there, else the copy shipped inside the package."""
    cached = default_cache_dir() / "vocab" / VOCAB_FILENAME
    return cached if cached.is_file() or not PACKAGED_VOCAB.is_file() else PACKAGED_VOCAB


def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 table mapping each byte to a printable unicode character.

    Printable Latin-1 bytes map to themselves; the others map to ``chr(256 + n)`` in byte
    order. Dict order (printable bytes first) is the order of the first 256 vocabulary entries.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clean_text(text: str) -> str:
    """ftfy fix, HTML-unescape twice, strip, collapse whitespace, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class ClipTokenizer:
    """CLIP BPE tokenizer (49,408 tokens, context 77).

    Args:
        vocab_path: the gzipped merges file ``bpe_simple_vocab_16e6.txt.gz``; ``None`` means
            :func:`default_vocab_path`. Raises ``FileNotFoundError`` (saying where to put the file)
            when it does not exist.
    """

    start_token: int = 49406
    end_token: int = 49407
    text_ctx: int = 77

    def __init__(self, vocab_path: str | os.PathLike[str] | None = None) -> None:
        path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"CLIP tokenizer vocabulary not found at {path}. Put GLIDE's {VOCAB_FILENAME} "
                f"there (default location: {default_vocab_path()}, set GLIDEKIT_CACHE to move the "
                "cache), or pass vocab_path= pointing at the file."
            )
        self.vocab_path = path
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
        if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(
                f"vocab_path: {path} is not a CLIP merges file (expected a header line and "
                f">= {_N_MERGES} lines of two symbols each)"
            )
        self._byte_encoder = bytes_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        vocab = list(self._byte_encoder.values())
        vocab += [c + "</w>" for c in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += [START_TEXT, END_TEXT]
        self._encoder = {tok: i for i, tok in enumerate(vocab)}
        self._decoder = vocab
        self._ranks = {m: i for i, m in enumerate(merges)}
        # Per-instance memo of word -> BPE pieces; special tokens map to themselves.
        self._cache: dict[str, list[str]] = {START_TEXT: [START_TEXT], END_TEXT: [END_TEXT]}

    @property
    def n_vocab(self) -> int:
        """Number of token ids (49,408)."""
        return len(self._decoder)

    def _bpe(self, word: str) -> list[str]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = set(zip(parts[:-1], parts[1:], strict=True))
            best = min(pairs, key=lambda p: self._ranks.get(p, float("inf")))
            if best not in self._ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == best[0] and parts[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no start/end tokens added). Empty or blank text -> []."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        for piece in _PATTERN.findall(clean_text(text)):
            if piece in (START_TEXT, END_TEXT):
                word = piece
            else:
                word = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self._encoder[p] for p in self._bpe(word))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Approximate inverse of :meth:`encode` (cleaned text; word ends become spaces)."""
        words: list[str] = []
        for i in ids:
            piece = self._decoder[i]
            if piece in (START_TEXT, END_TEXT):
                words.append(f" {piece} ")
                continue
            end = piece.endswith("</w>")
            piece = piece[:-4] if end else piece
            data = bytes(self._byte_decoder[c] for c in piece)
            words.append(data.decode("latin-1") + (" " if end else ""))
        raw = "".join(words).encode("latin-1")
        return _WHITESPACE.sub(" ", raw.decode("utf-8", errors="replace")).strip()

    def padded_tokens_and_len(
        self, ids: Sequence[int], text_ctx: int = 77
    ) -> tuple[list[int], int]:
        """``[start] + ids[:text_ctx - 2] + [end]``, padded with 0 to ``text_ctx``.

        Returns ``(tokens, length)`` where ``length`` counts the real tokens including the start
        and end tokens (the text feature is read at position ``length - 1``).
        """
        if text_ctx < 2:
            raise ValueError(f"text_ctx must be >= 2 (room for start and end), got {text_ctx}")
        tokens = [self.start_token] + list(ids)[: text_ctx - 2] + [self.end_token]
        length = len(tokens)
        return tokens + [0] * (text_ctx - length), length

    def tokenize(
        self, prompts: Sequence[str], text_ctx: int = 77
    ) -> tuple[list[list[int]], list[int]]:
        """Encode and pad every prompt: returns (tokens per prompt, lengths)."""
        rows, lens = [], []
        for prompt in prompts:
            tokens, length = self.padded_tokens_and_len(self.encode(prompt), text_ctx)
            rows.append(tokens)
            lens.append(length)
        return rows, lens


__all__ = [
    "ClipTokenizer",
    "END_TEXT",
    "PACKAGED_VOCAB",
    "START_TEXT",
    "VOCAB_FILENAME",
    "bytes_to_unicode",
    "clean_text",
    "default_cache_dir",
    "default_vocab_path",
]
