"""Training in real subprocesses: SIGTERM or SIGKILL then --resume through the CLI, and torchrun
(gloo): two processes agree, resume exactly and average gradients like one process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from train_fixtures import TINY_CLIP, restore_threads, tiny_config  # noqa: F401 (autouse fixture)

from glidekit.train import load_checkpoint, load_config, train

TIMEOUT = 120

# Run by torchrun: train, then check every rank ends with the same weights. Ranks other than 0
# get every file-writing function replaced by one that fails, so a write there fails the run.
DDP_SCRIPT = r"""
import hashlib, json, os, sys
from pathlib import Path

from glidekit.train import clip, load_config, report, state, trainer as tr, unet

rank = int(os.environ["RANK"])
if rank != 0:
    def forbidden(*args, **kwargs):
        raise RuntimeError(f"rank {rank} tried to write a file")
    state.atomic_torch_save = forbidden
    for module, name in ((unet, "save_unet"), (clip, "save_clip"), (unet, "save_grid"),
                         (tr, "plot_loss_curve")):
        assert hasattr(module, name), name  # the name the trainer writes through
        setattr(module, name, forbidden)
    report.MetricsLog.append = forbidden
    report.MetricsLog.load = forbidden

args = sys.argv[1:]
resume = "--resume" in args
cfg = load_config(args[0], [a for a in args[1:] if a != "--resume"])
t = tr.Trainer(cfg, resume=resume)
result = t.fit()

def digest(module):
    h = hashlib.sha256()
    for p in module.state_dict().values():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

hashes = state.all_gather_objects({"model": digest(t.model), "ema": digest(t.ema)}, t.dist)
if rank == 0:
    out = Path(cfg.train.out_dir) / "ddp.json"
    out.write_text(json.dumps({"hashes": hashes, "world": t.dist.world_size, "step": result.step}))
t.close()
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")]
    )
    env["OMP_NUM_THREADS"] = "1"
    return env


def _write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "glidekit.cli.main", "train", *args]


