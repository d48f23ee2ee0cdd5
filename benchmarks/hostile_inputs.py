#!/usr/bin/env python3
"""Hostile inputs of issue 16 (items 1-13, and issue 19 item 3): make the bad files, run glidekit
on each, and report how many were handled cleanly and the peak memory of the worst case.

Every case is a fresh process: the ``glidekit`` command line (``python -m glidekit.cli.main``)
or a short Python script calling the API. A case is handled **cleanly** when

* the command line exits with the documented code (2 for bad input) and its error is one line
  (only glidekit's own log lines before it), with no traceback; a Python call raises the
  documented exception (a ``ValueError``; ``CheckpointError`` for model files) with a one-line
  message, without hanging;
* nothing was written or replaced in the folders the case watches (the output folder, the run
  folder, the cache, the bulk folder).

Items 10 and 12 are checked by their outcome instead: two exports of one checkpoint are the same
bytes, and a second training run on a busy run folder is refused while the first one trains on
undisturbed. Peak memory is each process's own ``ru_maxrss`` (``os.wait4``); the baseline is the
command line refusing a missing file (interpreter, torch and glidekit imported).

Everything happens in a temporary folder, removed at the end (``--keep`` keeps it); downloads go
to a server on 127.0.0.1 only, and ``GLIDEKIT_OFFLINE=1`` everywhere else.

Usage::

    python benchmarks/hostile_inputs.py [--json] [--details] [--keep] [--only 7 8 13]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from glidekit.cli.bulk import lock_path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GLIDEKIT_SHARED", REPO.parent / "shared"))
logger = logging.getLogger("hostile_inputs")

_LOG_LINE = ("DEBUG glidekit", "INFO glidekit", "WARNING glidekit")

#: What each item of issue 16 is about (issue 19 item 3 is reported as item "19.3").
ITEMS = {
    "1": "overlapping / aliased tensor offsets",
    "2": "model file with a missing tensor, a wrong or oversized config, no config key",
    "3": "zero-size tensor with a dimension of 2**63",
    "4": "symlink loop as --base",
    "5": "CLIP file whose config asks for a huge vocabulary",
    "6": "Python API: FIFO, deeply nested header",
    "7": "30000x30000 1-bit PNG (109 KB) to inpaint / upsample / edit / --from",
    "8": "12000x12000 1-bit PNG (17 KB) and --max-megapixels",
    "9": "bulk job: a user's file with an item's name; two identical jobs",
    "10": "the same checkpoint exported twice gives the same bytes",
    "11": "corrupted training checkpoint on resume",
    "12": "a second training run on a busy run folder",
    "13": "download server sending wrong bytes / another model",
    "19.3": "download with no network (name resolution)",
}


# ----------------------------------------------------------------------------- results


@dataclass
class Case:
    """One hostile input and what glidekit did with it."""

    item: str
    name: str
    clean: bool = False
    rc: int | None = None
    error: str = ""  # the error line (or the exception) glidekit gave
    why: str = ""  # what was not clean
    peak_mb: float = 0.0
    seconds: float = 0.0


@dataclass
class Proc:
    """A finished process: exit code, output, peak RSS in MB, wall seconds, whether it hung."""

    rc: int
    out: str
    err: str
    peak_mb: float
    seconds: float
    hung: bool = False

    @property
    def lines(self) -> list[str]:
        return self.err.strip().splitlines()


@dataclass
class Bench:
    """Where the files live, the environment of every process, the results so far."""

    work: Path
    env: dict[str, str]
    cases: list[Case] = field(default_factory=list)
    baseline_mb: float = 0.0

    def add(self, case: Case) -> Case:
        self.cases.append(case)
        state = "clean" if case.clean else f"NOT CLEAN ({case.why})"
        logger.info("item %s, %s: %s", case.item, case.name, state)
        return case


# ----------------------------------------------------------------------------- processes


#: Runs ARGV[2:] and writes its peak RSS (KiB) to ARGV[1]. A child's ``ru_maxrss`` counts the
#: high-water mark of the process it was spawned from (Linux carries it over ``exec``), and this
#: script decodes big pictures and imports torch: every case is started from this small
#: process instead, so that its peak is its own.
_PEAK_WRAPPER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(child.returncode if child.returncode >= 0 else 128 - child.returncode)
"""


