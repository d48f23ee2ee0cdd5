"""The CLIP BPE tokenizer, now :mod:`glidekit.tokenizer.clip` (this import path still works)."""

from glidekit.tokenizer.clip import (
    END_TEXT,
    PACKAGED_VOCAB,
    START_TEXT,
    VOCAB_FILENAME,
    ClipTokenizer,
    bytes_to_unicode,
    clean_text,
    default_cache_dir,
    default_vocab_path,
)

__all__ = [
    "END_TEXT",
    "PACKAGED_VOCAB",
    "START_TEXT",
    "VOCAB_FILENAME",
    "ClipTokenizer",
    "bytes_to_unicode",
    "clean_text",
    "default_cache_dir",
    "default_vocab_path",
]
