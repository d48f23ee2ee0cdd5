"""Checkpoint download / cache / verification / safe loading, against a loopback HTTP server.

Every test runs with ``GLIDEKIT_CACHE`` in tmp_path and ``GLIDEKIT_BASE_URL`` pointing at
127.0.0.1 (a dead port unless a test starts a server), so nothing can reach the internet.
Released names are served as tiny fixture files whose layouts come from a tiny
``checkpoint_specs.json``-like file (``GLIDEKIT_CHECKPOINT_SPECS``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from ckpt_server import CheckpointServer
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

import glidekit.checkpoints.download as download_mod
import glidekit.checkpoints.loading as loading_mod
from glidekit.checkpoints import (
    CHECKPOINTS,
    ChangedCheckpointError,
    CheckpointError,
    CorruptCheckpointError,
    DownloadError,
    LayoutMismatchError,
    OfflineError,
    UnknownCheckpointError,
    UnsafeCheckpointError,
    cache_dir,
    check_layout,
    compat_load_checkpoint,
    convert,
    detect_kind,
    diff_layouts,
    fetch,
    load_into,
    load_state_dict,
    released_layout,
)
from glidekit.checkpoints.cache import Manifest
from glidekit.checkpoints.download import DownloadVerificationError, NetworkUnavailableError
from glidekit.cli.main import main

REPO = Path(__file__).resolve().parents[2]
IN_CHANNELS = {"base": 3, "upsample": 6, "base-inpaint": 7}


class TinyUNet(torch.nn.Module):
    """A module whose state-dict keys look like a GLIDE UNet's (for kind detection), tiny."""

    def __init__(self, in_channels: int = 3, width: int = 32, n_vocab: int = 4096) -> None:
        super().__init__()
        self.token_embedding = torch.nn.Embedding(n_vocab, width)
        self.positional_embedding = torch.nn.Parameter(torch.randn(8, width))
        self.time_embed = torch.nn.Sequential(
            torch.nn.Linear(width, 4 * width),
            torch.nn.SiLU(),
            torch.nn.Linear(4 * width, 4 * width),
        )
        self.input_blocks = torch.nn.ModuleList(
            [torch.nn.Sequential(torch.nn.Conv2d(in_channels, width, 3, padding=1))]
        )
        self.out = torch.nn.Sequential(
            torch.nn.GroupNorm(4, width),
            torch.nn.Identity(),
            torch.nn.Conv2d(width, 6, 3, padding=1),
        )


def tiny_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in TinyUNet(IN_CHANNELS[name]).state_dict().items()}


