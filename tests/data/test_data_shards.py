"""WebDataset-style tar shards: brace patterns, splitting over ranks x workers, shuffling."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from glidekit.data.shards import TarShardDataset, expand_brace_pattern, iter_tar_samples

N_SHARDS, PER_SHARD = 3, 10


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _encode(value: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), (value, 255 - value, 7)).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    fmts = [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")]
    for s in range(N_SHARDS):
        with tarfile.open(root / f"{s:06d}.tar", "w") as tar:
            for k in range(PER_SHARD):
                key = f"s{s}_{k:03d}"
                ext, fmt = fmts[(s + k) % len(fmts)]
                _add(tar, f"{key}.{ext}", _encode(8 * (s * PER_SHARD + k), fmt))
                if k != 0:
                    _add(tar, f"{key}.txt", f"caption {key}".encode())
                _add(tar, f"{key}.json", b"{}")
    return root


def test_expand_brace_pattern() -> None:
    assert expand_brace_pattern("d/{000000..000002}.tar") == [
        "d/000000.tar",
        "d/000001.tar",
        "d/000002.tar",
    ]
    assert expand_brace_pattern("{8..10}") == ["8", "9", "10"]
    assert expand_brace_pattern("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_brace_pattern("plain.tar") == ["plain.tar"]
    for bad in ("d/{0..3.tar", "d/0..3}.tar", "{{1..2}}", "{5..1}", "{}", "{a..b}"):
        with pytest.raises(ValueError, match="pattern"):
            expand_brace_pattern(bad)


def test_iter_tar_samples_groups_by_key(shard_dir: Path) -> None:
    samples = list(iter_tar_samples(shard_dir / "000000.tar"))
    assert [s["__key__"] for s in samples] == [f"s0_{k:03d}" for k in range(PER_SHARD)]
    assert "txt" not in samples[0] and samples[1]["txt"] == b"caption s0_001"


def _keys(ds, **loader_kw) -> list[str]:
    loader = DataLoader(ds, batch_size=None, **loader_kw)
    return [item["key"] for item in loader]


def test_shards_dataset_items(shard_dir: Path) -> None:
    ds = TarShardDataset(str(shard_dir / "{000000..000002}.tar"), image_size=8, low_res_size=4)
    items = list(ds)
    assert len(items) == N_SHARDS * PER_SHARD
    for item in items:
        assert item["image"].shape == (3, 8, 8) and item["low_res"].shape == (3, 4, 4)
        assert -1 <= float(item["image"].min()) <= float(item["image"].max()) <= 1
        expected = "" if item["key"].endswith("_000") else f"caption {item['key']}"
        assert item["caption"] == expected
    # the decoded colour matches the sample it was written for
    by_key = {it["key"]: it for it in items}
    red = (by_key["s1_002"]["image"][0, 4, 4] + 1) * 127.5
    assert abs(float(red) - 8 * 12) < 6
    # a folder, or a list of paths, work as well
    assert len(list(TarShardDataset(shard_dir, image_size=8, shuffle_buffer=0))) == 30
    paths = sorted(shard_dir.glob("*.tar"))
    assert len(list(TarShardDataset(paths[:2], image_size=8))) == 20


def test_shards_split_over_ranks_and_workers(shard_dir: Path) -> None:
    pattern = str(shard_dir / "{000000..000002}.tar")
    all_keys = {f"s{s}_{k:03d}" for s in range(N_SHARDS) for k in range(PER_SHARD)}

    def epoch_keys(epoch: int, seed: int = 1, split: str = "auto") -> list[list[str]]:
        per_rank = []
        for rank in range(2):
            ds = TarShardDataset(
                pattern,
                image_size=8,
                shuffle_buffer=8,
                seed=seed,
                rank=rank,
                world_size=2,
                split=split,  # type: ignore[arg-type]
            )
            ds.set_epoch(epoch)
            per_rank.append(_keys(ds, num_workers=2))
        return per_rank

    e0 = epoch_keys(0)
    flat0 = e0[0] + e0[1]
    assert len(flat0) == len(all_keys) and set(flat0) == all_keys  # each sample exactly once
    assert epoch_keys(0) == e0  # deterministic
    e1 = epoch_keys(1)
    assert sorted(e1[0] + e1[1]) == sorted(all_keys)
    assert e1 != e0  # the order changes with the epoch
    assert epoch_keys(0, seed=2) != e0

    # shard-level split: 3 shards over 2 ranks x 1 worker, still exactly once
    flat = []
    for rank in range(2):
        ds = TarShardDataset(pattern, image_size=8, rank=rank, world_size=2, split="shard")
        flat += _keys(ds)
    assert sorted(flat) == sorted(all_keys)


def test_shards_errors_and_corrupt(shard_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="shards"):
        TarShardDataset(str(shard_dir / "{000000..000009}.tar"))
    with pytest.raises(ValueError, match="pattern"):
        TarShardDataset(str(shard_dir / "{000000..000002.tar"))
    with pytest.raises(ValueError, match="shards"):
        TarShardDataset([])
    with pytest.raises(ValueError, match="rank"):
        TarShardDataset(shard_dir, rank=2, world_size=2)

    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        _add(tar, "x1.png", b"garbage")
        _add(tar, "x1.txt", b"bad image")
        _add(tar, "x2.png", _encode(100, "PNG"))
    with pytest.warns(RuntimeWarning, match="x1"):
        items = list(TarShardDataset(bad, image_size=8))
    assert [it["key"] for it in items] == ["x2"]

    truncated = tmp_path / "trunc.tar"
    truncated.write_bytes((shard_dir / "000000.tar").read_bytes()[:5000])
    with pytest.warns(RuntimeWarning, match="trunc.tar"):
        items = list(TarShardDataset(truncated, image_size=8))
    assert 0 < len(items) < PER_SHARD
    assert np.isfinite(torch.stack([it["image"] for it in items]).numpy()).all()