def run_process(
    argv: list[str], env: dict[str, str], timeout: float = 180, cwd: Path | None = None
) -> Proc:
    """Run ``argv`` (through the peak-measuring wrapper); kill it after ``timeout`` s."""
    with tempfile.NamedTemporaryFile("r", suffix=".peak", dir=cwd) as peak:
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-c", _PEAK_WRAPPER, peak.name, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            text=True,
            start_new_session=True,  # one process group: a timeout kills the case too
        )
        hung = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            hung = True
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        seconds = time.monotonic() - start
        text = peak.read().strip()
    peak_mb = int(text) / 1024 if text else 0.0  # KiB on Linux
    return Proc(proc.returncode, out, err, peak_mb, seconds, hung)


def glidekit(bench: Bench, *args: str, env: dict[str, str] | None = None, **kw: Any) -> Proc:
    argv = [sys.executable, "-m", "glidekit.cli.main", *map(str, args)]
    return run_process(argv, env or bench.env, cwd=bench.work, **kw)


def listing(*folders: Path, locks: bool = False) -> dict[str, str]:
    """{path: sha256} of every file and folder under ``folders`` (missing folders are empty).

    Empty ``*.lock`` files are left out unless ``locks``: a download's lock file stays in the
    cache by design (waiting processes must share one inode; see filelock), it holds nothing.
    """
    out: dict[str, str] = {}
    for folder in folders:
        if folder.is_file():
            out[str(folder)] = hashlib.sha256(folder.read_bytes()).hexdigest()
        elif folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if not locks and path.name.endswith(".lock") and path.is_file():
                    if path.stat().st_size == 0:
                        continue
                if path.is_file() and not path.is_symlink():
                    out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
                elif path.is_dir() or path.is_symlink():
                    out[str(path)] = "folder" if path.is_dir() else "link"
            out[str(folder)] = "folder"
    return out


def changes(before: dict[str, str], after: dict[str, str]) -> str:
    """What was written, replaced or removed, in a few words ("" when nothing)."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    replaced = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    parts = []
    for what, names in (("wrote", added), ("replaced", replaced), ("removed", removed)):
        if names:
            shown = ", ".join(Path(n).name for n in names[:3])
            parts.append(
                f"{what} {shown}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            )
    return "; ".join(parts)


def cli_case(
    bench: Bench,
    item: str,
    name: str,
    args: list[Any],
    *,
    watch: list[Path],
    expect_rc: int = 2,
    needle: str = "",
    env: dict[str, str] | None = None,
    timeout: float = 180,
    locks: bool = False,
) -> Case:
    """Run the command line on a hostile input; clean = the documented exit code, one error
    line (containing ``needle``), no traceback, nothing written under ``watch`` (``locks``:
    not even an empty lock file)."""
    before = listing(*watch, locks=locks)
    proc = glidekit(bench, *args, env=env, timeout=timeout)
    wrote = changes(before, listing(*watch, locks=locks))
    command = str(args[0])
    last = proc.lines[-1] if proc.lines else ""
    why = []
    if proc.hung:
        why.append(f"hung (killed after {timeout:.0f} s)")
    if proc.rc != expect_rc:
        why.append(f"exit code {proc.rc}, not {expect_rc}")
    if "Traceback" in proc.err:
        why.append("traceback")
    if not last.startswith(f"glidekit {command}: error: "):
        why.append("no error line")
    elif not all(line.startswith(_LOG_LINE) for line in proc.lines[:-1]):
        why.append(f"{len(proc.lines)} lines on stderr, not one")
    if needle and needle not in last:
        why.append(f"message lacks {needle!r}")
    if wrote:
        why.append(wrote)
    return bench.add(
        Case(item, name, not why, proc.rc, last[:300], "; ".join(why), proc.peak_mb, proc.seconds)
    )


_API_SCRIPT = """
import json, sys
sys.setrecursionlimit(10000)
result = {"raised": None}
try:
    exec(sys.argv[1])