class Evil:
    """Pickles to a call of ``exec`` that writes a marker file: code a checkpoint must not run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[override]
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def files(tmp_path: Path) -> dict[str, bytes]:
    """Fixture checkpoints as the server serves them (official file names), ~0.5 MB each."""
    src = tmp_path / "src"
    src.mkdir()
    out = {}
    for name in IN_CHANNELS:
        path = src / CHECKPOINTS[name].filename
        torch.save(tiny_state_dict(name), path)
        out["/" + path.name] = path.read_bytes()
    return out


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Cache in tmp_path, downloads only to loopback, tiny released layouts."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GLIDEKIT_CACHE", str(cache))
    monkeypatch.setenv("GLIDEKIT_BASE_URL", "http://127.0.0.1:9/")  # dead port, never internet
    monkeypatch.delenv("GLIDEKIT_OFFLINE", raising=False)
    specs = {
        "checkpoints": {
            name: {
                "state_dict": [
                    [k, list(v.shape), "float32"] for k, v in tiny_state_dict(name).items()
                ]
            }
            for name in IN_CHANNELS
        }
    }
    spec_file = tmp_path / "tiny_specs.json"
    spec_file.write_text(json.dumps(specs))
    monkeypatch.setenv("GLIDEKIT_CHECKPOINT_SPECS", str(spec_file))
    return cache


@pytest.fixture
def server(files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> Iterator[CheckpointServer]:
    srv = CheckpointServer(files).start()
    monkeypatch.setenv("GLIDEKIT_BASE_URL", srv.base_url)
    yield srv
    srv.stop()


FAST = {"retries": 0, "backoff": 0.01, "timeout": 10.0}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)  # safetensors files store keys sorted
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


# ----------------------------------------------------------------------------- registry


def test_registry_names_files_urls_and_configs(checkpoint_specs: dict) -> None:
    from glidekit.nn.config import RELEASED_CONFIGS

    assert list(CHECKPOINTS) == list(checkpoint_specs["checkpoints"])
    files = [c.filename for c in CHECKPOINTS.values()]
    assert files == [
        "base.pt",
        "upsample.pt",
        "base_inpaint.pt",
        "upsample_inpaint.pt",
        "clip_image_enc.pt",
        "clip_text_enc.pt",
    ]
    for name, info in CHECKPOINTS.items():
        spec = checkpoint_specs["checkpoints"][name]
        assert info.official_url == spec["url"] == checkpoint_specs["urls"][name]
        assert info.model_class == spec["model_class"]
        if info.family == "diffusion":
            assert info.config() is RELEASED_CONFIGS[name]
            assert info.config().in_channels == info.in_channels
        else:
            clip_config = pytest.importorskip("glidekit.clip.config")
            assert info.config() == clip_config.CLIPConfig(**spec["options"])
        assert detect_kind(released_layout(name, specs=checkpoint_specs)) == name
    with pytest.raises(TypeError):
        CHECKPOINTS["x"] = CHECKPOINTS["base"]  # type: ignore[index]


def test_cache_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_dir() == tmp_path / "cache"
    assert cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("GLIDEKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "glidekit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.chdir(tmp_path)
    assert cache_dir() == Path.home() / ".cache" / "glidekit"
    assert cache_dir().is_absolute()


def test_meta_model_layouts_match_specs(checkpoint_specs: dict, monkeypatch) -> None:
    """Without specs the released layout comes from meta-device models of the released configs."""
    pytest.importorskip("glidekit.nn", reason="model code not available")
    monkeypatch.delenv("GLIDEKIT_CHECKPOINT_SPECS")
    for name in CHECKPOINTS:
        if CHECKPOINTS[name].family == "clip":
            pytest.importorskip("glidekit.clip")
        built = released_layout(name)
        assert built == released_layout(name, specs=checkpoint_specs), name


# ----------------------------------------------------------------------------- downloads


def test_whole_download_progress_total_and_manifest(
    server: CheckpointServer, files: dict[str, bytes], isolated: Path, monkeypatch
) -> None:
    bars: list[tqdm] = []

    class RecordingBar(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(download_mod, "tqdm", RecordingBar)
    path = fetch("base", progress=True, **FAST)
    data = files["/base.pt"]
    assert path == isolated / "base.pt"
    assert path.read_bytes() == data
    assert not (isolated / "base.pt.partial").exists()
    assert len(bars) == 1 and bars[0].total == len(data) and bars[0].n == len(data)
    entry = Manifest(isolated).get(path)
    assert entry is not None and entry.size == len(data) and entry.sha256 == sha(data)
    assert entry.source == server.base_url + "base.pt"
    # A second call uses the cache: no request at all.
    n = len(server.seen)
    assert fetch("base", **FAST) == path
    assert len(server.seen) == n
    assert_same(load_state_dict("base"), tiny_state_dict("base"))


def test_dropped_connection_resumes_from_partial(
    server: CheckpointServer, files: dict[str, bytes], isolated: Path
) -> None:
    data = files["/base.pt"]
    cut = 200_000
    server.behaviour.drop_after["/base.pt"] = cut
    with pytest.raises(DownloadError, match="partial file"):
        fetch("base", progress=False, **FAST)
    partial = isolated / "base.pt.partial"
    assert partial.stat().st_size == cut
    assert not (isolated / "base.pt").exists()  # never a complete-looking name for a part

    path = fetch("base", progress=False, **FAST)
    gets = server.gets("/base.pt")
    assert [g.range for g in gets] == [None, f"bytes={cut}-"]
    assert gets[-1].status == 206
    assert path.read_bytes() == data
    assert Manifest(isolated).get(path).sha256 == sha(data)  # hash covers the resumed prefix


def test_retries_resume_within_one_call_and_503(
    server: CheckpointServer, files: dict[str, bytes], isolated: Path
) -> None:
    server.behaviour.fail_next = 1
    server.behaviour.drop_after["/upsample.pt"] = 100_000
    path = fetch("upsample", progress=False, retries=3, backoff=0.01, timeout=10)
    statuses = [(g.status, g.range) for g in server.gets("/upsample.pt")]
    assert statuses == [(503, None), (200, None), (206, "bytes=100000-")]
    assert path.read_bytes() == files["/upsample.pt"]


def test_not_found_is_not_retried(server: CheckpointServer) -> None:
    with pytest.raises(DownloadError, match="404"):
        fetch("base", url=server.base_url + "nope.pt", retries=5, backoff=5.0, progress=False)
    assert len(server.gets("/nope.pt")) == 1


def test_server_ignoring_range_restarts_cleanly(
    server: CheckpointServer, files: dict[str, bytes], isolated: Path
) -> None:
    isolated.mkdir(parents=True)
    (isolated / "base.pt.partial").write_bytes(b"garbage from an older attempt" * 100)
    server.behaviour.ignore_range = True
    path = fetch("base", progress=False, **FAST)
    gets = server.gets("/base.pt")
    assert len(gets) == 1 and gets[0].range == "bytes=2900-" and gets[0].status == 200
    assert path.read_bytes() == files["/base.pt"]


def test_partial_longer_than_file_restarts(
    server: CheckpointServer, files: dict[str, bytes], isolated: Path
) -> None:
    isolated.mkdir(parents=True)
    (isolated / "base.pt.partial").write_bytes(b"x" * (len(files["/base.pt"]) + 10))
    path = fetch("base", progress=False, **FAST)
    assert [g.status for g in server.gets("/base.pt")] == [416, 200]
    assert path.read_bytes() == files["/base.pt"]


CHILD = textwrap.dedent(
    """
    import hashlib, logging, pathlib, sys, time
    from glidekit.checkpoints import fetch
    logging.basicConfig(level=logging.INFO)
    pathlib.Path(sys.argv[1]).touch()
    deadline = time.time() + 60
    while not pathlib.Path(sys.argv[2]).exists() and time.time() < deadline:
        time.sleep(0.002)
    path = fetch("base", progress=False, retries=0, timeout=30)
    print(path, hashlib.sha256(path.read_bytes()).hexdigest())
    """
)


def test_two_processes_share_one_download(
    server: CheckpointServer, files: dict[str, bytes], isolated: Path, tmp_path: Path
) -> None:
    server.behaviour.chunk = 32 * 1024
    server.behaviour.chunk_delay = 0.04  # ~0.7 s for the file: the processes overlap
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    flags = [tmp_path / "ready0", tmp_path / "ready1"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(flags[i]), str(flags[1 - i])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    lines = [out.split() for out, _ in results]
    expected = [str(isolated / "base.pt"), sha(files["/base.pt"])]
    assert lines == [expected, expected]
    assert server.full_downloads("/base.pt") == 1
    assert len(server.gets("/base.pt")) == 1
    assert sum("waiting for another process" in err for _, err in results) == 1
    assert (isolated / "base.pt").read_bytes() == files["/base.pt"]


# ----------------------------------------------------------------------------- cache integrity


def test_truncated_recorded_file_is_refetched_never_loaded(
    server: CheckpointServer, files: dict[str, bytes], isolated: Path, monkeypatch, caplog
) -> None:
    data = files["/base.pt"]
    path = fetch("base", progress=False, **FAST)
    path.write_bytes(data[: len(data) // 2])  # complete-looking name, wrong size

    reads: list[int] = []
    real_read = loading_mod.read_state_dict

    def spy(p, dtypes=None):
        reads.append(Path(p).stat().st_size)
        return real_read(p, dtypes)

    monkeypatch.setattr(loading_mod, "read_state_dict", spy)
    with caplog.at_level(logging.WARNING):
        loaded = load_state_dict("base", progress=False, **FAST)
    assert_same(loaded, tiny_state_dict("base"))
    assert reads == [len(data)]  # the truncated file was never read
    assert "truncated" in caplog.text
    assert server.full_downloads("/base.pt") == 2
    assert path.read_bytes() == data


def test_unrecorded_truncated_file_is_detected_by_size(
    server: CheckpointServer, files: dict[str, bytes], isolated: Path
) -> None:
    data = files["/base.pt"]
    isolated.mkdir(parents=True)
    (isolated / "base.pt").write_bytes(data[:1000])  # put there by hand, no manifest entry
    path = fetch("base", progress=False, **FAST)
    assert [s.method for s in server.seen] == ["HEAD", "GET"]
    assert path.read_bytes() == data
    # A complete unrecorded file: one HEAD confirms its size, then it is recorded.
    os.replace(path, isolated / "keep")
    Manifest(isolated).forget(path)
    os.replace(isolated / "keep", path)
    assert fetch("base", progress=False, **FAST) == path
    assert fetch("base", progress=False, **FAST) == path
    assert [s.method for s in server.seen] == ["HEAD", "GET", "HEAD"]
    assert Manifest(isolated).get(path).sha256 is None  # hashed on first load
    load_state_dict("base")
    assert Manifest(isolated).get(path).sha256 == sha(data)


def test_same_size_corrupt_file_fails_to_load_and_is_refetched(
    server: CheckpointServer, files: dict[str, bytes], isolated: Path
) -> None:
    data = files["/base.pt"]
    isolated.mkdir(parents=True)
    (isolated / "base.pt").write_bytes(b"\0" * len(data))  # right size, not a checkpoint
    loaded = load_state_dict("base", progress=False, **FAST)
    assert_same(loaded, tiny_state_dict("base"))
    assert server.full_downloads("/base.pt") == 1
    assert (isolated / "base.pt").read_bytes() == data


def test_truncated_file_offline_gives_clear_error(
    files: dict[str, bytes], isolated: Path, monkeypatch
) -> None:
    isolated.mkdir(parents=True)
    (isolated / "base.pt").write_bytes(files["/base.pt"][:5000])
    monkeypatch.setenv("GLIDEKIT_OFFLINE", "1")
    with pytest.raises(CorruptCheckpointError) as err:
        load_state_dict("base")
    msg = str(err.value)
    assert str(isolated / "base.pt") in msg and "delete it and download it again" in msg


def test_offline_fails_fast_naming_url_and_path(isolated: Path, monkeypatch) -> None:
    monkeypatch.setenv("GLIDEKIT_OFFLINE", "1")
    monkeypatch.delenv("GLIDEKIT_BASE_URL")
    start = time.perf_counter()
    with pytest.raises(OfflineError) as err:
        load_state_dict("upsample-inpaint")
    assert time.perf_counter() - start < 1.0
    msg = str(err.value)
    assert str(isolated / "upsample_inpaint.pt") in msg
    assert CHECKPOINTS["upsample-inpaint"].official_url in msg
    assert not isolated.exists() or not any(isolated.iterdir())


def test_sha256_change_detected_and_accepted_with_verify_false(
    server: CheckpointServer, isolated: Path
) -> None:
    fetch("base", progress=False, **FAST)
    st = convert("base", progress=False)
    assert st == isolated / "base.safetensors"
    assert_same(load_state_dict("base"), tiny_state_dict("base"))

    raw = bytearray(st.read_bytes())
    raw[-1] ^= 0x55  # same size, different content (last byte of the last tensor)
    st.write_bytes(bytes(raw))
    with pytest.raises(ChangedCheckpointError, match="changed on disk") as err:
        load_state_dict("base")
    assert str(st) in str(err.value) and "verify=False" in str(err.value)

    changed = load_state_dict("base", verify=False)  # accept and re-record
    original = tiny_state_dict("base")
    assert any(not torch.equal(v, original[k]) for k, v in changed.items())
    assert Manifest(isolated).get(st).sha256 == sha(bytes(raw))
    assert_same(load_state_dict("base"), changed)


def test_local_file_verify_true_records_and_checks(tmp_path: Path) -> None:
    path = tmp_path / "mine.safetensors"
    save_file(tiny_state_dict("base"), str(path))
    load_state_dict(path, verify=True)
    save_file(tiny_state_dict("base", seed=1), str(path))
    with pytest.raises(ChangedCheckpointError):
        load_state_dict(path, verify=True)
    load_state_dict(path)  # default: files outside the cache are not tracked


# ----------------------------------------------------------------------------- safe loading


def test_pickle_with_code_is_refused_and_never_runs(tmp_path: Path, isolated: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": Evil(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load") as err:
        load_state_dict(evil)
    assert str(evil) in str(err.value)
    assert isinstance(err.value, CheckpointError) and isinstance(err.value, ValueError)
    # Also as a cached released file, and through load_into.
    isolated.mkdir(parents=True)
    os.replace(evil, isolated / "base.pt")
    module = TinyUNet(3)
    with pytest.raises(UnsafeCheckpointError):
        load_into(module, "base", progress=False, **FAST)
    assert not marker.exists()
    # The fixture really is malicious: an unsafe unpickle runs it.
    torch.load(isolated / "base.pt", weights_only=False)
    assert marker.exists()


def test_wrong_kind_names_the_kind(tmp_path: Path) -> None:
    path = tmp_path / "upsample.pt"
    torch.save(tiny_state_dict("upsample"), path)
    module = TinyUNet(3)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(LayoutMismatchError) as err:
        load_into(module, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "looks like" in msg and "'upsample'" in msg and "'base'" in msg
    assert "input_blocks.0.0.weight: file [32, 6, 3, 3] vs model [32, 3, 3, 3]" in msg
    assert_same(module.state_dict(), before)
    # Against a released name's layout (tiny specs) and with the kind check alone.
    with pytest.raises(LayoutMismatchError, match="'upsample'"):
        load_state_dict(path, checkpoint="base")
    layout = {k: tuple(v.shape) for k, v in tiny_state_dict("upsample").items()}
    with pytest.raises(LayoutMismatchError, match="looks like a 64->256 super-resolution"):
        check_layout(layout, None, file=path, name="base-inpaint")
    check_layout(layout, None, file=path, name="upsample")


def test_missing_unexpected_misshaped_in_one_error(tmp_path: Path) -> None:
    sd = tiny_state_dict("base")
    del sd["out.2.bias"]
    sd["extra.weight"] = torch.zeros(3)
    sd["time_embed.0.weight"] = torch.zeros(5, 5)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    module = TinyUNet(3)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(LayoutMismatchError) as err:
        load_into(module, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "1 missing, 1 unexpected, 1 mis-shaped" in msg
    assert "missing: out.2.bias [6]" in msg
    assert "unexpected: extra.weight [3]" in msg
    assert "time_embed.0.weight: file [5, 5] vs model [128, 32]" in msg
    assert_same(module.state_dict(), before)


def test_many_differences_are_summarised(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({f"k{i}": torch.zeros(1) for i in range(20)}, str(path))
    with pytest.raises(LayoutMismatchError) as err:
        load_into(TinyUNet(3), path)
    assert "and 15 more" in str(err.value)


def test_load_into_and_meta_module(server: CheckpointServer) -> None:
    module = load_into(TinyUNet(7), "base-inpaint", progress=False, **FAST)
    assert_same(module.state_dict(), tiny_state_dict("base-inpaint"))
    with torch.device("meta"):
        meta = TinyUNet(7)
    load_into(meta, "base-inpaint", progress=False, **FAST)
    assert_same(meta.state_dict(), tiny_state_dict("base-inpaint"))


def test_local_directories_and_safetensors_preference(tmp_path: Path, monkeypatch) -> None:
    d = tmp_path / "weights"
    d.mkdir()
    torch.save(tiny_state_dict("base"), d / "base.pt")
    assert_same(load_state_dict(d), tiny_state_dict("base"))
    out = convert(d / "base.pt")
    assert out == d / "base.safetensors"
    assert_same(load_file(str(out)), tiny_state_dict("base"))
    (d / "base.pt").unlink()
    assert_same(load_state_dict(d, checkpoint="base"), tiny_state_dict("base"))
    torch.save(tiny_state_dict("upsample"), d / "upsample.pt")
    with pytest.raises(UnknownCheckpointError, match="several checkpoints"):
        load_state_dict(d)
    assert_same(load_state_dict(d, checkpoint="upsample"), tiny_state_dict("upsample"))
    with pytest.raises(UnknownCheckpointError, match="neither a released checkpoint"):
        load_state_dict(tmp_path / "missing")
    with pytest.raises(UnknownCheckpointError, match="unknown checkpoint 'bogus'"):
        load_state_dict(d, checkpoint="bogus")
    # A Path (or "./name") is always a path, even when spelled like a released name.
    (tmp_path / "base").mkdir()
    torch.save(tiny_state_dict("upsample"), tmp_path / "base" / "upsample.pt")
    monkeypatch.chdir(tmp_path)
    assert_same(load_state_dict(Path("base")), tiny_state_dict("upsample"))
    assert_same(load_state_dict("./base"), tiny_state_dict("upsample"))


def test_convert_is_byte_reproducible_and_keeps_tied_weights(tmp_path: Path) -> None:
    """Issue 16 item 10 for ``glidekit convert``: the same checkpoint converted twice (here
    with its keys in another order) gives the same bytes; tensors sharing storage are each
    written from their own bytes."""
    state = tiny_state_dict("base")
    state["tied"] = state["out.2.weight"]  # same storage, as tied weights are
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    torch.save(state, a / "base.pt")
    torch.save(dict(reversed(list(state.items()))), b / "base.pt")
    out_a, out_b = convert(a / "base.pt"), convert(b / "base.pt")
    assert out_a.read_bytes() == out_b.read_bytes()
    assert_same(load_file(str(out_a)), state)
    half = convert(a / "base.pt", fp16=True)
    assert load_file(str(half))["tied"].dtype == torch.float16


def test_layout_differences_fit_on_one_line() -> None:
    diff = diff_layouts({"a": (2,), "b": (3,), "x": (1,)}, {"a": (2,), "b": (4,), "c": (5, 5)})
    assert diff.summary() == "missing c [5, 5]; unexpected x [1]; mis-shaped b [3] (expected [4])"
    many = diff_layouts({}, {f"k{i}": (i,) for i in range(5)})
    assert many.summary(max_items=2) == "missing k0 [0], k1 [1] and 3 more"


def test_convert_fp16_and_cached_preference(
    server: CheckpointServer, isolated: Path, monkeypatch
) -> None:
    out = convert("upsample", fp16=True, progress=False)
    assert out == isolated / "upsample.fp16.safetensors"
    tensors = load_file(str(out))
    assert all(v.dtype == torch.float16 for v in tensors.values())
    ref = tiny_state_dict("upsample")
    torch.testing.assert_close(
        tensors["out.2.weight"].float(), ref["out.2.weight"], rtol=1e-3, atol=1e-3
    )
    # The lossless .pt is preferred while present; offline and without it, the conversion.
    assert load_state_dict("upsample")["out.2.weight"].dtype == torch.float32
    (isolated / "upsample.pt").unlink()
    monkeypatch.setenv("GLIDEKIT_OFFLINE", "1")
    n = len(server.seen)
    loaded = load_state_dict("upsample")
    assert loaded["out.2.weight"].dtype == torch.float16
    assert len(server.seen) == n


def test_compat_load_checkpoint(server: CheckpointServer, isolated: Path) -> None:
    state = compat_load_checkpoint("base", torch.device("cpu"))
    assert_same(state, tiny_state_dict("base"))
    other = isolated.parent / "elsewhere"
    state = compat_load_checkpoint("base", "cpu", cache_dir=str(other))
    assert (other / "base.pt").is_file()


# ----------------------------------------------------------------------------- CLI


def test_cli_download_and_convert(
    server: CheckpointServer, files: dict[str, bytes], tmp_path: Path, capsys
) -> None:
    target = tmp_path / "cli-cache"
    rc = main(["download", "base", "upsample", "--cache-dir", str(target), "--no-progress"])
    assert rc == 0
    assert capsys.readouterr().out.split() == [str(target / "base.pt"), str(target / "upsample.pt")]
    assert (target / "upsample.pt").read_bytes() == files["/upsample.pt"]

    assert main(["convert", "base", "--cache-dir", str(target), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(target / "base.safetensors")
    assert main(["convert", "base", "--fp16", "--cache-dir", str(target)]) == 0
    assert (target / "base.fp16.safetensors").is_file()

    assert main(["download", "base", "not-a-model"]) == 2
    assert "not-a-model" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "nope.pt")]) == 2
    assert main(["convert", "base", "--checkpoint", "bogus"]) == 2


def test_cli_download_failure_exit_code(server: CheckpointServer, capsys) -> None:
    """Any checkpoint error of ``download`` is one line and exit code 2, as in ``generate``."""
    server.behaviour.fail_next = 100
    assert main(["download", "base", "--no-progress", "--retries", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("glidekit download: error: ") and "503" in err and "\n" not in err


def test_real_small_unet_round_trip_and_config_layout(tmp_path: Path) -> None:
    """A small custom ``UNetConfig``: expected layout from the config (meta model), load_into."""
    nn_mod = pytest.importorskip("glidekit.nn", reason="model code not available")
    from glidekit.nn.config import SuperResConfig, UNetConfig

    small = dict(
        num_channels=32,
        num_res_blocks=1,
        num_head_channels=16,
        text_ctx=8,
        xf_width=32,
        xf_layers=1,
        xf_heads=2,
        n_vocab=64,
    )
    config = UNetConfig(image_size=32, channel_mult=(1, 2), attention_resolutions=(16,), **small)
    torch.manual_seed(0)
    source = nn_mod.create_model(config)
    path = tmp_path / "small.pt"
    torch.save(source.state_dict(), path)
    state = load_state_dict(path, expected=config)  # layout from a meta model of the config
    assert detect_kind({k: v.shape for k, v in state.items()}) == "base"
    target = load_into(nn_mod.create_model(config), path)
    assert_same(target.state_dict(), source.state_dict())

    sr = SuperResConfig(image_size=64, channel_mult=(1, 2), attention_resolutions=(32,), **small)
    with pytest.raises(LayoutMismatchError, match="like 'upsample'") as err:
        load_into(nn_mod.create_model(sr), path)
    assert "looks like a 64x64 text-to-image UNet (like 'base')" in str(err.value)


# ----------------------------------------------------------------------------- verified downloads


def pt_bytes(state: dict[str, torch.Tensor], tmp_path: Path, name: str = "x.pt") -> bytes:
    path = tmp_path / name
    torch.save(state, path)
    return path.read_bytes()


def assert_nothing_kept(isolated: Path, filename: str = "base.pt") -> None:
    assert not (isolated / filename).exists()
    assert not (isolated / (filename + ".partial")).exists()
    assert Manifest(isolated).get(isolated / filename) is None


@pytest.fixture
def wrong_base(files: dict[str, bytes], tmp_path: Path) -> bytes:
    """Another checkpoint of base's exact layout and byte size: only a checksum tells them apart."""
    (tmp_path / "other").mkdir()
    data = pt_bytes(tiny_state_dict("base", seed=1), tmp_path / "other", "base.pt")
    assert len(data) == len(files["/base.pt"]) and data != files["/base.pt"]
    return data