def test_sigterm_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path / "unused",
        model={"dropout": 0.1},
        train={"steps": 30, "batch_size": 2, "threads": 1},
        data={"length": 24},
    )
    config = _write_config(tmp_path / "cfg.yaml", cfg)
    straight = subprocess.run(
        _cli(str(config), f"train.out_dir={tmp_path / 'a'}"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "b"
    proc = subprocess.Popen(
        _cli(str(config), f"train.out_dir={out}"),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, stderr
    stopped = load_checkpoint(out / "checkpoint.pt")
    assert 5 <= stopped["step"] < 30, "the signal arrived too late to test anything"
    assert "stop requested" in stderr and not (out / "export.safetensors").exists()

    resumed = subprocess.run(
        _cli(str(config), f"train.out_dir={out}", "--resume"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(out / "checkpoint.pt")
    assert a["step"] == b["step"] == 30
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    assert (out / "export.safetensors").is_file()
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(1, 31))


def test_second_run_on_a_busy_folder_fails_at_once(tmp_path: Path) -> None:
    """A second ``glidekit train --resume`` on a folder a run is training in exits 2 with one
    line before touching anything; the first run goes on alone (its log stays in order)."""
    out = tmp_path / "run"
    cfg = tiny_config(out, train={"steps": 5000, "batch_size": 2, "checkpoint_every": 3})
    config = _write_config(tmp_path / "cfg.yaml", cfg)
    first = subprocess.Popen(
        _cli(str(config)), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()[1]
            time.sleep(0.05)
        second = subprocess.run(
            _cli(str(config), "--resume"),
            env=_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    finally:
        first.send_signal(signal.SIGTERM)
        _, first_err = first.communicate(timeout=TIMEOUT)
    assert second.returncode == 2, second.stderr
    assert "Traceback" not in second.stderr and "resumed from" not in second.stderr
    errors = [x for x in second.stderr.splitlines() if x.startswith("glidekit train: error:")]
    assert len(errors) == 1 and "in use by another training run" in errors[0], second.stderr
    assert first.returncode == 0, first_err
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1)), steps  # one writer, in order
    assert load_checkpoint(out / "checkpoint.pt")["step"] == steps[-1]


def _torchrun(tmp_path: Path, config: Path, *overrides: str) -> subprocess.CompletedProcess:
    script = tmp_path / "ddp_check.py"
    script.write_text(DDP_SCRIPT)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(config),
        *overrides,
    ]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.parametrize("kind", ["text2im", "clip"])
def test_torchrun_two_processes(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "ddp"
    sections: dict = {
        "train": {"steps": 12, "batch_size": 4, "log_every": 2, "checkpoint_every": 6},
        "optim": {"lr": 2e-3},
    }
    cfg = tiny_config(out, **sections)
    if kind == "clip":
        cfg["model"] = dict(TINY_CLIP)
    config = _write_config(tmp_path / "cfg.yaml", cfg)
    proc = _torchrun(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "ddp.json").read_text())
    assert report["world"] == 2 and report["step"] == 12
    assert report["hashes"][0] == report["hashes"][1]  # weights and EMA equal on both ranks

    # checkpoint.prev.pt: the checkpoint of step 6, kept when step 12's was written.
    expected = {"checkpoint.pt", "checkpoint.prev.pt", "metrics.jsonl", "loss.png",
                "export.safetensors", "ddp.json"}  # fmt: skip
    if kind != "clip":
        expected.add("samples")
    assert {p.name for p in out.iterdir()} == expected  # no temp files, no lock file
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 12
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
    assert ckpt["ranks"][0]["data"] == ckpt["ranks"][1]["data"]
    assert not torch.equal(ckpt["ranks"][0]["rng"]["torch"], ckpt["ranks"][1]["rng"]["torch"])

    # Same loss-curve shape as one process with the same global batch.
    ddp_losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    single_cfg = tiny_config(tmp_path / "single", **sections)
    single_cfg["train"]["batch_size"] = 8
    if kind == "clip":
        single_cfg["model"] = dict(TINY_CLIP)
    train(load_config(single_cfg))
    single = [
        json.loads(x)["loss"] for x in (tmp_path / "single/metrics.jsonl").read_text().splitlines()
    ]
    assert len(ddp_losses) == len(single) == 6
    assert ddp_losses[-1] < ddp_losses[0] and single[-1] < single[0]
    assert abs(ddp_losses[0] - single[0]) < 0.25 * single[0]
    assert 0.5 < ddp_losses[-1] / single[-1] < 2.0


def test_torchrun_resume_is_exact(tmp_path: Path) -> None:
    """2 processes: 8 steps straight == 5 steps, then --resume to 8 (each rank's RNG and data)."""
    cfg = tiny_config(
        tmp_path / "unused",
        model={"dropout": 0.1},
        train={"steps": 8, "batch_size": 2, "log_every": 4},
        data={"length": 12},
    )
    config = _write_config(tmp_path / "cfg.yaml", cfg)
    a, b = tmp_path / "a", tmp_path / "b"
    for overrides in (
        [f"train.out_dir={a}"],
        [f"train.out_dir={b}", "train.steps=5"],
        [f"train.out_dir={b}", "--resume"],
    ):
        proc = _torchrun(tmp_path, config, *overrides)
        assert proc.returncode == 0, proc.stderr[-4000:]
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert ca["step"] == cb["step"] == 8
    for key in ("model", "ema"):
        for name in ca[key]:
            assert torch.equal(ca[key][name], cb[key][name]), f"{key}.{name}"
    assert [r["data"] for r in ca["ranks"]] == [r["data"] for r in cb["ranks"]]


def test_sigkill_between_checkpoints_then_resume(tmp_path: Path) -> None:
    """SIGKILL (no chance to save) after a checkpoint and before the next; --resume from it
    ends bit for bit where an uninterrupted run with the same seed ends."""
    every, total = 5, 20
    cfg = tiny_config(
        tmp_path / "unused",
        model={"dropout": 0.1},
        train={"steps": total, "batch_size": 2, "checkpoint_every": every},
        data={"length": 24},
    )
    config = _write_config(tmp_path / "cfg.yaml", cfg)
    straight = subprocess.run(
        _cli(str(config), f"train.out_dir={tmp_path / 'a'}"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "b"
    metrics = out / "metrics.jsonl"
    proc = subprocess.Popen(
        _cli(str(config), f"train.out_dir={out}"),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT
    last = 0
    try:
        # Kill once the log shows a step past a checkpoint but short of the next one.
        while time.monotonic() < deadline and proc.poll() is None:
            lines = metrics.read_text().splitlines() if metrics.is_file() else []
            with contextlib.suppress(ValueError):
                last = json.loads(lines[-1])["step"] if lines else 0
            if last > every and last % every in (1, 2, 3):
                break
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = load_checkpoint(out / "checkpoint.pt")["step"]
    logged = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if x.endswith("}")]
    assert killed_at % every == 0 and every <= killed_at < max(logged) < total, (
        killed_at,
        logged,
    )

    resumed = subprocess.run(
        _cli(str(config), f"train.out_dir={out}", "--resume"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / 'checkpoint.pt'} at step {killed_at}" in resumed.stderr
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(out / "checkpoint.pt")
    assert a["step"] == b["step"] == total
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    for i, state in a["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][i][k]))
    assert a["ranks"][0]["data"] == b["ranks"][0]["data"]
    # The steps after the checkpoint that the killed run had logged are logged once, again.
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == list(
        range(1, total + 1)
    )


# Run by torchrun: one forward/backward through the trainer's DDP model on this rank's half of
# a fixed global batch (explicit timesteps and noise); rank 0 saves the averaged gradients.
GRAD_SCRIPT = r"""
import os, sys
import torch
from glidekit.train import load_config, trainer as tr

cfg = load_config(sys.argv[1])
batch = torch.load(sys.argv[2])
t = tr.Trainer(cfg)
rank, world = t.dist.rank, t.dist.world_size
per = len(batch["captions"]) // world
rows = slice(rank * per, (rank + 1) * per)
t.model.train()
loss, _ = t.task.batch_loss(
    t.ddp, batch["images"][rows], batch["captions"][rows], batch["t"][rows],
    batch["noise"][rows], ctx=t.ctx,
)
loss.backward()
if rank == 0:
    grads = {n: p.grad.clone() for n, p in t.model.named_parameters() if p.grad is not None}
    torch.save({"grads": grads, "world": world}, sys.argv[3])
t.close()
"""


def test_ddp_gradients_equal_single_process(tmp_path: Path) -> None:
    """2 processes x 3 samples under torchrun average to the gradients of 6 in one process."""
    from glidekit.train.trainer import Trainer

    cfg = tiny_config(tmp_path / "unused", data={"caption_dropout": 0.0})
    config = _write_config(tmp_path / "cfg.yaml", cfg)
    g = torch.Generator().manual_seed(0)
    n = 6
    batch = {
        "images": torch.rand(n, 3, 16, 16, generator=g) * 2 - 1,
        "captions": ["a red circle", "", "a big blue square", "green", "a small triangle", "x"],
        "t": torch.randint(0, 1000, (n,), generator=g),
        "noise": torch.randn(n, 3, 16, 16, generator=g),
    }
    torch.save(batch, tmp_path / "batch.pt")
    script = tmp_path / "grads.py"
    script.write_text(GRAD_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(script), str(config), str(tmp_path / "batch.pt"), str(tmp_path / "grads.pt")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp = torch.load(tmp_path / "grads.pt")
    assert ddp["world"] == 2

    single = Trainer(load_config(cfg))
    single.model.train()
    loss, _ = single.task.batch_loss(
        single.ddp, batch["images"], batch["captions"], batch["t"], batch["noise"], ctx=single.ctx
    )
    loss.backward()
    expected = {n: p.grad for n, p in single.model.named_parameters() if p.grad is not None}
    single.close()
    assert ddp["grads"].keys() == expected.keys() and len(expected) > 50
    worst = 0.0
    for name, grad in expected.items():
        diff = (ddp["grads"][name] - grad).norm() / grad.norm().clamp_min(1e-12)
        worst = max(worst, float(diff))
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-5, atol=1e-8, msg=name)
    print(f"worst relative gradient difference (norm per tensor): {worst:.2e}")
    assert worst < 1e-5, worst