except BaseException as exc:
    import glidekit.checkpoints as ck
    result = {"raised": type(exc).__name__, "message": str(exc),
              "value_error": isinstance(exc, ValueError),
              "checkpoint_error": isinstance(exc, ck.CheckpointError)}
print(json.dumps(result))
"""


def api_case(
    bench: Bench,
    item: str,
    name: str,
    code: str,
    *,
    expect: str = "value_error",
    needle: str = "",
    watch: tuple[Path, ...] = (),
    timeout: float = 60,
) -> Case:
    """Run ``code`` (Python) in a fresh process; clean = it raises the documented exception
    (``expect``: "value_error" or "checkpoint_error") with a one-line message, in time."""
    before = listing(*watch)
    argv = [sys.executable, "-c", _API_SCRIPT, code]
    proc = run_process(argv, bench.env, timeout=timeout, cwd=bench.work)
    wrote = changes(before, listing(*watch))
    why = []
    message = ""
    if proc.hung:
        why.append(f"hung (killed after {timeout:.0f} s)")
    else:
        try:
            result = json.loads(proc.out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            result = {"raised": "crash", "message": proc.err[-300:]}
        message = f"{result.get('raised')}: {result.get('message', '')}"
        if not result.get(expect):
            why.append(f"raised {result.get('raised')}, not a documented {expect}")
        if "\n" in str(result.get("message", "")):
            why.append("message of several lines")
        if needle and needle not in str(result.get("message", "")):
            why.append(f"message lacks {needle!r}")
    if wrote:
        why.append(wrote)
    return bench.add(
        Case(
            item, name, not why, proc.rc, message[:300], "; ".join(why), proc.peak_mb, proc.seconds
        )  # fmt: skip
    )


# ----------------------------------------------------------------------------- bad files


def tiny_training_config(out_dir: Path, steps: int) -> dict[str, Any]:
    """A tiny shapes-world text-to-image run (16x16, 0.9M parameters): seconds on a CPU."""
    return {
        "model": {"kind": "text2im", "image_size": 16, "num_channels": 32, "num_res_blocks": 1,
                  "channel_mult": [1, 2], "attention_resolutions": [8], "num_head_channels": 32,
                  "xf_width": 32, "xf_layers": 1, "xf_heads": 1, "text_ctx": 16, "dropout": 0.0},
        "data": {"kind": "shapes", "length": 64},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "ema_decay": 0.99},
        "train": {"steps": steps, "batch_size": 4, "out_dir": str(out_dir), "log_every": 1,
                  "checkpoint_every": 2, "progress": False, "threads": 1},
        "sample": {"every": 0, "count": 2, "steps": "3"},
    }  # fmt: skip


def write_raw_safetensors(path: Path, header: dict[str, Any], data: bytes) -> Path:
    """A safetensors file with exactly this header (no checks): 8-byte length, JSON, data."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def rewritten_model(src: Path, dest: Path, *, metadata: dict[str, Any] | None = None,
                    drop: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """A copy of a glidekit model file with metadata entries replaced (None: removed) and
    tensors dropped."""
    from glidekit.tensorfile import read_header, read_tensors, write_tensors

    meta = dict(read_header(src).metadata)
    for key, value in (metadata or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value if isinstance(value, str) else json.dumps(value)
    tensors = {k: v for k, v in read_tensors(src).items() if k not in drop}
    write_tensors(dest, tensors, meta)
    return dest


def flip_bytes_in_largest_tensor(path: Path, n: int = 256) -> None:
    """Invert ``n`` bytes in the middle of the largest stored tensor of a torch zip file."""
    with zipfile.ZipFile(path) as archive:
        entry = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    with open(path, "r+b") as f:
        f.seek(entry.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        start = entry.header_offset + 30 + name_len + extra_len + (entry.file_size - n) // 2
        f.seek(start)
        data = f.read(n)
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in data))


def one_bit_png(path: Path, side: int) -> Path:
    from PIL import Image

    Image.new("1", (side, side), 0).save(path, optimize=True)
    return path


# ----------------------------------------------------------------------------- the cases


