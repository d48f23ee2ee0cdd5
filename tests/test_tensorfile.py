"""glidekit.tensorfile: our streaming safetensors reader (the one every model load goes through)."""

import json
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
from glidekit.tensorfile import iter_tensors, read_header, read_tensors


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
