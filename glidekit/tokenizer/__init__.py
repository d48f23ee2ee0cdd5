"""Tokenizers: prompt text -> token ids for the diffusion models and the noise-aware CLIP.

* :mod:`~glidekit.tokenizer.base`: the :class:`Tokenizer` interface, padding to ``text_ctx``
  and batching (:func:`tokenize_batch`);
* :mod:`~glidekit.tokenizer.gpt2`: GPT-2 BPE, what the released diffusion models read;
* :mod:`~glidekit.tokenizer.clip`: CLIP BPE, what the released noise-aware CLIP reads;
* :mod:`~glidekit.tokenizer.shapes`: the shapes world's word-level vocabularies.

A model file records its tokenizer with :func:`glidekit.checkpoints.tokenizer_to_metadata`.

Layer: below ``glidekit.nn``; imports only the utilities (``glidekit.errors``,
``glidekit.fileio``), never torch models, checkpoints or the training data.
"""

from glidekit.errors import VocabularyUnavailableError
from glidekit.tokenizer.base import (
    Tokenizer,
    padded_tokens_and_mask,
    tokenize_batch,
    unknown_words,
)
from glidekit.tokenizer.clip import ClipTokenizer
from glidekit.tokenizer.gpt2 import GPT2Tokenizer
from glidekit.tokenizer.shapes import SHAPES_WORDS, ShapesClipTokenizer, ShapesTokenizer

__all__ = [
    "SHAPES_WORDS",
    "ClipTokenizer",
    "GPT2Tokenizer",
    "ShapesClipTokenizer",
    "ShapesTokenizer",
    "Tokenizer",
    "VocabularyUnavailableError",
    "padded_tokens_and_mask",
    "tokenize_batch",
    "unknown_words",
]
