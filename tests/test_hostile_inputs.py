"""Hostile inputs of issue 16, items 7, 8, 9 and 13, end to end through the command line.

Each test makes its bad file or server itself and checks what the issue asks of every answer to
bad input: exit code 2 (or the documented exception in Python), one line naming the argument or
file, no traceback, a peak memory far below what decoding the input would cost (items 7 and 8),
and no file written or replaced.

* 7: a 30000x30000 1-bit PNG (109 KB; 900 MB decoded even at one byte a pixel) given to
  ``inpaint``, ``upsample`` or ``edit``, as the picture or as the mask.
* 8: a 12000x12000 1-bit PNG (17 KB; 144 MB decoded) is refused from its header against
  ``--max-megapixels`` (the web app's limit), before anything is decoded or any model loads.
* 9: a bulk job never replaces a user's file whose name matches an item, and a second identical
  job in the same folder fails at once (the folder is locked per rank).
* 13: a download server sending wrong bytes of the right size, or another model's file: refused,
  nothing under the final name, nothing in the manifest.

Peak memory is the child's own ``ru_maxrss`` (``os.wait4``), compared with the same command
refusing a missing file (the interpreter, torch and glidekit imported: the baseline).

"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from ckpt_server import CheckpointServer
from helpers import tiny_models
from PIL import Image

from glidekit.checkpoints import Manifest, fetch
from glidekit.checkpoints.download import DownloadVerificationError
from glidekit.cli.bulk import lock_path
from glidekit.pipelines.images import MAX_PIXELS, load_source

REPO = Path(__file__).resolve().parents[1]
_LOG_LEVELS = ("DEBUG glidekit", "INFO glidekit", "WARNING glidekit")
#: How far above the baseline a refusal may peak (the decoded pictures are 144 MB and 900 MB).
MEMORY_SLACK_MB = 64


# ----------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Run:
    """A finished ``glidekit`` process: exit code, output, its own peak resident memory."""

    rc: int
    out: str
    err: str
    peak_mb: float

    @property
    def lines(self) -> list[str]:
        return self.err.strip().splitlines()

    @property
    def one_line(self) -> bool:
        """The error is one line, and nothing but glidekit's log lines came before it."""
        return len(self.lines) >= 1 and all(
            line.startswith(_LOG_LEVELS) for line in self.lines[:-1]
        )


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    """No network, a private cache, the checkout importable."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "GLIDEKIT_CACHE": str(tmp / "cache"),
        "GLIDEKIT_OFFLINE": "1",
        "GLIDEKIT_BASE_URL": "http://127.0.0.1:9/",
        "OMP_NUM_THREADS": "1",
    }
    env.update(extra)
    return env


#: Runs ARGV[2:] and writes its peak RSS (KiB) to ARGV[1]. A child's ``ru_maxrss`` counts the
#: high-water mark of the process it was spawned from (Linux carries it over ``exec``), so the
#: CLI is started from this small process, not from pytest (which holds torch, models and the
#: decoded test pictures): its peak is then its own.
_PEAK_WRAPPER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(child.returncode if child.returncode >= 0 else 128 - child.returncode)
"""


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> Run:
    """Run ``python -m glidekit.cli.main ARGS``; measure its own peak RSS."""
    peak = Path(env["GLIDEKIT_CACHE"]).parent / f".peak-{time.monotonic_ns()}"
    argv = [sys.executable, "-c", _PEAK_WRAPPER, str(peak), sys.executable, "-m",
            "glidekit.cli.main", *args]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the wrapper and the CLI under it
        proc.communicate()
        raise AssertionError(f"glidekit {' '.join(args)} ran over {timeout} s") from None
    peak_mb = int(peak.read_text()) / 1024  # KiB on Linux
    peak.unlink()
    return Run(proc.returncode, out, err, peak_mb)


def assert_refused(run: Run, command: str, *needles: str) -> None:
    """Exit code 2, and the error is the last line of stderr, names what is wrong, and no
    traceback came before it."""
    assert run.rc == 2, run.err[-3000:]
    assert "Traceback" not in run.err, run.err[-3000:]
    last = run.lines[-1]
    assert last.startswith(f"glidekit {command}: error: "), run.err[-3000:]
    for needle in needles:
        assert needle in last, last


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes ({} when it does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))}


