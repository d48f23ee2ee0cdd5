"""glidekit.tensorfile: our streaming safetensors reader (the one every model load goes through)."""

import json
import os
import struct
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import golden_model
from safetensors.torch import load_file, save_file

from glidekit.checkpoints import CorruptCheckpointError, load_into, read_state_dict
from glidekit.nn.unet import create_model
from glidekit.tensorfile import (
    MAX_HEADER_BYTES,
    iter_tensors,
    read_header,
    read_tensors,
    write_tensors,
)


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 2, 2, generator=g).bfloat16(),
        "f64": torch.randn(4, generator=g).double(),
        "i64": torch.arange(-3, 9),
        "i8": torch.tensor([-1, 2, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def test_reads_what_safetensors_writes_bit_for_bit(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file(sample_tensors(), str(path), metadata={"who": "test"})
    ours, theirs = read_tensors(path), load_file(str(path))
    assert ours.keys() == theirs.keys()
    for k, v in theirs.items():
        assert ours[k].dtype == v.dtype and ours[k].shape == v.shape, k
        assert torch.equal(ours[k], v), k
    assert read_header(path).metadata == {"who": "test"}


def test_casts_floating_tensors_as_asked_and_leaves_the_rest(tmp_path):
    path = tmp_path / "t.safetensors"
    tensors = sample_tensors()
    save_file(tensors, str(path))
    got = read_tensors(path, {"f32": torch.bfloat16, "f16": torch.float32, "i64": torch.float16})
    assert got["f32"].dtype == torch.bfloat16 and torch.equal(got["f32"], tensors["f32"].bfloat16())
    assert got["f16"].dtype == torch.float32 and torch.equal(got["f16"], tensors["f16"].float())
    assert got["i64"].dtype == torch.int64  # integer tensors are never cast
    assert got["bf16"].dtype == torch.bfloat16


def _write_raw(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    ("header", "data", "match"),
    [
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "outside"),
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12"),
        ({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "dtype"),
        ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "shape"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, "outside"),
        ({"__metadata__": {"a": 1}}, b"", "__metadata__"),
        ([1, 2], b"", "JSON object"),
    ],
)
def test_bad_headers_are_refused_naming_the_file(tmp_path, header, data, match):
    path = tmp_path / "bad.safetensors"
    _write_raw(path, header, data)
    with pytest.raises(ValueError, match=match) as info:
        read_tensors(path)
    assert "bad.safetensors" in str(info.value)
    with pytest.raises(CorruptCheckpointError, match="bad.safetensors"):
        read_state_dict(path)


def test_header_size_beyond_the_file_and_garbage(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(ValueError, match="does not fit"):
        read_header(path)
    path.write_bytes(b"abc")
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", 3) + b"\xff{}")
    with pytest.raises(ValueError, match="not JSON"):
        read_header(path)


def test_a_file_truncated_after_its_header_was_read(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.ones(1000)}, str(path))
    header = read_header(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        list(iter_tensors(path, header=header))


def test_load_into_a_bf16_meta_model_reads_straight_into_bf16(tmp_path):
    model, _ = golden_model("text2im_forward")
    path = tmp_path / "m.safetensors"
    save_file(model.state_dict(), str(path))
    meta = create_model(model.config, device="meta")
    meta.convert_to_fp16(torch.bfloat16)
    load_into(meta, path)
    want = create_model(model.config)
    want.load_state_dict(model.state_dict())
    want.convert_to_fp16(torch.bfloat16)
    got = meta.state_dict()
    assert got["input_blocks.0.0.weight"].dtype == torch.bfloat16
    for k, v in want.state_dict().items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_loading_a_float32_file_into_bf16_never_holds_the_float32_copy(tmp_path):
    # 160 MB of float32 in 20 tensors, read into bfloat16 (80 MB). A memory-mapped read keeps
    # every page it touched resident (measured: 244 MB); ours holds the bf16 copy plus one reused
    # read buffer (measured: 92 MB).
    path = tmp_path / "big.safetensors"
    save_file({f"w{i}": torch.full((2_000_000,), float(i)) for i in range(20)}, str(path))
    script = textwrap.dedent(
        f"""
        import torch
        from glidekit.tensorfile import read_tensors

        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        before = status("VmRSS:")
        t = read_tensors({str(path)!r}, {{f"w{{i}}": torch.bfloat16 for i in range(20)}})
        assert all(v.dtype == torch.bfloat16 for v in t.values())
        print((status("VmHWM:") - before) / 1e6)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    growth_mb = float(out.stdout.strip())
    assert growth_mb < 110, f"peak grew by {growth_mb:.0f} MB for an 80 MB bf16 result"


# --------------------------------------------------------------------------------------------
# Hostile files (issue 16 items 1, 3, 6): one line naming the file, nothing large allocated
# --------------------------------------------------------------------------------------------


def _f32(begin: int, end: int, n: int | None = None) -> dict:
    return {
        "dtype": "F32",
        "shape": [(end - begin) // 4 if n is None else n],
        "data_offsets": [begin, end],
    }


@pytest.mark.parametrize(
    ("header", "data", "match"),
    [
        ({"a": _f32(0, 8), "b": _f32(4, 12)}, b"\0" * 12, "'b' overlaps tensor 'a'"),
        ({"a": _f32(0, 8), "b": _f32(0, 8)}, b"\0" * 8, "overlaps"),  # aliased
        ({"a": _f32(0, 8), "b": _f32(12, 16)}, b"\0" * 16, "4 bytes of data before tensor 'b'"),
        ({"a": _f32(0, 8)}, b"\0" * 12, "4 bytes at the end of the data belong to no tensor"),
        (
            {"z": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}},
            b"",
            "impossible shape",
        ),
        (
            {"z": {"dtype": "F32", "shape": [2**63], "data_offsets": [0, 8]}},
            b"\0" * 8,
            "impossible shape",
        ),
        (
            {"z": {"dtype": "U8", "shape": [1] * 17, "data_offsets": [0, 1]}},
            b"\0",
            "impossible shape",
        ),
        ({"z": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, "bad shape"),
        ({"z": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4]}}, b"\0" * 4, "outside"),
    ],
)
def test_offsets_tile_the_data_and_shapes_are_bounded(tmp_path, header, data, match):
    path = tmp_path / "bad.safetensors"
    _write_raw(path, header, data)
    with pytest.raises(ValueError, match=match) as info:
        read_tensors(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    with pytest.raises(CorruptCheckpointError, match="bad.safetensors"):
        read_state_dict(path)


def test_several_zero_size_tensors_may_share_an_offset(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.zeros(0), "b": torch.zeros(0, 3), "c": torch.ones(2)}, str(path))
    got = read_tensors(path)
    assert got["b"].shape == (0, 3) and torch.equal(got["c"], torch.ones(2))


def test_a_deeply_nested_header_is_refused_without_recursion_error(tmp_path):
    path = tmp_path / "deep.safetensors"
    for text in (
        b"[" * 200_000 + b"]" * 200_000,
        b'{"__metadata__": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    ):
        path.write_bytes(struct.pack("<Q", len(text)) + text)
        with pytest.raises(ValueError, match="deep.safetensors: the header nests deeper"):
            read_header(path)


def test_header_limits_and_duplicate_keys(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}" + b" " * 16)
    with pytest.raises(ValueError, match="over the 16777216-byte limit"):
        read_header(path)
    text = b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": {}}'
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0")
    with pytest.raises(ValueError, match="the key 'a' appears twice"):
        read_header(path)


def test_fifos_devices_and_folders_are_refused_without_blocking(tmp_path):
    """A FIFO with no writer would block open() forever: refused from stat, in a child process
    so that a regression fails the test instead of hanging it."""
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    script = f"from glidekit.tensorfile import read_tensors\nread_tensors({str(fifo)!r})"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1 and "ValueError" in out.stderr
    assert f"{fifo}: a FIFO, not a file" in out.stderr
    for path, kind in (
        (fifo, "a FIFO"),
        ("/dev/null", "a character device"),
        (tmp_path, "a folder"),
    ):
        with pytest.raises(ValueError, match=f"{kind}, not a file"):
            read_header(path)
    with pytest.raises(CorruptCheckpointError, match="a FIFO"):
        read_state_dict(tmp_path / "pipe.safetensors")
    pt = tmp_path / "pipe.pt"
    os.mkfifo(pt)
    with pytest.raises(CorruptCheckpointError, match="a FIFO"):  # never reaches torch.load
        read_state_dict(pt)
    with pytest.raises(FileNotFoundError):
        read_header(tmp_path / "missing.safetensors")


def test_aliased_entries_cost_no_memory(tmp_path):
    """Issue 16 item 1: 200 extra entries pointing at one 4 MB region (safetensors refuses the
    file; glidekit read 1.1 GB before failing). Refused from the header, nothing read."""
    path = tmp_path / "alias.safetensors"
    region = 1_000_000 * 4
    header = {"w": _f32(0, region)}
    header.update({f"alias{i}": _f32(0, region) for i in range(200)})
    _write_raw(path, header, b"\0" * region)
    script = textwrap.dedent(
        f"""
        from glidekit.tensorfile import read_tensors

        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        before = status("VmRSS:")
        try:
            read_tensors({str(path)!r})
        except ValueError as exc:
            print(exc)
        print((status("VmHWM:") - before) / 1e6)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    message, growth_mb = out.stdout.strip().splitlines()
    assert "alias.safetensors: tensor" in message and "overlaps tensor" in message
    assert float(growth_mb) < 20, f"peak grew by {growth_mb} MB"


def test_the_writer_is_deterministic_and_safetensors_reads_it(tmp_path):
    tensors = sample_tensors()
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_tensors(a, tensors, {"z": "1", "a": "2"})
    write_tensors(b, dict(reversed(list(tensors.items()))), {"a": "2", "z": "1"})
    assert a.read_bytes() == b.read_bytes()
    theirs = load_file(str(a))
    for k, v in tensors.items():
        assert theirs[k].dtype == v.dtype and torch.equal(theirs[k], v), k
    assert read_header(a).metadata == {"a": "2", "z": "1"}
    write_tensors(b, tensors, dtype=torch.float16)
    half = read_tensors(b)
    assert half["f32"].dtype == torch.float16 and half["i64"].dtype == torch.int64
    assert torch.equal(half["f64"], tensors["f64"].half())
    with pytest.raises(ValueError, match="metadata must map strings"):
        write_tensors(b, tensors, {"a": 1})