@pytest.mark.parametrize("header", ["content-md5", "x-goog-hash", "azure"])
def test_wrong_bytes_of_the_right_size_fail_the_servers_md5(
    server: CheckpointServer, files: dict[str, bytes], wrong_base: bytes, isolated: Path, header
) -> None:
    """Issue 16 item 13: a server sends other bytes of the right size with the right file's MD5."""
    server.behaviour.md5_header = header
    server.behaviour.announced["/base.pt"] = files["/base.pt"]
    server.files["/base.pt"] = wrong_base
    with pytest.raises(DownloadVerificationError) as err:
        fetch("base", progress=False, **FAST)
    msg = str(err.value)
    assert "\n" not in msg and "MD5" in msg and str(isolated / "base.pt") in msg
    assert "nothing was kept" in msg
    assert_nothing_kept(isolated)
    assert len(server.gets("/base.pt")) == 1  # a fresh download that fails a check: no retry

    server.files["/base.pt"] = files["/base.pt"]  # the server mended: the same call now works
    path = fetch("base", progress=False, **FAST)
    assert path.read_bytes() == files["/base.pt"]
    assert Manifest(isolated).get(path).sha256 == sha(files["/base.pt"])


def test_a_resumed_download_checks_the_whole_file_and_restarts_once(
    server: CheckpointServer, files: dict[str, bytes], isolated: Path
) -> None:
    """A partial file with a wrong prefix: the range response's whole-file MD5 catches it, the
    partial is dropped and the file downloaded again from byte 0 (one more attempt)."""
    data = files["/base.pt"]
    isolated.mkdir(parents=True)
    (isolated / "base.pt.partial").write_bytes(b"\xff" * 1000)  # not the file's first bytes
    server.behaviour.md5_header = "azure"
    path = fetch("base", progress=False, retries=1, backoff=0.01, timeout=10)
    assert [(g.status, g.range) for g in server.gets("/base.pt")] == [
        (206, "bytes=1000-"),
        (200, None),
    ]
    assert path.read_bytes() == data

    # Without an attempt left, the same case fails in one line and keeps nothing.
    path.unlink()
    Manifest(isolated).forget(path)
    (isolated / "base.pt.partial").write_bytes(b"\xff" * 1000)
    with pytest.raises(DownloadVerificationError, match="x-ms-blob-content-md5"):
        fetch("base", progress=False, **FAST)
    assert_nothing_kept(isolated)


