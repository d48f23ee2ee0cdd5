"""CLIP BPE tokenizer against the reference tokenizer outputs."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import REFERENCE

from glidekit.tokenizer.clip import PACKAGED_VOCAB, ClipTokenizer, default_vocab_path

VOCAB = REFERENCE / "vocab" / "bpe_simple_vocab_16e6.txt.gz"
GOLDEN = json.loads((REFERENCE / "tokenizer_golden.json").read_text())


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer(VOCAB)


def test_constants(tokenizer: ClipTokenizer) -> None:
    ref = GOLDEN["clip"]
    assert tokenizer.n_vocab == ref["n_vocab"] == 49408
    assert tokenizer.start_token == ref["start_token"]
    assert tokenizer.end_token == ref["end_token"]
    assert tokenizer.text_ctx == ref["text_ctx"]


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: repr(c["text"][:30]))
def test_golden_cases(tokenizer: ClipTokenizer, case: dict) -> None:
    ids = tokenizer.encode(case["text"])
    assert ids == case["clip_ids"]
    tokens, length = tokenizer.padded_tokens_and_len(ids, 77)
    assert tokens == case["clip_padded_tokens_77"]
    assert length == case["clip_len_77"]


def test_tokenize_batch_and_decode(tokenizer: ClipTokenizer) -> None:
    rows, lens = tokenizer.tokenize(["a corgi", ""])
    assert [len(r) for r in rows] == [77, 77]
    assert lens == [4, 2]
    assert (
        tokenizer.decode(tokenizer.encode("An Oil  Painting, café!")) == "an oil painting , café !"
    )


def test_bad_arguments(tokenizer: ClipTokenizer) -> None:
    with pytest.raises(TypeError, match="text"):
        tokenizer.encode(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="text_ctx"):
        tokenizer.padded_tokens_and_len([1, 2], 1)


def test_packaged_vocab_and_cache_override(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GLIDEKIT_CACHE", str(tmp_path))
    # Nothing in the cache: the vocabulary shipped in the package is used, no download.
    assert default_vocab_path() == PACKAGED_VOCAB
    assert PACKAGED_VOCAB.read_bytes() == VOCAB.read_bytes()
    assert ClipTokenizer().encode("a corgi") == [320, 31320]
    # A copy in the cache takes precedence.
    expected = tmp_path / "vocab" / "bpe_simple_vocab_16e6.txt.gz"
    expected.parent.mkdir()
    shutil.copy(VOCAB, expected)
    assert default_vocab_path() == expected
    with pytest.raises(FileNotFoundError, match="vocab_path") as info:
        ClipTokenizer(tmp_path / "missing.txt.gz")
    assert "missing.txt.gz" in str(info.value)


def test_not_a_merges_file(tmp_path) -> None:
    import gzip

    bad = tmp_path / "bad.txt.gz"
    with gzip.open(bad, "wt") as f:
        f.write("#version\na b\n")
    with pytest.raises(ValueError, match="vocab_path"):
        ClipTokenizer(bad)