def items_1_to_6(bench: Bench, model: Path, clip: Path) -> None:
    """Model files: offsets, configs, shapes, symlink loops, CLIP vocabularies, FIFOs."""
    from glidekit.checkpoints import modelfile as mf
    from glidekit.tensorfile import read_header

    files = bench.work / "models"
    files.mkdir(exist_ok=True)
    out = bench.work / "out"

    def generate(path: Path, *extra: Any) -> list[Any]:
        return ["generate", "a red circle", "--base", path, "--no-upsample", "--steps", "2",
                "-o", out, *extra]  # fmt: skip

    def f32(begin: int, end: int) -> dict[str, Any]:
        return {"dtype": "F32", "shape": [(end - begin) // 4], "data_offsets": [begin, end]}

    overlap = write_raw_safetensors(
        files / "overlap.safetensors", {"a": f32(0, 8), "b": f32(4, 12)}, bytes(12)
    )
    region = 4_000_000
    alias_header = {"w": f32(0, region), **{f"alias{i}": f32(0, region) for i in range(200)}}
    alias = write_raw_safetensors(files / "alias.safetensors", alias_header, bytes(region))
    watch = [out, files]
    cli_case(bench, "1", "overlapping offsets, generate --base", generate(overlap), watch=watch,
             needle="overlap")  # fmt: skip
    cli_case(bench, "1", "200 aliases of one 4 MB region, generate --base", generate(alias),
             watch=watch, needle="overlap")  # fmt: skip
    cli_case(bench, "1", "200 aliases, convert", ["convert", alias], watch=watch)
    api_case(bench, "1", "200 aliases, read_tensors",
             f"from glidekit.tensorfile import read_tensors; read_tensors({str(alias)!r})",
             needle="overlaps")  # fmt: skip

    config = json.loads(read_header(model).metadata[mf.CONFIG_KEY])
    variants = {
        "missing tensor": {"drop": ("out.2.weight",)},
        "config that does not match the tensors": {
            "metadata": {mf.CONFIG_KEY: {**config, "num_channels": 64}}
        },
        "oversized config (num_channels 10**6)": {
            "metadata": {mf.CONFIG_KEY: {**config, "num_channels": 10**6}}
        },
        "no glidekit.config key": {"metadata": {mf.CONFIG_KEY: None}},
    }
    for i, (what, change) in enumerate(variants.items()):
        bad = rewritten_model(model, files / f"unet{i}.safetensors", **change)
        cli_case(bench, "2", f"{what}, generate --base", generate(bad), watch=watch,
                 needle=str(bad))  # fmt: skip
        api_case(bench, "2", f"{what}, load_unet",
                 f"from glidekit.checkpoints import load_unet; load_unet({str(bad)!r})",
                 expect="checkpoint_error")  # fmt: skip

    huge = write_raw_safetensors(
        files / "huge.safetensors",
        {"z": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}},
        b"",
    )
    cli_case(bench, "3", "dimension 2**63, generate --base", generate(huge), watch=watch)
    api_case(bench, "3", "dimension 2**63, read_tensors",
             f"from glidekit.tensorfile import read_tensors; read_tensors({str(huge)!r})")  # fmt: skip

    loop = files / "loop.safetensors"
    loop.symlink_to(loop)
    cli_case(bench, "4", "symlink loop, generate --base", generate(loop), watch=[out])

    clip_config = json.loads(read_header(clip).metadata[mf.CLIP_CONFIG_KEY])
    for vocab in (10**8, 2 * 10**6):
        bad = rewritten_model(clip, files / f"clip{vocab}.safetensors",
                              metadata={mf.CLIP_CONFIG_KEY: {**clip_config, "n_vocab": vocab}})  # fmt: skip
        cli_case(bench, "5", f"CLIP n_vocab={vocab:.0e}, generate --guidance clip",
                 generate(model, "--guidance", "clip", "--clip-image-enc", bad,
                          "--clip-text-enc", bad), watch=watch, needle="n_vocab")  # fmt: skip

    fifo = files / "pipe.safetensors"
    os.mkfifo(fifo)
    api_case(bench, "6", "FIFO, read_tensors",
             f"from glidekit.tensorfile import read_tensors; read_tensors({str(fifo)!r})",
             needle="FIFO", timeout=30)  # fmt: skip
    cli_case(bench, "6", "FIFO, generate --base", generate(fifo), watch=[out], timeout=60)
    deep = files / "deep.safetensors"
    text = b"[" * 200_000 + b"]" * 200_000
    deep.write_bytes(struct.pack("<Q", len(text)) + text)
    api_case(bench, "6", "header nested 200000 deep, read_tensors",
             f"from glidekit.tensorfile import read_tensors; read_tensors({str(deep)!r})",
             needle="nests")  # fmt: skip


def items_7_8(bench: Bench) -> None:
    """Pictures far over the pixel limit, as picture or mask of every command that reads one."""
    from PIL import Image

    pics = bench.work / "pictures"
    pics.mkdir(exist_ok=True)
    bomb = one_bit_png(pics / "bomb-30000.png", 30000)
    big = one_bit_png(pics / "big-12000.png", 12000)
    small = pics / "small.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(small)
    mask = pics / "mask.png"
    Image.new("L", (64, 64), 0).save(mask)
    out = bench.work / "out"
    for item, bad in (("7", bomb), ("8", big)):
        label = f"{bad.name} ({bad.stat().st_size // 1000} KB)"
        runs = {
            "inpaint IMAGE": ["inpaint", bad, mask, "a red square"],
            "inpaint MASK": ["inpaint", small, bad, "a red square"],
            "upsample IMAGE": ["upsample", bad, "a red square"],
            "edit IMAGE": ["edit", bad, "a red square"],
            "edit --mask": ["edit", small, "a red square", "--mask", bad],
            "generate --from": ["generate", "--from", bad],
        }
        for what, args in runs.items():
            cli_case(bench, item, f"{label} as {what}", [*args, "-o", out],
                     watch=[out, pics])  # fmt: skip
    cli_case(bench, "8", "--max-megapixels inf", ["upsample", small, "a", "--max-megapixels",
             "inf", "-o", out], watch=[out], needle="--max-megapixels")  # fmt: skip
    cli_case(bench, "8", "64x64 over --max-megapixels 0.001",
             ["upsample", small, "a", "--max-megapixels", "0.001", "-o", out], watch=[out],
             needle="megapixels")  # fmt: skip


def item_9(bench: Bench, model: Path) -> None:
    """Bulk jobs: a user's file under an item's name; a second identical job."""
    from PIL import Image

    root = bench.work / "bulk"
    root.mkdir(exist_ok=True)
    prompts = root / "prompts.txt"
    prompts.write_text(json.dumps({"prompt": "a red circle", "name": "mine"}) + "\na blue square\n")
    for what, make in (
        ("a user's mine.png", lambda p: Image.new("RGB", (40, 30), (1, 2, 3)).save(p)),
        ("a user's 30000x30000 mine.png", lambda p: one_bit_png(p, 30000)),
    ):
        folder = root / f"job{len(bench.cases)}"
        folder.mkdir()
        make(folder / "mine.png")
        cli_case(bench, "9", f"{what} where an item is called mine",
                 ["generate", "--prompts-file", prompts, "-o", folder, "--base", model,
                  "--no-upsample", "--steps", "2", "--seed", "1", "-q"], watch=[folder],
                 needle="mine.png")  # fmt: skip

    # Two identical jobs: the first is frozen (SIGSTOP) while it holds the folder, the second
    # must fail at once and write nothing; then the first finishes alone.
    folder = root / "twice"
    three = root / "three.txt"
    three.write_text("a red circle\na blue square\na green triangle\n")
    args = ["generate", "--prompts-file", three, "-o", folder, "--base", model, "--no-upsample",
            "--steps", "12", "--seed", "1", "-q"]  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-m", "glidekit.cli.main", *map(str, args)],
        env=bench.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = lock_path(folder, 0, Path(bench.env["GLIDEKIT_CACHE"]))  # in the cache
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if first.poll() is not None or not lock.exists():
        bench.add(Case("9", "two identical jobs", why="the first job never held a lock file"))
        first.kill()
        first.wait()
        return
    os.kill(first.pid, signal.SIGSTOP)
    try:
        case = cli_case(bench, "9", "a second identical job while the first runs", args,
                        watch=[folder], needle="another bulk job")  # fmt: skip
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    records = [
        json.loads(line)
        for shard in folder.glob("manifest*.jsonl")
        for line in shard.read_text().splitlines()
        if line.strip()
    ]
    indices = sorted(r["index"] for r in records)
    if first.returncode != 0 or indices != [0, 1, 2]:
        case.clean = False
        case.why = (case.why + "; " if case.why else "") + (
            f"first job: exit {first.returncode}, manifest items {indices}"
        )


def items_10_to_12(bench: Bench) -> Path:
    """Training: byte-reproducible exports, a corrupted checkpoint, a busy run folder. Returns
    the exported tiny model (the good model file the other items start from)."""
    run = bench.work / "run"
    config = bench.work / "train.json"
    config.write_text(json.dumps(tiny_training_config(run, steps=4)))
    proc = glidekit(bench, "train", config)
    if proc.rc != 0:
        raise SystemExit(f"the tiny training run failed:\n{proc.err[-3000:]}")
    model = bench.work / "model.safetensors"
    shutil.copyfile(run / "export.safetensors", model)

    # 10: the same checkpoint exported by two processes.
    exports = [bench.work / f"export{i}.safetensors" for i in range(2)]
    procs = [
        glidekit(bench, "train", config, f"export.path={path}", "--resume", "--export-only")
        for path in exports
    ]
    same = all(p.rc == 0 for p in procs) and exports[0].read_bytes() == exports[1].read_bytes()
    bench.add(Case("10", "export twice, two processes", same, procs[-1].rc,
                   why="" if same else "the two exports differ",
                   peak_mb=max(p.peak_mb for p in procs),
                   seconds=sum(p.seconds for p in procs)))  # fmt: skip

    # 11: 256 flipped bytes inside a tensor of checkpoint.pt, then a truncated one.
    for what, damage in (
        ("256 flipped bytes in a tensor", flip_bytes_in_largest_tensor),
        ("truncated to half", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
    ):
        broken = bench.work / f"run-{len(bench.cases)}"
        shutil.copytree(run, broken)
        cfg = bench.work / f"train-{len(bench.cases)}.json"
        cfg.write_text(json.dumps(tiny_training_config(broken, steps=8)))
        damage(broken / "checkpoint.pt")
        cli_case(bench, "11", f"checkpoint.pt with {what}, train --resume",
                 ["train", cfg, "--resume"], watch=[broken], needle="checkpoint")  # fmt: skip

    # 12: a second `train --resume` while the first trains (frozen with SIGSTOP so that the
    # second meets it); the first then trains on alone.
    busy = bench.work / "busy"
    shutil.copytree(run, busy)
    cfg = bench.work / "train-busy.json"
    cfg.write_text(json.dumps(tiny_training_config(busy, steps=40)))
    metrics = busy / "metrics.jsonl"
    lines_before = len(metrics.read_text().splitlines())
    first = subprocess.Popen(
        [sys.executable, "-m", "glidekit.cli.main", "train", str(cfg), "--resume"],
        env=bench.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while (
        first.poll() is None
        and len(metrics.read_text().splitlines()) <= lines_before
        and time.monotonic() < deadline
    ):
        time.sleep(0.005)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        case = cli_case(bench, "12", "train --resume while another run trains there",
                        ["train", cfg, "--resume"], watch=[busy], needle="in use")  # fmt: skip
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first.communicate(timeout=600)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    if first.returncode != 0 or steps != sorted(set(steps)):
        case.clean = False
        case.why = (case.why + "; " if case.why else "") + (
            f"first run: exit {first.returncode}, metrics steps {steps}"
        )
    return model


class _Server:
    """Serves one file on 127.0.0.1, optionally with a ``Content-MD5`` of other bytes."""

    def __init__(self) -> None:
        self.body = b""
        self.md5_of: bytes | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._head()

            def do_GET(self) -> None:
                self._head()
                self.wfile.write(server.body)

            def _head(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                if server.md5_of is not None:
                    digest = hashlib.md5(server.md5_of).digest()
                    self.send_header("Content-MD5", base64.b64encode(digest).decode())
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def item_13(bench: Bench, model: Path) -> None:
    """Downloads: wrong bytes of the right size, a pinned sha256, another model, no network."""
    import torch

    from glidekit.tensorfile import read_tensors

    state = read_tensors(model)
    good_dir, other_dir = bench.work / "dl-good", bench.work / "dl-other"
    for folder, sd in ((good_dir, state), (other_dir, {k: v + 1 for k, v in state.items()})):
        folder.mkdir()
        torch.save(sd, folder / "base.pt")  # the same archive name: the same size
    good, wrong = (good_dir / "base.pt").read_bytes(), (other_dir / "base.pt").read_bytes()
    specs = bench.work / "specs.json"
    layout = [[k, list(v.shape), "float32"] for k, v in state.items()]
    specs.write_text(json.dumps({"checkpoints": {"base": {"state_dict": layout}}}))
    torch.save({"w": torch.zeros(3)}, bench.work / "other-model.pt")

    server = _Server()
    cache = bench.work / "dl-cache"
    cache.mkdir()  # a user's cache folder (what a failed download may create is not counted)
    env = {**bench.env, "GLIDEKIT_OFFLINE": "", "GLIDEKIT_BASE_URL": server.url,
           "GLIDEKIT_CACHE": str(cache), "GLIDEKIT_CHECKPOINT_SPECS": str(specs)}  # fmt: skip
    args = ["download", "base", "--no-progress", "--retries", "0"]
    try:
        server.body, server.md5_of = wrong, good
        cli_case(bench, "13", "wrong bytes of the right size, with Content-MD5", args,
                 watch=[cache], env=env, needle="MD5")  # fmt: skip
        server.md5_of = None
        cli_case(bench, "13", "wrong bytes of the right size, --sha256 pinned",
                 [*args, "--sha256", hashlib.sha256(good).hexdigest()], watch=[cache], env=env,
                 needle="pinned")  # fmt: skip
        server.body = (bench.work / "other-model.pt").read_bytes()
        cli_case(bench, "13", "another model's file", args, watch=[cache], env=env,
                 needle="released 'base'")  # fmt: skip
        server.body = bytes(len(good))
        cli_case(bench, "13", "zeros of the right size", args, watch=[cache], env=env,
                 needle="not a readable checkpoint")  # fmt: skip
    finally:
        server.stop()
    dns = {**env, "GLIDEKIT_BASE_URL": "http://glidekit-hostile.invalid/"}
    case = cli_case(bench, "19.3", "host name that does not resolve (retries 5)",
                    ["download", "base", "--no-progress"], watch=[cache], env=dns,
                    needle="does not resolve", locks=True)  # fmt: skip
    if case.seconds > 20:
        case.clean = False
        case.why = (case.why + "; " if case.why else "") + f"took {case.seconds:.0f} s"


# ----------------------------------------------------------------------------- report


def summary(bench: Bench) -> dict[str, Any]:
    rows = []
    for item, what in ITEMS.items():
        cases = [c for c in bench.cases if c.item == item]
        if not cases:
            continue
        worst = max(cases, key=lambda c: c.peak_mb)
        rows.append({"item": item, "what": what, "tried": len(cases),
                     "clean": sum(c.clean for c in cases), "peak_mb": round(worst.peak_mb, 1),
                     "worst_case": worst.name})  # fmt: skip
    worst = max(bench.cases, key=lambda c: c.peak_mb)
    return {
        "tried": len(bench.cases),
        "clean": sum(c.clean for c in bench.cases),
        "baseline_mb": round(bench.baseline_mb, 1),
        "worst_peak_mb": round(worst.peak_mb, 1),
        "worst_case": f"item {worst.item}: {worst.name}",
        "items": rows,
        "cases": [asdict(c) for c in bench.cases],
        "python": sys.version.split()[0],
    }


def markdown(report: dict[str, Any], details: bool) -> str:
    lines = [
        "| Item | Hostile input | Cases | Handled cleanly | Peak RSS (MB) |",
        "|---|---|---:|---:|---:|",
    ]
    for row in report["items"]:
        lines.append(f"| {row['item']} | {row['what']} | {row['tried']} | {row['clean']} | "
                     f"{row['peak_mb']:.0f} |")  # fmt: skip
    lines.append(f"| **all** | | **{report['tried']}** | **{report['clean']}** | "
                 f"**{report['worst_peak_mb']:.0f}** |")  # fmt: skip
    lines += [
        "",
        f"Peak memory of the worst case: {report['worst_peak_mb']:.0f} MB ({report['worst_case']});"
        f" baseline (the CLI refusing a missing file): {report['baseline_mb']:.0f} MB.",
    ]
    unclean = [c for c in report["cases"] if not c["clean"]]
    if unclean:
        lines += ["", "Not handled cleanly:", ""]
        lines += [f"* item {c['item']}, {c['name']}: {c['why']}" for c in unclean]
    if details:
        lines += ["", "| Item | Case | Exit | Clean | Peak MB | s | Message |",
                  "|---|---|---:|---|---:|---:|---|"]  # fmt: skip
        for c in report["cases"]:
            msg = c["error"].replace("|", "\\|")[:160]
            lines.append(f"| {c['item']} | {c['name']} | {c['rc']} | {'yes' if c['clean'] else 'no'}"
                         f" | {c['peak_mb']:.0f} | {c['seconds']:.1f} | {msg} |")  # fmt: skip
    return "\n".join(lines)


def make_clip(path: Path) -> Path:
    """A tiny shapes-world noise-aware CLIP file (the good file item 5 starts from)."""
    from glidekit.checkpoints import save_clip
    from glidekit.clip import CLIPConfig, create_clip_model
    from glidekit.tokenizer import ShapesTokenizer

    config = CLIPConfig(image_size=16, patch_size=4, n_vocab=40, max_text_len=8, n_embd=16,
                        n_head_state_text=8, n_head_text=2, n_xf_blocks_text=1,
                        n_head_state_image=8, n_head_image=2, n_xf_blocks_image=1)  # fmt: skip
    return save_clip(path, create_clip_model(config), ShapesTokenizer(text_ctx=8))


def environment(work: Path) -> dict[str, str]:
    """Every process: this checkout, a private cache, no network but loopback."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "GLIDEKIT_CACHE": str(work / "cache"),
        "GLIDEKIT_OFFLINE": "1",
        "GLIDEKIT_BASE_URL": "http://127.0.0.1:9/",
        "OMP_NUM_THREADS": "1",
    }
    vocab = SHARED / "reference" / "vocab" / "tiktoken"
    if "TIKTOKEN_CACHE_DIR" not in env and vocab.is_dir():
        env["TIKTOKEN_CACHE_DIR"] = str(vocab)
    return env


def run_all(bench: Bench, only: set[str] | None) -> None:
    def wanted(*items: str) -> bool:
        return only is None or bool(only & set(items))

    proc = glidekit(bench, "upsample", bench.work / "missing.png", "a")
    bench.baseline_mb = proc.peak_mb
    # The output folder exists, as a user's usually does (generate creates it before it loads
    # a model); what counts is that no file appears in it.
    (bench.work / "out").mkdir()
    model = items_10_to_12(bench)  # the tiny model every other item starts from
    if only is not None:
        bench.cases = [c for c in bench.cases if c.item in only]
    if wanted("1", "2", "3", "4", "5", "6"):
        items_1_to_6(bench, model, make_clip(bench.work / "clip.safetensors"))
    if wanted("7", "8"):
        items_7_8(bench)
    if wanted("9"):
        item_9(bench, model)
    if wanted("13", "19.3"):
        item_13(bench, model)
    if only is not None:
        bench.cases = [c for c in bench.cases if c.item in only]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--details", action="store_true", help="also a table of every case")
    parser.add_argument("--keep", action="store_true", help="keep the folder of bad files")
    parser.add_argument("--only", nargs="+", metavar="ITEM", help=f"items ({', '.join(ITEMS)})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="glidekit-hostile-"))
    bench = Bench(work, environment(work))
    start = time.monotonic()
    try:
        run_all(bench, set(args.only) if args.only else None)
    finally:
        if args.keep:
            logger.info("bad files kept in %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report = summary(bench)
    report["seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(report, indent=1) if args.json else markdown(report, args.details))
    return 0 if report["clean"] == report["tried"] else 1


if __name__ == "__main__":
    sys.exit(main())
