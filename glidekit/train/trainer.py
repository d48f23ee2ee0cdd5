"""The training loop: one process or many (``torchrun``), resumable bit for bit.

``Trainer(config, resume=...)`` builds everything; :meth:`Trainer.fit` runs until
``train.steps`` (or ``stop_at``, or SIGTERM/SIGINT) and writes into ``train.out_dir``:

* ``checkpoint.pt``: weights, EMA, optimizer, LR scheduler, grad scaler, step, each rank's data
  position and RNG states, the run's overrides and a checksum of it all (every
  ``train.checkpoint_every`` steps, on a stop, at the end); the one before it is kept as
  ``checkpoint.prev.pt``;
* ``metrics.jsonl``: one record per ``train.log_every`` steps (loss, lr, grad norm, images/s);
* ``loss.png``: the loss curve; ``samples/step-NNNNNN.png``: EMA sample grids (UNets);
* ``export.safetensors``: the EMA weights as a glidekit model file
  (:mod:`glidekit.checkpoints.modelfile`: ``load_unet``, or ``load_clip`` for a CLIP).

What differs between the UNets and the CLIP (the model, its loss, the grid, the export) is the
run's :class:`~glidekit.train.task.TrainTask` (:data:`TASKS`); everything here is the same
for both. The run folder is locked while a trainer holds it (a second run on it fails at once,
:class:`~glidekit.train.errors.RunFolderBusyError`). A non-finite loss or gradient norm stops
the run before the optimizer step (:class:`~glidekit.train.errors.NonFiniteLossError`): no
checkpoint is written after it and no export.

Only rank 0 writes files. A stop request (signal) is agreed on by all ranks at the end of a
step; they save the checkpoint together and :meth:`fit` returns normally (the CLI exits 0).
:meth:`Trainer.close` (called by :func:`train`) ends the run's data loaders, releases the run
folder and, under torchrun, destroys the process group after a barrier so that its worker
threads are joined before the interpreter exits.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from glidekit.nn.config import CONFIG_CLASSES
from glidekit.train import state as st
from glidekit.train.clip import ClipTask
from glidekit.train.config import OptimSection, TrainConfig
from glidekit.train.data import make_dataset, make_stream
from glidekit.train.errors import NonFiniteLossError, RunFolderBusyError
from glidekit.train.report import MetricsLog, plot_loss_curve
from glidekit.train.task import Info, StepContext, TrainTask, load_exactly
from glidekit.train.unet import UNetTask, is_text_encoder_param

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: model.kind -> how its task is built: ``builder(config, info, load_weights=...)``.
TASKS: dict[str, Callable[..., TrainTask]] = {
    **{kind: UNetTask.build for kind in CONFIG_CLASSES},
    "clip": ClipTask.build,
}


def build_task(
    config: TrainConfig, info: Info | None = None, *, load_weights: bool = True
) -> TrainTask:
    """The :class:`~glidekit.train.task.TrainTask` of ``config.model.kind``. ``load_weights``:
    start from ``model.init``'s weights (False: only its architecture and tokenizer)."""
    return TASKS[config.model.kind](config, info or logger.info, load_weights=load_weights)


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` did: the step reached, whether it stopped early, the files."""

    step: int
    stopped: bool
    checkpoint: Path | None
    export: Path | None
    last_loss: float | None


class _StopFlag:
    """Set by SIGTERM/SIGINT while :meth:`Trainer.fit` runs; restores the old handlers after."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.signum = signum
        # A second signal gets the default behaviour (e.g. Ctrl-C twice interrupts at once).
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)
        try:
            yield self
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)
            self._old.clear()


@dataclass
class _Window:
    """The metrics summed since the last log line, and the images seen since then."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    since: float = field(default_factory=time.perf_counter)

    def add(self, metrics: dict[str, float], images: int) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        self.images += images

    def take(self) -> tuple[dict[str, float], float]:
        """(the mean of each metric, images per second) since the last call; starts afresh."""
        now = time.perf_counter()
        avg = {k: v / self.steps for k, v in self.sums.items()}
        ips = self.images / max(now - self.since, 1e-9)
        self.sums, self.steps, self.images, self.since = {}, 0, 0, now
        return avg, ips


def _resolve_device(name: str, info: st.DistInfo) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("train.device: cuda requested but no CUDA device is available")
        device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def lr_factor(optim: OptimSection, total: int, step: int) -> float:
    """The LR multiplier at ``step`` of ``total``: linear warm-up, then 1 or a cosine decay to
    ``optim.min_lr_ratio``."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "cosine":
        span = max(1, total - optim.warmup_steps)
        progress = min(1.0, (step - optim.warmup_steps) / span)
        ratio = optim.min_lr_ratio
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def _load_weights(module: nn.Module, state: dict[str, Any], path: Path) -> None:
    why = (
        f"--resume: {str(path)!r} was trained with another model configuration "
        "(model.* keys differ)"
    )
    load_exactly(module, state, why)


class Trainer:
    """Train a GLIDE UNet (any of the four kinds) or the noise-aware CLIP from a TrainConfig.

    Args:
        config: the validated run configuration.
        resume: continue from ``<out_dir>/checkpoint.pt`` (True), from a given checkpoint path,
            or start fresh (False; refused if ``out_dir`` already holds a checkpoint).
        overrides: the ``section.key=value`` overrides ``config`` was built with, recorded in
            the checkpoints (see :func:`~glidekit.train.config.load_run_config`); None: those
            of the checkpoint resumed from, if any.

    Raises :class:`~glidekit.train.errors.RunFolderBusyError` if another run holds ``out_dir``.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: bool | str | os.PathLike = False,
        overrides: Sequence[str] | None = None,
    ) -> None:
        self.config = config
        cfg = config
        self.dist = st.DistInfo.from_env()
        self.device = _resolve_device(cfg.train.device, self.dist)
        if cfg.train.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("train.precision: fp16 needs a CUDA device; use bf16 (or fp32) on CPU")
        if cfg.train.threads is not None:
            torch.set_num_threads(cfg.train.threads)
        self._own_group = st.init_distributed(self.dist, self.device)
        self._lock = st.RunLock(cfg.train.out_dir)
        try:
            self._setup(resume, overrides)
        except BaseException:
            self._lock.release(remove_if_created=True)
            if self._own_group:  # e.g. a bad data path: leave no process group behind
                self._own_group = False
                dist.destroy_process_group()
            raise

    def _setup(self, resume: bool | str | os.PathLike, overrides: Sequence[str] | None) -> None:
        cfg = self.config
        self.is_main = self.dist.is_main
        self.out_dir = Path(cfg.train.out_dir)
        self.checkpoint_path = self.out_dir / st.CHECKPOINT_NAME
        self._lock_run_folder()
        resume_path = self._resume_path(resume)
        self.overrides = list(overrides or [])
        st.seed_everything(cfg.train.seed)  # identical initial weights on every rank
        self.task = build_task(cfg, self._info)
        self.model: nn.Module = self.task.model.to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        n_params = sum(p.numel() for p in self.model.parameters())
        self._info("model %s: %.2fM parameters on %s", cfg.model.kind, n_params / 1e6, self.device)
        self.dataset = make_dataset(
            cfg.data, self.task.image_size, rank=self.dist.rank, world_size=self.dist.world_size
        )
        self.stream = make_stream(
            self.dataset, cfg.data, cfg.train.batch_size, cfg.data.seed,
            self.dist.rank, self.dist.world_size,
        )  # fmt: skip
        self._build_optimizer()
        self.step = 0
        self.last_checkpoint: Path | None = None  # the newest checkpoint known good, and its step
        self._good_step: int | None = None
        self._rotate = False  # whether checkpoint.pt on disk is known good (kept as .prev.pt)
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl")
        self.ctx = self._step_context()
        if resume_path is not None:
            self._load(resume_path, keep_overrides=overrides is None)
        elif self.is_main:
            self.metrics.load(up_to_step=0)
        self.ddp: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

    def _step_context(self) -> StepContext:
        """The per-rank random streams of the loop (global RNG: dropout; generators: data
        draws, noise and timesteps), seeded per rank, and what else a task's step needs."""
        cfg, rank = self.config, self.dist.rank
        rank_seed = cfg.train.seed * 1_000_003 + 7919 * (rank + 1)
        st.seed_everything(rank_seed)
        dropout = cfg.data.caption_dropout
        return StepContext(
            device=self.device,
            gen_cpu=torch.Generator().manual_seed(rank_seed + 1),
            gen_dev=torch.Generator(device=self.device).manual_seed(rank_seed + 2),
            amp_dtype=DTYPES[cfg.train.precision],
            caption_dropout=self.task.default_caption_dropout if dropout is None else dropout,
            rank=rank,
        )

    def _build_optimizer(self) -> None:
        o = self.config.optim
        params: Any = self.model.parameters()
        if o.text_lr_mult != 1.0:  # two groups only when asked: the default state is unchanged
            named = list(self.model.named_parameters())
            text = [p for n, p in named if is_text_encoder_param(n)]
            if not text:
                raise ValueError(
                    "optim.text_lr_mult: this model has no text encoder (model.xf_width: 0); "
                    "remove the key"
                )
            rest = [p for n, p in named if not is_text_encoder_param(n)]
            params = [{"params": rest}, {"params": text, "lr": o.lr * o.text_lr_mult}]
        self.optimizer = torch.optim.AdamW(
            params,
            lr=o.lr,
            betas=(o.betas[0], o.betas[1]),
            eps=o.eps,
            weight_decay=o.weight_decay,
        )
        total = self.config.train.steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(o, total, step)
        )
        fp16 = self.config.train.precision == "fp16"
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None

    # ---------------------------------------------------------------------------- building
    def _info(self, msg: str, *args: Any) -> None:
        if self.is_main:
            logger.info(msg, *args)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer captions are read with (the task's)."""
        return self.task.tokenizer

    @property
    def _generators(self) -> dict[str, torch.Generator]:
        return {"cpu": self.ctx.gen_cpu, "device": self.ctx.gen_dev}

    def _lock_run_folder(self) -> None:
        """Lock ``out_dir`` (rank 0); every rank fails at once if another run holds it."""
        busy: BaseException | None = None
        if self.is_main:
            try:
                self._lock.acquire()
            except RunFolderBusyError as exc:
                busy = exc
        if st.any_rank(busy is not None, self.dist, self.device):
            raise busy or RunFolderBusyError(
                f"train.out_dir {str(self.out_dir)!r} is in use by another training run"
            )

    def _resume_path(self, resume: bool | str | os.PathLike) -> Path | None:
        previous = st.previous_checkpoint(self.checkpoint_path)
        if resume is False or resume is None:
            where = f"train.out_dir {str(self.out_dir)!r}"
            if self.checkpoint_path.exists():
                raise ValueError(
                    f"{where} already holds checkpoint.pt; pass --resume to continue it, or set "
                    "train.out_dir to a new folder"
                )
            if previous.exists():
                raise ValueError(
                    f"{where} already holds {previous.name}, an earlier checkpoint; continue it "
                    f"with --resume-from {previous}, or set train.out_dir to a new folder"
                )
            return None
        path = self.checkpoint_path if resume is True else Path(resume)
        if not path.is_file():
            hint = "start without --resume"
            if resume is True and previous.is_file():
                hint = f"the previous one is there: continue with --resume-from {previous}"
            raise FileNotFoundError(f"--resume: no checkpoint at {str(path)!r}; {hint}")
        return path

    # ---------------------------------------------------------------------------- state
    def _payload(self, rank_states: list[dict[str, Any]]) -> dict[str, Any]:
        payload = {
            "format": st.CHECKPOINT_FORMAT,
            "step": self.step,
            "config": self.config.to_dict(),
            "overrides": list(self.overrides),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "world_size": self.dist.world_size,
            "ranks": rank_states,
        }
        payload["checksum"] = st.payload_checksum(payload)
        return payload

    def _check_weights_finite(self) -> None:
        """Refuse to checkpoint NaN or infinite weights (a good checkpoint is never replaced
        by them); the weights are equal on every rank, so every rank agrees."""
        params = [*self.model.parameters(), *self.ema.parameters()]
        if not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            raise NonFiniteLossError(
                f"step {self.step}: the weights hold NaN or infinite values; no checkpoint "
                f"written. {self._last_good()}",
                self.step,
            )

    def _last_good(self) -> str:
        if self.last_checkpoint is None:
            return "No checkpoint of this run was written."
        return f"The last good checkpoint is {self.last_checkpoint} (step {self._good_step})."

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint.pt`` (collective: every rank must call it; rank 0 writes). The
        previous one, if known good, becomes ``checkpoint.prev.pt``."""
        self._check_weights_finite()
        mine = {"rng": st.capture_rng(self._generators), "data": self.stream.state_dict()}
        ranks = st.all_gather_objects(mine, self.dist)
        path = None
        if self.is_main:
            previous = st.previous_checkpoint(self.checkpoint_path) if self._rotate else None
            path = st.atomic_torch_save(
                self._payload(ranks), self.checkpoint_path, previous=previous
            )
            logger.info("step %d: checkpoint written to %s", self.step, path)
        st.barrier(self.dist)
        self._rotate = True
        self.last_checkpoint, self._good_step = self.checkpoint_path, self.step
        return path

    def _load(self, path: Path, *, keep_overrides: bool) -> None:
        ckpt = st.load_checkpoint(path)
        _load_weights(self.model, ckpt["model"], path)
        _load_weights(self.ema, ckpt["ema"], path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        if keep_overrides:
            self.overrides = [str(o) for o in ckpt.get("overrides", [])]
        ranks = ckpt["ranks"]
        if len(ranks) == self.dist.world_size:
            mine = ranks[self.dist.rank]
            self.stream.load_state_dict(mine["data"])
            st.restore_rng(mine["rng"], self._generators)
        else:
            logger.warning(
                "checkpoint was written by %d processes, this run has %d: data order and random "
                "streams restart (weights and optimizer are restored)",
                len(ranks),
                self.dist.world_size,
            )
        if self.is_main:
            self.metrics.load(up_to_step=self.step)
        # A verified checkpoint.pt may become .prev.pt; another file there is overwritten.
        self._rotate = path == self.checkpoint_path
        self.last_checkpoint, self._good_step = path, self.step
        self._info("resumed from %s at step %d", path, self.step)

    # ---------------------------------------------------------------------------- steps
    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``train.grad_accum`` micro-batches; returns its metrics.

        Raises :class:`~glidekit.train.errors.NonFiniteLossError` (on every rank) before the
        optimizer step if the loss or the gradient norm is not finite.
        """
        accum = self.config.train.grad_accum
        self.model.train()
        totals: dict[str, float] = {}
        for micro in range(accum):
            samples = self.stream.next_batch()
            sync = not self.dist.enabled or micro == accum - 1
            ctx = contextlib.nullcontext() if sync else self.ddp.no_sync()  # type: ignore[operator]
            with ctx:
                loss, extra = self.task.loss(self.ddp, samples, self.ctx)
                scaled = loss / accum
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            for k, v in {"loss": float(loss.detach()), **extra}.items():
                totals[k] = totals.get(k, 0.0) + v / accum
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.config.optim.grad_clip
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        totals["grad_norm"] = float(norm)
        totals["lr"] = self.optimizer.param_groups[0]["lr"]
        self._check_finite(totals)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self._update_ema()
        self.step += 1
        return totals

    def _check_finite(self, totals: dict[str, float]) -> None:
        """Stop at a non-finite loss (or gradient norm: with fp16's gradient scaler an
        infinite norm only skips the step, as the scaler intends)."""
        loss, norm = totals["loss"], totals["grad_norm"]
        bad = not math.isfinite(loss) or (self.scaler is None and not math.isfinite(norm))
        if not st.any_rank(bad, self.dist, self.device):
            return
        self.optimizer.zero_grad(set_to_none=True)
        step = self.step + 1
        raise NonFiniteLossError(
            f"step {step}: the training loss is {loss:g} (gradient norm {norm:g}); training "
            f"stopped before the step changed the weights. {self._last_good()} Lower optim.lr "
            "(or raise optim.warmup_steps), train in fp32, or check the data",
            step,
        )

    @torch.no_grad()
    def _update_ema(self) -> None:
        o = self.config.optim
        decay = o.ema_decay
        if o.ema_warmup:
            decay = min(decay, (1 + self.step) / (10 + self.step))
        ema_params = list(self.ema.parameters())
        params = list(self.model.parameters())
        for e, p in zip(ema_params, params, strict=True):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            e.copy_(b)

    # ---------------------------------------------------------------------------- outputs
    def sample_grid(self, path: Path | None = None) -> Path | None:
        """Sample the EMA model for the fixed prompts/items; save a PNG grid (rank 0 only).

        Returns the path, or None on other ranks and for a model without grids (CLIP).
        """
        if not self.is_main:
            return None
        path = path or self.out_dir / "samples" / f"step-{self.step:06d}.png"
        # Sampling must not disturb the training's random streams (resume exactness).
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            written = self.task.sample_grid(self.ema, self.dataset, path, self.ctx)
        if written is not None:
            logger.info("step %d: samples written to %s", self.step, written)
        return written

    def export(self, path: Path | None = None) -> Path | None:
        """Write the EMA weights as a glidekit model file (rank 0 only); returns its path."""
        if not self.is_main:
            return None
        path = self.task.export(self.ema, path or self.out_dir / self.config.export.path)
        logger.info("exported EMA weights to %s", path)
        return path

    def plot(self) -> Path | None:
        if not self.is_main or not self.metrics.records:
            return None
        recs = [r for r in self.metrics.records if "loss" in r]
        return plot_loss_curve(
            [r["step"] for r in recs],
            [r["loss"] for r in recs],
            self.out_dir / "loss.png",
            title=f"{self.config.model.kind} training loss",
        )

    # ---------------------------------------------------------------------------- loop
    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def _log(self, window: _Window, pbar: Any) -> float:
        """Write the window's averages (over steps and ranks) as a metrics record."""
        avg, ips = window.take()
        avg = st.mean_over_ranks(avg, self.dist, self.device)
        if self.is_main:
            record = {"step": self.step, **avg, "images_per_s": ips, "time": time.time()}
            self.metrics.append(record)
            if pbar is not None:
                pbar.set_postfix(loss=f"{avg['loss']:.4f}", img_s=f"{ips:.1f}")
        return avg["loss"]

    def _progress_bar(self) -> Any:
        # Only rank 0 shows a bar. A disabled tqdm would still start tqdm's monitor thread,
        # which then outlives the run: build none at all rather than a disabled one.
        if not (self.is_main and self.config.train.progress):
            return None
        total, desc = self.config.train.steps, f"train {self.config.model.kind}"
        return tqdm(total=total, initial=self.step, desc=desc, dynamic_ncols=True)

    def fit(self, stop_at: int | None = None) -> FitResult:
        """Train to ``train.steps`` (or ``stop_at`` / a signal: checkpoint and return early)."""
        cfg = self.config.train
        world_batch = cfg.batch_size * cfg.grad_accum * self.dist.world_size
        flag, pbar, window = _StopFlag(), self._progress_bar(), _Window()
        last_loss: float | None = None
        saved_at, stopped = -1, False
        bar_closing = contextlib.closing(pbar) if pbar is not None else contextlib.nullcontext()
        with flag.installed(), bar_closing:  # closing the bar also ends tqdm's monitor thread
            while self.step < cfg.steps:
                if stop_at is not None and self.step >= stop_at:
                    stopped = True
                    break
                window.add(self.train_step(), world_batch)
                if self._due(cfg.log_every) or self.step == cfg.steps:
                    last_loss = self._log(window, pbar)
                if pbar is not None:
                    pbar.update(1)
                stop = st.any_rank(flag.requested, self.dist, self.device)
                if stop or self._due(cfg.checkpoint_every):
                    self.save_checkpoint()
                    saved_at = self.step
                    self.plot()
                if stop:
                    stopped = True
                    msg = (
                        "stop requested (signal %s): checkpoint at step %d; continue with --resume"
                    )
                    self._info(msg, flag.signum, self.step)
                    break
                if self._due(self.config.sample.every) and self.step < cfg.steps:
                    self.sample_grid()
        if saved_at != self.step:
            self.save_checkpoint()
        self.plot()
        export_path = None
        if not stopped:
            if self.config.sample.every >= 0:
                self.sample_grid()
            export_path = self.export()
            self._info("training finished at step %d", self.step)
        st.barrier(self.dist)
        written = self.checkpoint_path if self.is_main else None
        return FitResult(self.step, stopped, written, export_path, last_loss)

    def close(self, *, wait: bool = True) -> None:
        """Release data loading and the run folder, and tear down the process group if this
        trainer started it.

        Idempotent. Under torchrun every rank must call it: with ``wait`` (the normal end of a
        run) the ranks first meet at a barrier so no collective is in flight. ``wait=False``
        (after an exception, when other ranks may be stuck in a collective) skips the barrier.
        """
        self.stream.close()
        self._lock.release()
        if not self._own_group:
            return
        self._own_group = False
        # DDP's reducer holds the process group: drop it so the group can really be freed.
        self.ddp = self.model
        if wait:
            st.shutdown_distributed()
        elif dist.is_initialized():
            dist.destroy_process_group()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(wait=exc_type is None)


def train(
    config: TrainConfig,
    *,
    resume: bool | str | os.PathLike = False,
    stop_at: int | None = None,
    overrides: Sequence[str] | None = None,
) -> FitResult:
    """Build a :class:`Trainer`, run :meth:`~Trainer.fit`, and clean up."""
    trainer = Trainer(config, resume=resume, overrides=overrides)
    try:
        result = trainer.fit(stop_at=stop_at)
    except BaseException:
        trainer.close(wait=False)
        raise
    trainer.close()
    return result


def export_checkpoint(
    config: TrainConfig,
    checkpoint: bool | str | os.PathLike = True,
    path: str | os.PathLike | None = None,
) -> Path:
    """Write a checkpoint's EMA weights as the run's model file, without training.

    ``checkpoint``: True for ``<train.out_dir>/checkpoint.pt``, or a path. ``path``: the file
    to write (default ``export.path`` in ``train.out_dir``). Reads no data and takes no lock,
    so it may run beside the training of the same folder; it writes nothing but the export.
    """
    out_dir = Path(config.train.out_dir)
    source = out_dir / st.CHECKPOINT_NAME if checkpoint is True else Path(checkpoint)
    if not source.is_file():
        raise FileNotFoundError(f"--export-only: no checkpoint at {str(source)!r}")
    ckpt = st.load_checkpoint(source)
    task = build_task(config, load_weights=False)
    _load_weights(task.model, ckpt["ema"], source)
    written = task.export(task.model.eval(), Path(path) if path else out_dir / config.export.path)
    logger.info("step %d of %s exported to %s", int(ckpt["step"]), source, written)
    return written


__all__ = [
    "TASKS",
    "FitResult",
    "Trainer",
    "build_task",
    "export_checkpoint",
    "lr_factor",
    "train",
]
