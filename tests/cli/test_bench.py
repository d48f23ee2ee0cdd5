"""glidekit bench: the command runs and reports the yardstick ratio (no timing assertions)."""

import json
from pathlib import Path

import pytest

import glidekit.bench as bench
from glidekit.cli.main import main
from glidekit.nn import Text2ImConfig
from glidekit.pipelines.devices import BF16_FEATURES

TINY = Text2ImConfig(
    image_size=16,
    num_channels=32,
    num_res_blocks=1,
    channel_mult=(1, 2),
    attention_resolutions=(8,),
    num_head_channels=16,
    text_ctx=8,
    xf_width=32,
    xf_layers=1,
    xf_heads=2,
)


@pytest.fixture
def tiny_configs(monkeypatch):
    monkeypatch.setitem(bench.RELEASED_CONFIGS, "base", TINY)
    monkeypatch.setitem(bench.DEFAULT_CASES, "base", (2, 16))


def test_bench_json_with_calibrate_ratio(tiny_configs, capsys):
    assert bench.find_calibrate() is not None  # the checkout has ../shared/bench/calibrate.py
    assert (
        main(["bench", "--models", "base", "--dtypes", "fp32", "bf16", "--rounds", "1", "--json"])
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["dtype"] for r in rows] == ["float32", "bfloat16"]
    for r in rows:
        assert r["batch"] == 2 and r["size"] == 16
        assert r["seconds"] > 0 and r["ratio"] == pytest.approx(
            r["seconds"] / r["calibrate_seconds"], rel=1
        )
        assert r["peak_rss_mb"] > 0
        assert r["steps_per_second"] == pytest.approx(1 / r["seconds"])
        assert r["compiled"] is False and r["compile_seconds"] is None
        # the CPU's bf16 features beside every figure (they decide bf16's speed)
        assert set(r["machine"]) == {"cpu", *BF16_FEATURES} and r["machine"]["cpu"]
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
        assert r["machine"]["avx512_bf16"] == (" avx512_bf16" in flags)


def test_bench_table_and_bad_input(tiny_configs, capsys):
    assert main(["bench", "--models", "base", "--dtypes", "fp32", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "base" in out and "steps/s" in out and "peak MB" in out
    assert "bf16 features:" in out
    assert main(["bench", "--rounds", "0"]) == 2
    assert "--rounds" in capsys.readouterr().err
    assert main(["bench", "--dtypes", "fp16"]) == 2