def test_the_content_md5_of_a_range_response_covers_the_range(
    server: CheckpointServer, files: dict[str, bytes], isolated: Path
) -> None:
    """RFC 1864: in a 206, Content-MD5 is the MD5 of the part sent; a resume that matches it
    is accepted, a part whose bytes differ is refused."""
    data = files["/base.pt"]
    server.behaviour.md5_header = "content-md5"
    server.behaviour.drop_after["/base.pt"] = 100_000
    with pytest.raises(DownloadError, match="partial file"):
        fetch("base", progress=False, **FAST)
    path = fetch("base", progress=False, **FAST)
    assert [g.status for g in server.gets("/base.pt")] == [200, 206]
    assert path.read_bytes() == data

    path.unlink()
    Manifest(isolated).forget(path)
    (isolated / "base.pt.partial").write_bytes(data[:100_000])
    server.behaviour.announced["/base.pt"] = data[:100_000] + bytes(len(data) - 100_000)
    with pytest.raises(DownloadVerificationError, match="resumed part's MD5"):
        fetch("base", progress=False, **FAST)
    assert_nothing_kept(isolated)


def test_a_pinned_sha256_is_checked(
    server: CheckpointServer, files: dict[str, bytes], wrong_base: bytes, isolated: Path
) -> None:
    """With no checksum from the server, wrong bytes of the right layout can only be told by a
    sha256 the user pins."""
    good = sha(files["/base.pt"])
    server.files["/base.pt"] = wrong_base
    with pytest.raises(DownloadVerificationError, match=f"not the pinned {good}") as err:
        fetch("base", progress=False, sha256=good.upper(), **FAST)
    assert "\n" not in str(err.value)
    assert_nothing_kept(isolated)

    server.files["/base.pt"] = files["/base.pt"]
    path = fetch("base", progress=False, sha256=good, **FAST)
    assert Manifest(isolated).get(path).sha256 == good

    # A cached file that differs from the pin is fetched again; offline it is refused.
    path.write_bytes(wrong_base)
    Manifest(isolated).forget(path)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("GLIDEKIT_OFFLINE", "1")
    with pytest.raises(DownloadVerificationError, match="GLIDEKIT_OFFLINE is set"):
        fetch("base", sha256=good)
    monkeypatch.undo()
    n = server.full_downloads("/base.pt")
    assert fetch("base", progress=False, sha256=good, **FAST) == path
    assert path.read_bytes() == files["/base.pt"]
    assert server.full_downloads("/base.pt") == n + 1
    assert fetch("base", progress=False, sha256=good, **FAST) == path  # cached, recorded: no GET
    assert server.full_downloads("/base.pt") == n + 1

    local = isolated.parent / "mine.pt"
    local.write_bytes(wrong_base)
    with pytest.raises(DownloadVerificationError, match="not the pinned"):
        fetch(local, sha256=good)
    assert fetch(local, sha256=sha(wrong_base)) == local
    for bad in ("abc", "g" * 64, good + "0"):
        with pytest.raises(ValueError, match="sha256 must be 64 hexadecimal digits"):
            fetch("base", sha256=bad)


