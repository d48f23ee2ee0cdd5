"""``glide_text2im.tokenizer.bpe``: the GPT-2 byte-level BPE the diffusion models read.

:func:`get_encoder` returns an :class:`Encoder` over GPT-2's vocabulary (50,257 tokens) that
gives the official ids: the text is lower-cased, split with GPT-2's regex and merged by tiktoken
(the same vocabulary files, read through tiktoken's cache: ``TIKTOKEN_CACHE_DIR`` points it at a
local copy when offline). The literal text ``<|endoftext|>`` is ordinary text, as officially.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence

import regex
import tiktoken
import tiktoken.load

from glidekit.errors import VocabularyUnavailableError
from glidekit.tokenizer import GPT2Tokenizer, padded_tokens_and_mask
from glidekit.tokenizer.clip import bytes_to_unicode

#: GPT-2's pre-tokenisation regex (contractions, letter runs, digit runs, other runs, blanks).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# The GPT-2 vocabulary files as tiktoken fetches and caches them (its cache key is the URL), with
# their sha256: the same bytes GLIDE ships gzipped as encoder.json.gz / vocab.bpe.gz.
_VOCAB_BPE = (
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
)
_ENCODER_JSON = (
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
)


def get_pairs(word: Sequence[str]) -> set[tuple[str, str]]:
    """The set of adjacent symbol pairs of ``word`` (a tuple of symbols)."""
    return set(zip(word[:-1], word[1:], strict=True))


class Encoder:
    """Byte-level BPE over the vocabulary ``encoder`` ({token text: id}) and ``bpe_merges``
    (pairs of token texts, highest priority first), with the official attributes and methods.

    Tokens are written in GPT-2's byte-to-unicode alphabet (:func:`bytes_to_unicode`).
    ``errors``: how :meth:`decode` treats invalid UTF-8 (``bytes.decode``'s argument).
    Merging is tiktoken's, which merges any adjacent pair whose concatenation is a merge result;
    for GPT-2's own tables that is exactly the official pairwise BPE.
    """

    def __init__(
        self,
        encoder: Mapping[str, int],
        bpe_merges: Iterable[tuple[str, str]],
        errors: str = "replace",
    ) -> None:
        self.encoder = encoder
        self.decoder = {v: k for k, v in encoder.items()}
        self.errors = errors
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        merges = [tuple(m) for m in bpe_merges]
        self.bpe_ranks = dict(zip(merges, range(len(merges)), strict=True))
        self.cache: dict[str, str] = {}
        self.pat = regex.compile(GPT2_PATTERN)
        self._encoding: tiktoken.Encoding | None = None
        # tiktoken's rank -> this vocabulary's id (None: they are the same numbers).
        self._ids: list[int] | None = None

    @property
    def n_vocab(self) -> int:
        return len(self.encoder)

    @property
    def end_token(self) -> int:
        """The last id (``<|endoftext|>`` = 50256 for GPT-2): the padding token."""
        return self.n_vocab - 1

    def padded_tokens_and_mask(
        self, tokens: Sequence[int], text_ctx: int
    ) -> tuple[list[int], list[bool]]:
        """``tokens`` cut to ``text_ctx`` and padded with :attr:`end_token`; mask True for real
        tokens. ``[]`` gives the unconditional row of classifier-free guidance."""
        return padded_tokens_and_mask(tokens, text_ctx, self.end_token, warn=False)

    def _tiktoken(self) -> tiktoken.Encoding:
        if self._encoding is None:
            # Ranks in merge order after the 256 single bytes, as tiktoken's BPE needs them;
            # a merge whose result is already ranked (or not in this alphabet) adds nothing.
            ranks: dict[bytes, int] = {}
            ids: list[int] = []
            for byte, char in self.byte_encoder.items():
                ranks[bytes([byte])] = len(ranks)
                ids.append(self.encoder.get(char, -1))
            for first, second in self.bpe_ranks:
                text = first + second
                if any(c not in self.byte_decoder for c in text):
                    continue
                piece = bytes(self.byte_decoder[c] for c in text)
                if piece not in ranks:
                    ranks[piece] = len(ranks)
                    ids.append(self.encoder.get(text, -1))
            self._encoding = tiktoken.Encoding(
                "glidekit-compat-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                special_tokens={},
            )  # fmt: skip
            self._ids = None if ids == list(range(len(ids))) else ids
        return self._encoding

    def _to_ids(self, ranks: list[int]) -> list[int]:
        if self._ids is None:
            return ranks
        ids = [self._ids[r] for r in ranks]
        if -1 in ids:
            missing = self._tiktoken().decode_single_token_bytes(ranks[ids.index(-1)])
            raise KeyError(f"token {missing!r} is a merge result but not in the vocabulary")
        return ids

    def bpe(self, token: str) -> str:
        """The BPE pieces of one pre-tokenised piece ``token`` (in the byte alphabet), joined
        by spaces."""
        if token not in self.cache:
            data = bytes(self.byte_decoder[c] for c in token)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(
                    f"token: {token!r} is not UTF-8 text in GPT-2's byte alphabet"
                ) from None
            encoding = self._tiktoken()
            pieces = encoding.decode_tokens_bytes(encoding.encode_ordinary(text))
            self.cache[token] = " ".join(
                "".join(self.byte_encoder[b] for b in piece) for piece in pieces
            )
        return self.cache[token]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` lower-cased (no special tokens: ``<|endoftext|>`` is text)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._to_ids(self._tiktoken().encode_ordinary(text.lower()))

    def decode(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens`` (invalid UTF-8 handled per :attr:`errors`)."""
        chars = "".join(self.decoder[t] for t in tokens)
        return bytes(self.byte_decoder[c] for c in chars).decode("utf-8", errors=self.errors)


@functools.lru_cache(maxsize=1)
def _gpt2_tables() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    try:
        vocab_bpe = tiktoken.load.read_file_cached(*_VOCAB_BPE).decode("utf-8")
        encoder = json.loads(tiktoken.load.read_file_cached(*_ENCODER_JSON))
    except Exception as exc:  # offline without a cached copy, most likely
        raise VocabularyUnavailableError(
            "get_encoder: could not load GPT-2's encoder.json/vocab.bpe through tiktoken "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
            "offline, set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached copies"
        ) from exc
    # First line: a version comment; last: empty.
    merges = tuple(tuple(line.split()) for line in vocab_bpe.split("\n")[1:-1])
    return encoder, merges  # type: ignore[return-value]


def get_encoder() -> Encoder:
    """The GPT-2 :class:`Encoder` the diffusion models read (a new one per call)."""
    encoder, merges = _gpt2_tables()
    result = Encoder(dict(encoder), merges)
    # Same tables as tiktoken's "gpt2" encoding: reuse it (its ranks are these ids).
    result._encoding = GPT2Tokenizer().encoding
    return result


__all__ = ["Encoder", "bytes_to_unicode", "get_encoder", "get_pairs"]
