"""Bulk jobs (``generate --prompts-file``): resumable after SIGKILL, sharded under torchrun,
byte-identical PNGs for the same seed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from glidekit.cli.main import main
from glidekit.pipelines import read_png_params

PROMPTS = [
    "a red circle",
    "a blue square",
    "a cat",
    "a green triangle",
    "a dog on a hill",
    "a yellow star",
    "a boat",
    "a tree",
    "a house",
    "a car",
    "a bird",
    "a fish",
]
# Settings shared by every run in this file: the tiny base only, few steps, fixed seed.
JOB = ["--no-upsample", "--steps", "4", "--seed", "100", "-q"]


def _env() -> dict[str, str]:
    # The same thread count everywhere (torchrun sets 1 per process too).
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cmd(bundles, prompts: Path, outdir: Path) -> list[str]:  # noqa: F811
    return ["generate", "--prompts-file", str(prompts), "-o", str(outdir),
            "--base", str(bundles["base"]), *JOB]  # fmt: skip


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def _records(folder: Path) -> list[dict]:
    out = []
    for shard in sorted(folder.glob("manifest*.jsonl")):
        out += [json.loads(line) for line in shard.read_text().splitlines() if line.strip()]
    return out


@pytest.fixture(scope="module")
def job(bundles, tmp_path_factory):  # noqa: F811
    """A prompts file (plain lines, a comment, a JSON line) and a clean, uninterrupted run."""
    root = tmp_path_factory.mktemp("bulk")
    prompts = root / "prompts.txt"
    lines = ["# a bulk job", *PROMPTS[:5], "", json.dumps({"prompt": PROMPTS[5], "seed": 7,
             "num_images": 2}), *PROMPTS[6:]]  # fmt: skip
    prompts.write_text("\n".join(lines) + "\n")
    clean = root / "clean"
    proc = subprocess.run([sys.executable, "-m", "glidekit.cli.main", *_cmd(bundles, prompts, clean)],
                          env=_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"prompts": prompts, "clean": clean, "files": _pngs(clean), "root": root}


def test_clean_run_layout(job):
    files = job["files"]
    assert len(files) == len(PROMPTS) + 1  # the JSON line makes two images
    records = _records(job["clean"])
    assert sorted(r["index"] for r in records) == list(range(len(PROMPTS)))
    assert [r["prompt"] for r in records] == PROMPTS
    # Item i's seed is base + i unless its line sets one.
    assert [r["seed"] for r in records] == [100 + i if i != 5 else 7 for i in range(len(PROMPTS))]
    assert records[5]["files"] == ["00005-a-yellow-star-s7-0.png", "00005-a-yellow-star-s7-1.png"]
    params = read_png_params(job["clean"] / "00002-a-cat-s102.png")
    assert params["prompt"] == "a cat" and params["seed"] == 102 and params["item"] == 2
    assert not list(job["clean"].glob(".*"))  # no temporaries left


def test_rerun_skips_everything_and_other_jobs_are_refused(job, bundles, capsys):  # noqa: F811
    out = job["root"] / "rerun"
    shutil.copytree(job["clean"], out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert main([*_cmd(bundles, job["prompts"], out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["images"] == [] and data["job"]["skipped_items"] == len(PROMPTS)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps
    # Other settings into the same folder: refused, nothing written.
    argv = _cmd(bundles, job["prompts"], out)
    argv[argv.index("4")] = "5"
    assert main(argv) == 2
    assert "holds another bulk job (different options)" in capsys.readouterr().err
    assert _pngs(out) == job["files"]


def test_sigkill_and_resume_writes_every_image_once(job, bundles):  # noqa: F811
    out = job["root"] / "killed"
    cmd = [sys.executable, "-m", "glidekit.cli.main", *_cmd(bundles, job["prompts"], out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "manifest.rank0.jsonl"
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and manifest.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the job ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = _pngs(out)
    finished = _records(out)
    assert 3 <= len(finished) < len(PROMPTS)
    # Whatever was there at the kill is complete and identical to the clean run's file.
    assert before and all(job["files"][name] == data for name, data in before.items())
    for path in out.glob("*.png"):
        with Image.open(path) as img:
            img.load()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    recorded = {name for r in finished for name in r["files"]}

    # Resume with the same command.
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _pngs(out) == job["files"]  # every image, byte-identical, nothing extra
    records = _records(out)
    assert sorted(r["index"] for r in records) == list(range(len(PROMPTS)))  # each item once
    written_now = proc.stdout.split()
    assert not recorded & {Path(p).name for p in written_now}  # finished items were not redone
    for name in recorded:
        assert (out / name).stat().st_mtime_ns == stamps[name]
    assert not list(out.glob(".*.tmp"))


def test_torchrun_two_ranks_match_single_process(job, bundles):  # noqa: F811
    torchrun = shutil.which("torchrun")
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    out = job["root"] / "torchrun"
    # Items 0-2 were finished by an earlier single-process run (world size 1).
    out.mkdir()
    clean_records = _records(job["clean"])
    for record in clean_records[:3]:
        for name in record["files"]:
            shutil.copy2(job["clean"] / name, out / name)
    (out / "manifest.rank0.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in clean_records[:3])
    )
    shutil.copy2(job["clean"] / "job.json", out / "job.json")
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    cmd = [*launcher, "--standalone", "--nproc_per_node", "2", "-m", "glidekit.cli.main",
           *_cmd(bundles, job["prompts"], out)]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _pngs(out) == job["files"]
    records = _records(out)
    assert sorted(r["index"] for r in records) == list(range(len(PROMPTS)))
    new = [r for r in records if r["world_size"] == 2]
    assert sorted(r["index"] for r in new) == list(range(3, len(PROMPTS)))
    assert all(r["index"] % 2 == r["rank"] for r in new)
    assert {p.name for p in out.glob("manifest*.jsonl")} == {
        "manifest.rank0.jsonl",
        "manifest.rank1.jsonl",
    }
    for name, stamp in stamps.items():
        assert (out / name).stat().st_mtime_ns == stamp


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        out.append((kind, data[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


def test_same_seed_same_png_bytes(bundles, tmp_path, capsys):  # noqa: F811
    argv = ["generate", "a red circle", "a cat", "-n", "2", "--seed", "9", "--steps", "3",
            "--upsample-steps", "ddim3", "--base", str(bundles["base"]),
            "--upsampler", str(bundles["upsample"]), "-q"]  # fmt: skip
    assert main([*argv, "-o", str(tmp_path / "a")]) == 0
    time.sleep(1.1)  # a timestamp in the file would now differ
    assert main([*argv, "-o", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    a, b = _pngs(tmp_path / "a"), _pngs(tmp_path / "b")
    assert len(a) == 4 and a == b
    for data in a.values():
        kinds = [k for k, _ in _chunks(data)]
        assert b"tIME" not in kinds and b"eXIf" not in kinds
        texts = [c for k, c in _chunks(data) if k in (b"tEXt", b"iTXt", b"zTXt")]
        keys = {c.split(b"\0", 1)[0].decode() for c in texts}
        assert keys <= {"glidekit", "prompt", "seed", "model", "upsampler", "sampler", "steps",
                        "guidance_scale", "Software"}  # fmt: skip
        raw = next(c for k, c in _chunks(data) if k == b"tEXt" and c.startswith(b"glidekit\0"))
        params = json.loads(raw.split(b"\0", 1)[1])
        assert not {"time", "date", "created", "hostname", "pid"} & set(params)
    # And a different seed changes the bytes.
    other = ["10" if a == "9" else a for a in argv]
    assert main([*other, "-o", str(tmp_path / "c")]) == 0
    assert _pngs(tmp_path / "c").keys() != a.keys()
    assert set(_pngs(tmp_path / "c").values()).isdisjoint(a.values())


def test_batched_items_match_the_unbatched_run(job, bundles):  # noqa: F811
    """Issue 18: --batch-size samples several items in one model batch, each from its own
    seed's generator: the same files, names and params, and pixels within 1/255 of the
    unbatched run (this CPU's kernels are not bit-exact across batch sizes)."""
    import numpy as np

    out = job["root"] / "batched"
    proc = subprocess.run(
        [sys.executable, "-m", "glidekit.cli.main", *_cmd(bundles, job["prompts"], out),
         "--batch-size", "4"],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    batched = _pngs(out)
    assert sorted(batched) == sorted(job["files"])
    for name in batched:
        a, b = out / name, job["clean"] / name
        assert read_png_params(a) == read_png_params(b), name
        diff = np.abs(np.asarray(Image.open(a), np.int16) - np.asarray(Image.open(b), np.int16))
        assert diff.max() <= 1, name
    assert sorted(r["index"] for r in _records(out)) == list(range(len(PROMPTS)))