def one_bit_png(path: Path, side: int) -> Path:
    """A black ``side`` x ``side`` 1-bit PNG: tiny on disk, ``side**2`` bytes once decoded."""
    Image.new("1", (side, side), 0).save(path, optimize=True)
    return path


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pictures")
    out = {
        "bomb": one_bit_png(folder / "bomb.png", 30000),
        "big": one_bit_png(folder / "big.png", 12000),
    }
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "small.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(folder / "mask.png")
    out["small"] = folder / "small.png"
    out["mask"] = folder / "mask.png"
    return out


@pytest.fixture(scope="module")
def baseline_mb(tmp_path_factory) -> float:
    """Peak RSS of the CLI refusing a missing picture: everything imported, nothing decoded."""
    tmp = tmp_path_factory.mktemp("baseline")
    run = run_cli(["upsample", str(tmp / "missing.png"), "a"], _env(tmp))
    assert run.rc == 2, run.err
    return run.peak_mb


def _picture_args(command: str, role: str, bad: Path, pictures, bundles, out: Path) -> list[str]:
    """``command`` with ``bad`` as its picture (``role="image"``) or its mask, tiny models."""
    small, mask = str(pictures["small"]), str(pictures["mask"])
    models = {
        "inpaint": ["--base", str(bundles["base-inpaint"]), "--upsampler",
                    str(bundles["upsample-inpaint"])],
        "upsample": ["--upsampler", str(bundles["upsample"])],
        "edit": ["--base", str(bundles["base"]), "--upsampler", str(bundles["upsample"])],
    }[command]  # fmt: skip
    if command == "inpaint":
        pair = [str(bad), mask] if role == "image" else [small, str(bad)]
        return ["inpaint", *pair, "a red square", *models, "-o", str(out), "--steps", "2"]
    extra = ["--mask", str(bad)] if role == "mask" else []
    picture = str(bad) if role == "image" else small
    return [command, picture, "a red square", *extra, *models, "-o", str(out), "--steps", "2"]


PICTURE_CASES = [
    ("inpaint", "image", "IMAGE"),
    ("inpaint", "mask", "MASK"),
    ("upsample", "image", "IMAGE"),
    ("edit", "image", "IMAGE"),
    ("edit", "mask", "--mask"),
]


# ----------------------------------------------------------------------------- items 7 and 8


@pytest.mark.parametrize(("command", "role", "label"), PICTURE_CASES)
def test_item7_a_decompression_bomb_is_refused_from_its_header(
    tmp_path, pictures, bundles, baseline_mb, command, role, label
):
    """Issue 16 item 7: the 109 KB PNG of 30000x30000 pixels ended in a traceback
    (``PIL.Image.DecompressionBombError``), exit code 1."""
    out = tmp_path / "out"
    bad = pictures["bomb"]
    run = run_cli(_picture_args(command, role, bad, pictures, bundles, out), _env(tmp_path))
    assert_refused(run, command, f"{label}: {str(bad)!r}", "pixels")
    assert run.one_line, run.err  # above PIL's error limit there is no warning either
    assert run.peak_mb < baseline_mb + MEMORY_SLACK_MB, (run.peak_mb, baseline_mb)
    assert not out.exists()  # not even the output folder


@pytest.mark.parametrize(("command", "role", "label"), PICTURE_CASES)
def test_item8_a_picture_over_the_pixel_limit_is_never_decoded(
    tmp_path, pictures, bundles, baseline_mb, command, role, label
):
    """Issue 16 item 8: the 17 KB PNG of 12000x12000 pixels was decoded in full (1.1 GB peak) and
    processed; ``inpaint`` decoded it before refusing the mask's size."""
    out = tmp_path / "out"
    bad = pictures["big"]
    run = run_cli(_picture_args(command, role, bad, pictures, bundles, out), _env(tmp_path))
    limit = f"more than {MAX_PIXELS / 1e6:.1f} megapixels"
    assert_refused(run, command, f"{label}: {str(bad)!r} is 12000x12000 pixels", limit)
    assert "--max-megapixels" in run.lines[-1]
    # 144 MB decoded at one byte a pixel (432 MB as RGB): the header is all that was read.
    assert run.peak_mb < baseline_mb + MEMORY_SLACK_MB, (run.peak_mb, baseline_mb)
    assert not out.exists()