def test_the_state_dict_layout_is_checked_before_the_file_counts(
    server: CheckpointServer, files: dict[str, bytes], isolated: Path, tmp_path: Path
) -> None:
    """Another model's file, a pickle that runs code, and random bytes: each refused in one
    line, nothing kept, the pickle never run."""
    marker = tmp_path / "pwned"
    evil = pt_bytes({"weight": torch.zeros(2), "payload": Evil(marker)}, tmp_path, "evil.pt")
    cases = [
        (files["/upsample.pt"], "not those of the released 'base'"),
        (files["/upsample.pt"], "looks like a 64->256 super-resolution UNet"),
        (pt_bytes({"w": torch.zeros(3)}, tmp_path), "missing positional_embedding [8, 32]"),
        (evil, "pickled Python objects other than tensors"),
        (random.Random(0).randbytes(len(files["/base.pt"])), "not a readable checkpoint"),
        (bytes(len(files["/base.pt"])), "not a readable checkpoint"),
        (pt_bytes([torch.zeros(2)], tmp_path, "list.pt"), "not a plain state dict"),
    ]
    for data, needle in cases:
        server.files["/base.pt"] = data
        with pytest.raises(DownloadVerificationError) as err:
            fetch("base", progress=False, **FAST)
        msg = str(err.value)
        assert needle in msg and "\n" not in msg, msg
        assert_nothing_kept(isolated)
    assert not marker.exists()


