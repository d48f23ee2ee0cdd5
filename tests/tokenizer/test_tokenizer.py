import json
import logging

import pytest
import torch
from conftest import REFERENCE

from glidekit.errors import VocabularyUnavailableError
from glidekit.tokenizer import (
    GPT2Tokenizer,
    ShapesTokenizer,
    Tokenizer,
    padded_tokens_and_mask,
    tokenize_batch,
    unknown_words,
)

GOLDEN = json.loads((REFERENCE / "tokenizer_golden.json").read_text())


@pytest.fixture(scope="module")
def tok() -> GPT2Tokenizer:
    return GPT2Tokenizer()


def test_header_facts(tok):
    assert tok.n_vocab == GOLDEN["gpt2"]["n_vocab"]
    assert tok.end_token == GOLDEN["gpt2"]["end_token"]
    assert tok.text_ctx == GOLDEN["gpt2"]["text_ctx"]
    assert isinstance(tok, Tokenizer)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: c["text"][:30])
def test_matches_reference(tok, case, caplog):
    ids = tok.encode(case["text"])
    assert ids == case["gpt2_ids"]
    with caplog.at_level(logging.WARNING):
        tokens, mask = tok.padded_tokens_and_mask(ids, 128)
    assert tokens == case["gpt2_padded_tokens_128"]
    assert mask == case["gpt2_mask_128"]
    assert ("truncated" in caplog.text) == (len(ids) > 128)


def test_empty_prompt_is_unconditional_row(tok):
    tokens, mask = tok.padded_tokens_and_mask(tok.encode(""), 128)
    assert tokens == [50256] * 128 and mask == [False] * 128


def test_tokenize_batch_shapes(tok):
    tokens, mask = tokenize_batch(tok, ["a corgi", ""], 16)
    assert tokens.shape == mask.shape == (2, 16)
    assert tokens.dtype == torch.long and mask.dtype == torch.bool
    assert mask[0].sum() == len(tok.encode("a corgi")) and mask[1].sum() == 0


def test_bad_input(tok):
    with pytest.raises(TypeError, match="text"):
        tok.encode(123)
    with pytest.raises(TypeError, match="prompts"):
        tokenize_batch(tok, "a single string", 16)
    with pytest.raises(ValueError, match="text_ctx"):
        padded_tokens_and_mask([1, 2], 0, 50256)


def test_long_prompt_truncated_with_warning(tok, caplog):
    with caplog.at_level(logging.WARNING, logger="glidekit.tokenizer"):
        tokens, mask = tokenize_batch(tok, ["corgi " * 300], 128)
    assert tokens.shape == (1, 128) and bool(mask.all())
    assert "truncated" in caplog.text


def test_missing_vocabulary_is_a_clear_error(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError(f"Failed to resolve host for {name}'s vocab.bpe")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(VocabularyUnavailableError, match="TIKTOKEN_CACHE_DIR") as info:
        GPT2Tokenizer().encode("a corgi")
    assert "ConnectionError" in str(info.value)


def test_unknown_words_only_for_closed_vocabularies(tok):
    shapes = ShapesTokenizer()
    prompts = ["a fuchsia circle, big", "a fuchsia dog on a red background"]
    assert unknown_words(shapes, prompts) == ["fuchsia", "big", "dog"]
    assert unknown_words(shapes, ["a red circle"]) == []
    assert unknown_words(tok, prompts) == []  # byte-level BPE encodes any text
    with pytest.raises(TypeError, match="prompts"):
        unknown_words(shapes, "a red circle")  # type: ignore[arg-type]


def test_tokenizer_layer_imports_nothing_above_it():
    """Loading a tokenizer (e.g. a model file's) must not import models, data or checkpoints."""
    import subprocess
    import sys

    code = (
        "import sys, glidekit.tokenizer; "
        "bad = [m for m in sys.modules if m.startswith(('glidekit.data', 'glidekit.checkpoints',"
        " 'glidekit.nn', 'glidekit.pipelines'))]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