def test_the_memory_measure_sees_a_decode(tmp_path, pictures, bundles, baseline_mb):
    """The control for the bounds above: with the limit raised, the same 12000x12000 picture is
    decoded (then refused, as the mask has another size), and the measured peak shows it."""
    args = _picture_args("inpaint", "image", pictures["big"], pictures, bundles, tmp_path / "o")
    run = run_cli([*args, "--max-megapixels", "200"], _env(tmp_path, PYTHONWARNINGS="ignore"))
    assert_refused(run, "inpaint", "MASK: mask size 64x64 does not match IMAGE size 12000x12000")
    assert run.peak_mb > baseline_mb + 100, (run.peak_mb, baseline_mb)


def test_item8_the_refusal_is_one_line(tmp_path, pictures, bundles):
    run = run_cli(
        _picture_args("upsample", "image", pictures["big"], pictures, bundles, tmp_path / "o"),
        _env(tmp_path),
    )
    assert run.rc == 2 and run.one_line, run.err


def test_item8_max_megapixels_is_the_limit_and_is_shared_with_the_web_app(
    tmp_path, pictures, bundles
):
    """A lower ``--max-megapixels`` refuses a 64x64 picture; the CLI's default is the web app's."""
    args = _picture_args("upsample", "image", pictures["small"], pictures, bundles, tmp_path / "o")
    run = run_cli([*args, "--max-megapixels", "0.001"], _env(tmp_path))
    assert_refused(run, "upsample", "IMAGE", "is 64x64 pixels, more than 0.0 megapixels")
    assert not (tmp_path / "o").exists()

    defaults = _max_megapixels_defaults()
    assert {"inpaint", "upsample", "edit"} <= set(defaults), defaults
    assert {v for k, v in defaults.items() if k != "serve"} == {MAX_PIXELS / 1e6}, defaults
    jobs = pytest.importorskip("glidekit.web.jobs")
    assert jobs.Limits().max_pixels == MAX_PIXELS


def _max_megapixels_defaults() -> dict[str, float]:
    """``--max-megapixels``'s default in each sub-command that has it."""
    import argparse

    from glidekit.cli.main import build_parser

    defaults = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, parser in action.choices.items():
                for option in parser._actions:
                    if option.dest == "max_megapixels":
                        defaults[name] = option.default
    return defaults


def test_item8_serve_shares_the_limit():
    defaults = _max_megapixels_defaults()
    assert defaults.get("serve", MAX_PIXELS / 1e6) == MAX_PIXELS / 1e6, defaults


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_item8_python_api_refuses_from_the_header(pictures):
    """The same check in Python: ``ValueError`` naming the argument, nothing decoded."""
    for key, size in (("big", "12000x12000"), ("bomb", None)):
        with pytest.raises(ValueError, match="image: ") as err:
            load_source(pictures[key])
        assert "\n" not in str(err.value)
        if size:
            assert size in str(err.value)
    with pytest.raises(ValueError, match="is 64x64 pixels"):
        load_source(pictures["small"], max_pixels=1000)
    assert load_source(pictures["small"].read_bytes()).size == (64, 64)


def test_item8_bad_max_megapixels_values_are_refused_naming_the_option(tmp_path, pictures):
    for value in ("inf", "nan", "-1"):
        run = run_cli(
            ["upsample", str(pictures["small"]), "a", f"--max-megapixels={value}"],
            _env(tmp_path),
        )
        assert_refused(run, "upsample", "--max-megapixels")
        assert run.one_line, run.err


def test_items7_8_generate_from_a_bomb_png(tmp_path, pictures, baseline_mb):
    for key in ("bomb", "big"):
        run = run_cli(["generate", "--from", str(pictures[key]), "-o", str(tmp_path / "o")],
                      _env(tmp_path))  # fmt: skip
        assert_refused(run, "generate", "--from")
        assert run.one_line, run.err
        assert run.peak_mb < baseline_mb + MEMORY_SLACK_MB
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- item 9


def _bulk_args(bundles, prompts: Path, outdir: Path, steps: int = 2) -> list[str]:
    return ["generate", "--prompts-file", str(prompts), "-o", str(outdir), "--base",
            str(bundles["base"]), "--no-upsample", "--steps", str(steps), "--seed", "3", "-q"]  # fmt: skip