def test_cli_sha256_and_verification_failures(
    server: CheckpointServer, files: dict[str, bytes], wrong_base: bytes, tmp_path: Path, capsys
) -> None:
    target = tmp_path / "cli-cache"
    good = sha(files["/base.pt"])
    server.files["/base.pt"] = wrong_base
    args = ["download", "base", "--cache-dir", str(target), "--no-progress", "--retries", "0"]
    assert main([*args, "--sha256", good]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("glidekit download: error: ") and "not the pinned" in err
    assert "\n" not in err and not (target / "base.pt").exists()

    server.files["/base.pt"] = files["/base.pt"]
    assert main([*args, "--sha256", good]) == 0
    assert capsys.readouterr().out.strip() == str(target / "base.pt")
    assert main([*args, "--sha256", "nope"]) == 2
    assert "--sha256 must be 64 hexadecimal digits" in capsys.readouterr().err
    assert main(["download", "base", "upsample", "--sha256", good]) == 2
    assert "exactly one NAME" in capsys.readouterr().err


def test_no_network_fails_at_once_and_leaves_nothing(isolated: Path, monkeypatch) -> None:
    """Issue 19 item 3: a name that does not resolve is not retried (it took 40 s) and leaves
    no empty lock file (nor the cache folder) behind; the CLI exits 2 as ``generate`` does."""
    monkeypatch.setenv("GLIDEKIT_BASE_URL", "http://glidekit-test.invalid/")  # RFC 2606
    start = time.perf_counter()
    with pytest.raises(NetworkUnavailableError) as err:
        fetch("base", progress=False, retries=5, backoff=5.0)
    assert time.perf_counter() - start < 5.0
    msg = str(err.value)
    assert "'glidekit-test.invalid' does not resolve" in msg and "\n" not in msg
    assert str(isolated / "base.pt") in msg and "GLIDEKIT_OFFLINE" in msg
    assert not isolated.exists()

    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "glidekit.cli.main", "download", "base", "upsample"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glidekit download: error: cannot download")
    assert time.perf_counter() - start < 30  # one attempt, no back-off (was 5 retries, 40 s)
    assert not isolated.exists()


def test_a_resolution_failure_during_the_download_is_not_retried(
    isolated: Path, monkeypatch
) -> None:
    """The name resolved for the check but not for the request (the network went away)."""
    import socket
    import urllib.error

    calls: list[str] = []

    def no_dns(request, timeout=None):
        calls.append(request.full_url)
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(download_mod, "_check_resolves", lambda *a: None)
    monkeypatch.setattr(download_mod.urllib.request, "urlopen", no_dns)
    with pytest.raises(NetworkUnavailableError, match="Temporary failure in name resolution"):
        fetch("base", progress=False, retries=5, backoff=5.0)
    assert len(calls) == 1