def _user_folder(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A prompts file whose first item is called "mine", and a folder holding the user's own
    ``mine.png`` (an ordinary PNG)."""
    prompts = tmp_path / "prompts.txt"
    lines = [json.dumps({"prompt": "a red circle", "name": "mine"}), "a blue square"]
    prompts.write_text("\n".join(lines) + "\n")
    outdir = tmp_path / "out"
    outdir.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(buf, format="PNG")
    (outdir / "mine.png").write_bytes(buf.getvalue())
    return prompts, outdir, buf.getvalue()


def test_item9_a_users_file_with_an_items_name_is_never_replaced(tmp_path, bundles):
    """Issue 16 item 9: ``mine.png`` was replaced by the item called "mine"."""
    prompts, outdir, mine = _user_folder(tmp_path)
    run = run_cli(_bulk_args(bundles, prompts, outdir), _env(tmp_path))
    assert_refused(run, "generate", "--outdir", str(outdir / "mine.png"), "not written by this job")
    assert run.one_line, run.err
    assert (outdir / "mine.png").read_bytes() == mine
    assert sorted(p.name for p in outdir.glob("*.png")) == ["mine.png"]
    assert not any(outdir.glob(".*.tmp")) and not any(outdir.glob("*.lock"))
    assert all(not line.strip() for m in outdir.glob("manifest*.jsonl") for line in
               m.read_text().splitlines())  # fmt: skip


def test_item9_a_refused_bulk_run_writes_nothing(tmp_path, bundles):
    prompts, outdir, _ = _user_folder(tmp_path)
    before = listing(outdir)
    run = run_cli(_bulk_args(bundles, prompts, outdir), _env(tmp_path))
    assert run.rc == 2
    assert listing(outdir) == before


def test_item9_a_users_bomb_png_with_an_items_name(tmp_path, bundles, pictures):
    prompts, outdir, _ = _user_folder(tmp_path)
    (outdir / "mine.png").write_bytes(pictures["bomb"].read_bytes())
    run = run_cli(_bulk_args(bundles, prompts, outdir), _env(tmp_path))
    assert_refused(run, "generate", "--outdir")
    assert (outdir / "mine.png").read_bytes() == pictures["bomb"].read_bytes()


def test_item9_a_second_identical_job_fails_at_once(tmp_path, bundles):
    """Issue 16 item 9: two identical bulk runs in one folder both wrote every image (a manifest
    of 6 lines for 3 items). The first job is frozen (SIGSTOP) while it holds the folder's lock,
    so the second one meets it deterministically; then the first finishes alone."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na cat\n")
    outdir = tmp_path / "out"
    args = _bulk_args(bundles, prompts, outdir, steps=12)
    env = _env(tmp_path)
    first = subprocess.Popen(
        [sys.executable, "-m", "glidekit.cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = lock_path(outdir, 0, Path(env["GLIDEKIT_CACHE"]))  # in the cache, not the folder
    deadline = time.monotonic() + 60
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert lock.exists(), "the first job never took the folder's lock"
    os.kill(first.pid, signal.SIGSTOP)
    try:
        frozen = listing(outdir)
        start = time.monotonic()
        second = run_cli(args, env)
        took = time.monotonic() - start
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]

    assert_refused(second, "generate", "--outdir", "another bulk job is running")
    assert second.one_line and second.out == "", second.err
    assert took < 30  # at once: no item sampled (a run of this job takes longer)
    assert listing(outdir) != frozen  # the first one went on afterwards...
    records = [
        json.loads(line)
        for shard in outdir.glob("manifest*.jsonl")
        for line in shard.read_text().splitlines()
        if line.strip()
    ]
    assert sorted(r["index"] for r in records) == [0, 1, 2]  # ...and wrote each item once
    assert len(list(outdir.glob("*.png"))) == 3 and len(out.split()) == 3
    assert not list(outdir.glob("*.lock")) and not list(outdir.glob(".*.lock"))


# ----------------------------------------------------------------------------- item 13


@pytest.fixture
def served(tmp_path) -> Iterator[dict]:
    """The tiny base model as ``base.pt`` (its layout is the released one, via a specs file),
    and another file of the same layout and byte size: only a checksum tells them apart."""
    state = {k: v.detach().clone() for k, v in tiny_models()["base"].state_dict().items()}
    other = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    blobs = []
    for i, sd in enumerate((state, other)):
        (tmp_path / str(i)).mkdir()
        torch.save(sd, tmp_path / str(i) / "base.pt")  # same archive name: same size
        blobs.append((tmp_path / str(i) / "base.pt").read_bytes())
    good, wrong = blobs
    assert len(good) == len(wrong) and good != wrong
    specs = tmp_path / "specs.json"
    layout = [[k, list(v.shape), "float32"] for k, v in state.items()]
    specs.write_text(json.dumps({"checkpoints": {"base": {"state_dict": layout}}}))
    server = CheckpointServer({"/base.pt": good}).start()
    env = _env(
        tmp_path,
        GLIDEKIT_OFFLINE="",
        GLIDEKIT_BASE_URL=server.base_url,
        GLIDEKIT_CHECKPOINT_SPECS=str(specs),
    )
    yield {"server": server, "good": good, "wrong": wrong, "env": env,
           "cache": tmp_path / "cache"}  # fmt: skip
    server.stop()


def _download(served: dict, *extra: str) -> Run:
    return run_cli(["download", "base", "--no-progress", "--retries", "0", *extra], served["env"])


def _assert_nothing_cached(cache: Path) -> None:
    assert not (cache / "base.pt").exists() and not (cache / "base.pt.partial").exists()
    assert Manifest(cache).get(cache / "base.pt") is None


@pytest.mark.parametrize("header", ["content-md5", "x-goog-hash", "azure"])
def test_item13_wrong_bytes_of_the_right_size_fail_the_servers_checksum(served, header):
    """Issue 16 item 13: the wrong bytes were accepted, the manifest recorded their sha256 and
    the file loaded."""
    server = served["server"]
    server.behaviour.md5_header = header
    server.behaviour.announced["/base.pt"] = served["good"]
    server.files["/base.pt"] = served["wrong"]
    run = _download(served)
    assert_refused(run, "download", "MD5", "nothing was kept at", str(served["cache"] / "base.pt"))
    assert run.one_line and run.out == "", run.err
    _assert_nothing_cached(served["cache"])


def test_item13_a_pinned_sha256_and_the_layout(served, tmp_path):
    """With no checksum from the server: the user's pin catches wrong bytes of the right layout,
    the layout check catches another model or garbage; a right file passes all three."""
    server, cache = served["server"], served["cache"]
    good_sha = hashlib.sha256(served["good"]).hexdigest()
    server.files["/base.pt"] = served["wrong"]
    run = _download(served, "--sha256", good_sha)
    assert_refused(run, "download", f"not the pinned {good_sha}")
    assert run.one_line, run.err
    _assert_nothing_cached(cache)

    server.files["/base.pt"] = bytes(len(served["good"]))  # zeros of the right size
    run = _download(served)
    assert_refused(run, "download", "not a readable checkpoint")
    _assert_nothing_cached(cache)

    torch.save({"w": torch.zeros(len(served["good"]) // 4 - 400)}, tmp_path / "x.pt")
    server.files["/base.pt"] = (tmp_path / "x.pt").read_bytes()
    run = _download(served)
    assert_refused(run, "download", "not those of the released 'base'", "unexpected w")
    _assert_nothing_cached(cache)

    server.files["/base.pt"] = served["good"]
    run = _download(served, "--sha256", good_sha)
    assert run.rc == 0 and run.out.strip() == str(cache / "base.pt"), run.err
    assert Manifest(cache).get(cache / "base.pt").sha256 == good_sha


def test_item13_python_api(served, monkeypatch):
    """``fetch`` raises the documented ``DownloadVerificationError`` (a ``CheckpointError``,
    a ``ValueError``)."""
    for key in ("GLIDEKIT_CACHE", "GLIDEKIT_BASE_URL", "GLIDEKIT_CHECKPOINT_SPECS"):
        monkeypatch.setenv(key, served["env"][key])
    monkeypatch.delenv("GLIDEKIT_OFFLINE", raising=False)
    server = served["server"]
    server.behaviour.md5_header = "content-md5"
    server.behaviour.announced["/base.pt"] = served["good"]
    server.files["/base.pt"] = served["wrong"]
    with pytest.raises(DownloadVerificationError, match="Content-MD5") as err:
        fetch("base", progress=False, retries=0)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    _assert_nothing_cached(served["cache"])
