"""The training loop: one process or many (``torchrun``), resumable bit for bit.

``Trainer(config, resume=...)`` builds everything; :meth:`Trainer.fit` runs until
``train.steps`` (or ``stop_at``, or SIGTERM/SIGINT) and writes into ``train.out_dir``:

* ``checkpoint.pt``: weights, EMA, optimizer, LR scheduler, grad scaler, step, each rank's data
  position and RNG states (every ``train.checkpoint_every`` steps, on a stop, at the end);
* ``metrics.jsonl``: one record per ``train.log_every`` steps (loss, lr, grad norm, images/s);
* ``loss.png``: the loss curve; ``samples/step-NNNNNN.png``: EMA sample grids;
* ``export.safetensors``: the EMA weights as a glidekit model file
  (:func:`glidekit.nn.bundle.load_model`; :func:`glidekit.train.clip.load_clip` for CLIP).

Only rank 0 writes files. A stop request (signal) is agreed on by all ranks at the end of a
step; they save the checkpoint together and :meth:`fit` returns normally (the CLI exits 0).
:meth:`Trainer.close` (called by :func:`train`) ends the run's data loaders and, under torchrun,
destroys the process group after a barrier so that its worker threads are joined before the
interpreter exits.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from glidekit.checkpoints import CheckpointError, load_into
from glidekit.checkpoints.registry import lookup
from glidekit.data import ShapesTokenizer
from glidekit.diffusion import GaussianDiffusion, sample
from glidekit.diffusion.losses import training_losses
from glidekit.guidance import ClassifierFreeGuidance, known_region_replacer
from glidekit.nn.bundle import is_bundle, load_model, save_model
from glidekit.nn.config import RELEASED_CONFIGS, DiffusionConfig, UNetConfig
from glidekit.nn.unet import GlideUNet, create_model
from glidekit.tokenizer import tokenize_batch
from glidekit.train import state as st
from glidekit.train.clip import ClipPair, contrastive_loss, load_clip, save_clip
from glidekit.train.config import TrainConfig
from glidekit.train.data import (
    add_position_twins,
    conditioning,
    drop_captions,
    make_dataset,
    make_stream,
    make_tokenizer,
    random_patches,
    reference_items,
    tokenize_for_clip,
)
from glidekit.train.report import MetricsLog, plot_loss_curve, save_grid

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def _resolve_device(name: str, info: st.DistInfo) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("train.device: cuda requested but no CUDA device is available")
        device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


#: model.init of this kind may start a model.kind of that kind (GLIDE's inpainting fine-tunes).
INPAINT_FROM = {"text2im": "inpaint", "super_res": "super_res_inpaint"}
INPUT_CONV = "input_blocks.0.0.weight"


def add_inpaint_channels(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A text2im (super_res) state dict made to fit the inpaint (super_res_inpaint) kind: the
    input convolution gains the masked image's 3 channels and the mask's 1 right after x's 3
    (the UNet's input order), with zero weights, so the widened model computes exactly what
    the original did until fine-tuning teaches it to read them (as the GLIDE paper did)."""
    weight = state[INPUT_CONV]
    zeros = weight.new_zeros(weight.shape[0], 4, *weight.shape[2:])
    return {**state, INPUT_CONV: torch.cat([weight[:, :3], zeros, weight[:, 3:]], dim=1)}


def sample_timesteps(
    batch: int,
    num_steps: int,
    generator: torch.Generator,
    device: torch.device,
    high_noise_fraction: float = 0.0,
    high_noise_start: int = 900,
) -> torch.Tensor:
    """(batch,) training timesteps: uniform over [0, num_steps), except that each one is, with
    probability ``high_noise_fraction``, drawn from [high_noise_start, num_steps) instead.
    With a fraction of 0 this draws exactly what plain uniform sampling does."""
    t = torch.randint(0, num_steps, (batch,), generator=generator, device=device)
    if high_noise_fraction > 0:
        top = torch.randint(
            high_noise_start, num_steps, (batch,), generator=generator, device=device
        )
        pick = torch.rand(batch, generator=generator, device=device) < high_noise_fraction
        t = torch.where(pick, top, t)
    return t


class Trainer:
    """Train a GLIDE UNet (any of the four kinds) or the noise-aware CLIP from a TrainConfig.

    Args:
        config: the validated run configuration.
        resume: continue from ``<out_dir>/checkpoint.pt`` (True), from a given checkpoint path,
            or start fresh (False; refused if ``out_dir`` already holds a checkpoint).
    """

    def __init__(self, config: TrainConfig, *, resume: bool | str | Path = False) -> None:
        self.config = config
        cfg = config
        self.dist = st.DistInfo.from_env()
        self.device = _resolve_device(cfg.train.device, self.dist)
        if cfg.train.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("train.precision: fp16 needs a CUDA device; use bf16 (or fp32) on CPU")
        if cfg.train.threads is not None:
            torch.set_num_threads(cfg.train.threads)
        self._own_group = st.init_distributed(self.dist, self.device)
        try:
            self._setup(resume)
        except BaseException:
            if self._own_group:  # e.g. a bad data path: leave no process group behind
                import torch.distributed as dist

                self._own_group = False
                dist.destroy_process_group()
            raise

    def _setup(self, resume: bool | str | Path) -> None:
        cfg = self.config
        self.is_main = self.dist.is_main
        self.out_dir = Path(cfg.train.out_dir)
        self.checkpoint_path = self.out_dir / "checkpoint.pt"
        resume_path = self._resume_path(resume)

        self.is_clip = cfg.model.kind == "clip"
        self.amp_dtype = DTYPES[cfg.train.precision]
        st.seed_everything(cfg.train.seed)  # identical initial weights on every rank
        if self.is_clip:
            self._build_clip()
        else:
            self._build_unet()
        self.model.to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        n_params = sum(p.numel() for p in self.model.parameters())
        self._info("model %s: %.2fM parameters on %s", cfg.model.kind, n_params / 1e6, self.device)

        image_size = self.image_size
        self.dataset = make_dataset(
            cfg.data, image_size, rank=self.dist.rank, world_size=self.dist.world_size
        )
        self.stream = make_stream(
            self.dataset,
            cfg.data,
            cfg.train.batch_size,
            cfg.data.seed,
            self.dist.rank,
            self.dist.world_size,
        )
        dropout = cfg.data.caption_dropout
        self.caption_dropout = (0.0 if self.is_clip else 0.2) if dropout is None else dropout

        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=o.lr,
            betas=(o.betas[0], o.betas[1]),
            eps=o.eps,
            weight_decay=o.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.train.precision == "fp16" else None
        self.step = 0
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl")

        # Per-rank randomness of the loop: global RNG (dropout), data draws, noise/timesteps.
        rank_seed = cfg.train.seed * 1_000_003 + 7919 * (self.dist.rank + 1)
        st.seed_everything(rank_seed)
        self.gen_cpu = torch.Generator().manual_seed(rank_seed + 1)
        self.gen_dev = torch.Generator(device=self.device).manual_seed(rank_seed + 2)
        self._generators = {"cpu": self.gen_cpu, "device": self.gen_dev}
        if resume_path is not None:
            self._load(resume_path)
        elif self.is_main:
            self.metrics.load(up_to_step=0)

        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp: nn.Module = DDP(self.model, device_ids=ids)
        else:
            self.ddp = self.model
        self._ref: list[dict] | None = None

    # ---------------------------------------------------------------------------- building
    def _info(self, msg: str, *args: Any) -> None:
        if self.is_main:
            logger.info(msg, *args)

    def _resume_path(self, resume: bool | str | Path) -> Path | None:
        if resume is False or resume is None:
            if self.checkpoint_path.exists():
                raise ValueError(
                    f"train.out_dir {str(self.out_dir)!r} already holds checkpoint.pt; pass "
                    "--resume to continue it, or set train.out_dir to a new folder"
                )
            return None
        path = self.checkpoint_path if resume is True else Path(resume)
        if not path.is_file():
            raise FileNotFoundError(
                f"--resume: no checkpoint at {str(path)!r}; start without --resume"
            )
        return path

    def _tokenizer_kind(self) -> str:
        d = self.config.data
        if d.tokenizer != "auto":
            return d.tokenizer
        if d.kind == "shapes":
            return "shapes"
        return "clip" if self.is_clip else "gpt2"

    def _build_unet(self) -> None:
        cfg = self.config
        init = cfg.model.init
        base: UNetConfig | None = None
        init_state: dict[str, torch.Tensor] | None = None
        init_tokenizer = None
        released = lookup(init) if init else None
        if released is not None:
            if released.family != "diffusion":
                raise ValueError(f"model.init: {init!r} is a CLIP checkpoint; use model.kind: clip")
            base = RELEASED_CONFIGS[released.name]
            if base.kind != cfg.model.kind:
                raise ValueError(
                    f"model.init: {init!r} is a {base.kind} model but model.kind is "
                    f"{cfg.model.kind}; set model.kind: {base.kind}"
                )
        elif init and is_bundle(init):
            loaded, init_diffusion, init_tokenizer = load_model(init)
            base = loaded.config
            if init_diffusion.prediction != cfg.diffusion.prediction:
                logger.warning(
                    "model.init %s predicts %s but diffusion.prediction is %s: the fine-tune "
                    "re-learns the output (set diffusion.prediction: %s to keep it)",
                    init, init_diffusion.prediction, cfg.diffusion.prediction,
                    init_diffusion.prediction,
                )  # fmt: skip
            init_state = {k: v.float() for k, v in loaded.state_dict().items()}
            if INPAINT_FROM.get(base.kind) == cfg.model.kind:
                init_state = add_inpaint_channels(init_state)
            elif base.kind != cfg.model.kind:
                hint = f" (or {INPAINT_FROM[base.kind]})" if base.kind in INPAINT_FROM else ""
                raise ValueError(
                    f"model.init: {init!r} holds a {base.kind} model but model.kind is "
                    f"{cfg.model.kind}; set model.kind: {base.kind}{hint}"
                )
        elif init and not Path(init).exists():
            raise ValueError(
                f"model.init: {init!r} is neither a released checkpoint name "
                f"({', '.join(RELEASED_CONFIGS)}) nor an existing file"
            )
        defaults: dict[str, Any] = {}
        kind = self._tokenizer_kind()
        if kind == "shapes" and "n_vocab" not in cfg.model.arch and base is None:
            defaults["n_vocab"] = ShapesTokenizer().n_vocab
        unet_cfg = cfg.model.unet_config(base, **defaults)
        if init_tokenizer is not None and cfg.data.tokenizer == "auto":
            self.tokenizer = init_tokenizer
        else:
            self.tokenizer = make_tokenizer(cfg.data, cfg.model.kind, unet_cfg.text_ctx)
        if self.tokenizer.n_vocab > unet_cfg.n_vocab:
            raise ValueError(
                f"model.n_vocab ({unet_cfg.n_vocab}) is smaller than the tokenizer's vocabulary "
                f"({self.tokenizer.n_vocab}); set model.n_vocab: {self.tokenizer.n_vocab}"
            )
        self.model: nn.Module = create_model(unet_cfg)
        turned_on = base is not None and unet_cfg.attention_pos_emb and not base.attention_pos_emb
        if init_state is not None and turned_on:
            # Turned on for a fine-tune: the new embeddings start as the sine-cosine table
            # (create_model's init); every other weight comes from the bundle.
            for key, value in self.model.state_dict().items():
                if key.endswith(".pos_emb"):
                    init_state[key] = value.clone()
        if init_state is not None:
            try:
                self.model.load_state_dict(init_state, strict=True)
            except RuntimeError as exc:
                raise ValueError(
                    f"model.init: {init!r} does not fit the configured architecture; drop the "
                    f"model.* keys that change it ({exc})"
                ) from exc
        elif init:
            try:
                load_into(self.model, init if released is not None else Path(init))
            except CheckpointError as exc:
                raise ValueError(f"model.init: {exc}") from exc
        if init:
            self._info("initialised from %s", init)
        schedule = cfg.diffusion.noise_schedule
        if schedule == "auto":
            schedule = "linear" if unet_cfg.super_res else "squaredcos_cap_v2"
        self.diffusion_config = DiffusionConfig(
            steps=cfg.diffusion.steps,
            noise_schedule=schedule,
            learn_sigma=unet_cfg.learn_sigma,
            prediction=cfg.diffusion.prediction,
        )
        self.diffusion = GaussianDiffusion.from_config(
            schedule, cfg.diffusion.steps, prediction=cfg.diffusion.prediction
        )
        self.unet_config = unet_cfg
        self.image_size = unet_cfg.image_size
        self.low_res_size = cfg.data.low_res_size or max(1, unet_cfg.image_size // 4)

    def _build_clip(self) -> None:
        from glidekit.clip import NoisedCLIP

        cfg = self.config
        defaults: dict[str, Any] = {"n_timesteps": cfg.diffusion.steps}
        if cfg.diffusion.noise_schedule != "auto":
            defaults["beta_schedule"] = cfg.diffusion.noise_schedule
        kind = self._tokenizer_kind()
        if kind == "shapes":
            defaults.update(n_vocab=ShapesTokenizer().n_vocab + 1, max_text_len=32)
        init = cfg.model.init
        init_clip = None
        if init and init != "clip":
            init_clip, _ = load_clip(init)
            defaults.update(init_clip.config.to_dict())
        clip_cfg = cfg.model.clip_config(**defaults)
        if kind == "shapes":
            self.tokenizer = ShapesTokenizer(text_ctx=clip_cfg.max_text_len)
            need = self.tokenizer.n_vocab + 1
        else:
            self.tokenizer = make_tokenizer(cfg.data, "clip", clip_cfg.max_text_len)
            need = self.tokenizer.n_vocab
        if need > clip_cfg.n_vocab:
            raise ValueError(
                f"model.n_vocab ({clip_cfg.n_vocab}) is too small for the tokenizer; set "
                f"model.n_vocab: {need}"
            )
        clip = NoisedCLIP(clip_cfg)
        if init == "clip":
            try:
                load_into(clip.image_encoder, "clip/image-enc")
                load_into(clip.text_encoder, "clip/text-enc")
            except CheckpointError as exc:
                raise ValueError(f"model.init: {exc}") from exc
        elif init_clip is not None:
            clip.load_state_dict(init_clip.state_dict(), strict=True)
        self.model = ClipPair(clip)
        self.clip_config = clip_cfg
        self.diffusion = GaussianDiffusion.from_config(clip_cfg.beta_schedule, clip_cfg.n_timesteps)
        self.image_size = clip_cfg.image_size

    def _lr_factor(self, step: int) -> float:
        o, total = self.config.optim, self.config.train.steps
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "cosine":
            span = max(1, total - o.warmup_steps)
            progress = min(1.0, (step - o.warmup_steps) / span)
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    # ---------------------------------------------------------------------------- state
    def _payload(self, rank_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": st.CHECKPOINT_FORMAT,
            "step": self.step,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "world_size": self.dist.world_size,
            "ranks": rank_states,
        }

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint.pt`` (collective: every rank must call it; rank 0 writes)."""
        mine = {"rng": st.capture_rng(self._generators), "data": self.stream.state_dict()}
        ranks = st.all_gather_objects(mine, self.dist)
        path = None
        if self.is_main:
            path = st.atomic_torch_save(self._payload(ranks), self.checkpoint_path)
            logger.info("step %d: checkpoint written to %s", self.step, path)
        st.barrier(self.dist)
        return path

    def _load(self, path: Path) -> None:
        ckpt = st.load_checkpoint(path)
        try:
            self.model.load_state_dict(ckpt["model"], strict=True)
            self.ema.load_state_dict(ckpt["ema"], strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"--resume: {str(path)!r} was trained with another model configuration "
                f"(model.* keys differ): {str(exc).splitlines()[0]}"
            ) from exc
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
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
        self._info("resumed from %s at step %d", path, self.step)

    # ---------------------------------------------------------------------------- steps
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _unet_loss(self, samples: list[dict]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.unet_config
        images = torch.stack([s["image"] for s in samples]).float()
        captions = drop_captions(
            [s.get("caption", "") for s in samples], self.caption_dropout, self.gen_cpu
        )
        cond = conditioning(
            images,
            super_res=cfg.super_res,
            inpaint=cfg.inpaint,
            low_res_size=self.low_res_size,
            mask_kind=self.config.data.mask_kind,
            generator=self.gen_cpu,
            keeps=[s.get("inpaint_keep") for s in samples],
        )
        if self.config.data.patch_size is not None:
            images, cond = random_patches(images, cond, self.config.data.patch_size, self.gen_cpu)
        dev = self.device
        b = images.shape[0]
        dc = self.config.diffusion
        t = sample_timesteps(
            b, self.diffusion.num_timesteps, self.gen_dev, dev,
            dc.high_noise_fraction, dc.high_noise_start,
        )  # fmt: skip
        noise = torch.randn(images.shape, generator=self.gen_dev, device=dev)
        return self.unet_loss(images, captions, t, noise, cond)

    def unet_loss(
        self,
        images: torch.Tensor,
        captions: list[str],
        t: torch.Tensor,
        noise: torch.Tensor,
        cond: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The UNet's training loss (mean over the batch) for explicit inputs, through the
        DDP wrapper when distributed: clean ``images`` (B, 3, S, S) in [-1, 1], ``captions``
        (already dropped), timesteps ``t`` (B,), ``noise`` like ``images``, and the image
        conditioning ``cond`` (see :func:`~glidekit.train.data.conditioning`)."""
        cfg = self.unet_config
        tokens, mask = tokenize_batch(self.tokenizer, captions, cfg.text_ctx)
        dev = self.device
        kwargs: dict[str, Any] = {"tokens": tokens.to(dev), "mask": mask.to(dev)}
        kwargs.update({k: v.to(dev) for k, v in (cond or {}).items()})
        x0 = images.to(dev)
        with self._autocast():
            out = training_losses(
                self.diffusion,
                self.ddp,
                x0,
                t.to(dev),
                model_kwargs=kwargs,
                noise=noise.to(dev),
                mse_weight_max=float(self.config.diffusion.mse_weight_max),
            )
        loss = out["loss"].mean()
        return loss, {
            "mse": float(out["mse"].detach().mean()),
            "vb": float(out["vb"].detach().mean()),
        }

    def _clip_loss(self, samples: list[dict]) -> tuple[torch.Tensor, dict[str, float]]:
        twins = float(self.config.data.position_twins)
        if twins > 0:
            samples = add_position_twins(samples, twins, self.gen_cpu, self.image_size)
        images = torch.stack([s["image"] for s in samples]).float()
        captions = drop_captions(
            [s.get("caption", "") for s in samples], self.caption_dropout, self.gen_cpu
        )
        tokens, lens = tokenize_for_clip(self.tokenizer, captions, self.clip_config.max_text_len)
        dev = self.device
        x0 = images.to(dev)
        b = x0.shape[0]
        t = torch.randint(0, self.diffusion.num_timesteps, (b,), generator=self.gen_dev, device=dev)
        noise = torch.randn(x0.shape, generator=self.gen_dev, device=dev)
        x_t = self.diffusion.q_sample(x0, t, noise)
        with self._autocast():
            z_i, z_t = self.ddp(
                x_t, self.diffusion.model_timesteps(t), tokens.to(dev), lens.to(dev)
            )
        loss, acc = contrastive_loss(
            z_i.float(), z_t.float(), self.model.clip.logit_scale, rank=self.dist.rank
        )
        return loss, {"acc": float(acc.detach())}

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``train.grad_accum`` micro-batches; returns its metrics."""
        accum = self.config.train.grad_accum
        loss_fn = self._clip_loss if self.is_clip else self._unet_loss
        self.model.train()
        totals: dict[str, float] = {}
        for micro in range(accum):
            samples = self.stream.next_batch()
            sync = not self.dist.enabled or micro == accum - 1
            ctx = contextlib.nullcontext() if sync else self.ddp.no_sync()  # type: ignore[operator]
            with ctx:
                loss, extra = loss_fn(samples)
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
    def _reference(self) -> list[dict]:
        if self._ref is None:
            self._ref = reference_items(self.config.data, self.dataset, self.config.sample.count)
        return self._ref

    def sample_grid(self, path: Path | None = None) -> Path | None:
        """Sample the EMA model for the fixed prompts/items; save a PNG grid (rank 0 only).

        Rows: the conditioning input (upsamplers: the low-res image; inpainting: the masked
        image) if any, then the samples. Returns the path, or None for CLIP/other ranks.
        """
        if self.is_clip or not self.is_main:
            return None
        # Sampling must not disturb the training's random streams (resume exactness).
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            return self._sample_grid(path)

    def _sample_grid(self, path: Path | None) -> Path:
        s = self.config.sample
        cfg = self.unet_config
        ref = self._reference()
        prompts = list(s.prompts) or [r.get("caption", "") for r in ref]
        n = len(prompts)
        items = [ref[i % len(ref)] for i in range(n)]
        images = torch.stack([r["image"] for r in items]).float()
        gen = torch.Generator().manual_seed(s.seed)
        cond = conditioning(
            images,
            super_res=cfg.super_res,
            inpaint=cfg.inpaint,
            low_res_size=self.low_res_size,
            mask_kind=self.config.data.mask_kind,
            generator=gen,
        )
        guided = s.guidance_scale != 1.0
        rows_prompts = prompts + [""] * n if guided else prompts
        tokens, mask = tokenize_batch(self.tokenizer, rows_prompts, cfg.text_ctx, self.device)
        reps = 2 if guided else 1
        kwargs: dict[str, Any] = {"tokens": tokens, "mask": mask}
        kwargs.update({k: v.repeat(reps, 1, 1, 1).to(self.device) for k, v in cond.items()})
        model: Callable[..., torch.Tensor] = self.ema
        if guided:
            model = ClassifierFreeGuidance(self.ema, s.guidance_scale)
        respacing = s.steps
        sampler = "ddim" if respacing.startswith("ddim") else s.sampler
        dc = self.diffusion_config
        diffusion = GaussianDiffusion.from_config(
            dc.noise_schedule, dc.steps, respacing, prediction=dc.prediction
        )
        denoised_fn = None
        if cfg.inpaint:
            denoised_fn = known_region_replacer(kwargs["inpaint_image"], kwargs["inpaint_mask"])
        with self._autocast():
            x = sample(
                diffusion,
                model,
                (reps * n, 3, cfg.image_size, cfg.image_size),
                sampler=sampler,
                model_kwargs=kwargs,
                denoised_fn=denoised_fn,
                device=self.device,
                generator=torch.Generator(device=self.device).manual_seed(s.seed),
            )
        self.ema.del_cache()
        rows = []
        if cfg.super_res:
            rows.append(cond["low_res"])
        if cfg.inpaint:
            rows.append(cond["inpaint_image"])
        rows.append(x[:n].float().cpu())
        path = path or self.out_dir / "samples" / f"step-{self.step:06d}.png"
        save_grid(rows, path)
        logger.info("step %d: samples written to %s", self.step, path)
        return path

    def export(self, path: Path | None = None) -> Path | None:
        """Write the EMA weights as a glidekit model file (rank 0 only); returns its path."""
        if not self.is_main:
            return None
        e = self.config.export
        path = path or self.out_dir / e.path
        dtype = None if e.dtype == "fp32" else DTYPES[e.dtype]
        if self.is_clip:
            save_clip(path, self.ema.clip, self.tokenizer, dtype)  # type: ignore[attr-defined]
        else:
            ema: GlideUNet = self.ema  # type: ignore[assignment]
            save_model(path, ema, self.diffusion_config, self.tokenizer, dtype)
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
    def fit(self, stop_at: int | None = None) -> FitResult:
        """Train to ``train.steps`` (or ``stop_at`` / a signal: checkpoint and return early)."""
        cfg = self.config.train
        total = cfg.steps
        world_batch = cfg.batch_size * cfg.grad_accum * self.dist.world_size
        flag = _StopFlag()
        # Only rank 0 shows a bar. A disabled tqdm would still start tqdm's monitor thread,
        # which then outlives the run: build none at all rather than a disabled one.
        pbar = None
        if self.is_main and cfg.progress:
            pbar = tqdm(
                total=total,
                initial=self.step,
                desc=f"train {self.config.model.kind}",
                dynamic_ncols=True,
            )
        window: dict[str, float] = {}
        n_window = 0
        t_last = time.perf_counter()
        img_last = 0
        images = 0
        last_loss: float | None = None
        ckpt_path: Path | None = None
        saved_at = -1
        stopped = False
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        bar_closing = contextlib.closing(pbar) if pbar is not None else contextlib.nullcontext()
        with flag.installed(), bar_closing:  # closing the bar also ends tqdm's monitor thread
            while self.step < total:
                if stop_at is not None and self.step >= stop_at:
                    stopped = True
                    break
                m = self.train_step()
                images += world_batch
                n_window += 1
                for k, v in m.items():
                    window[k] = window.get(k, 0.0) + v
                log_now = cfg.log_every and self.step % cfg.log_every == 0
                if log_now or self.step == total:
                    avg = {k: v / n_window for k, v in window.items()}
                    avg = st.mean_over_ranks(avg, self.dist, self.device)
                    now = time.perf_counter()
                    ips = (images - img_last) / max(now - t_last, 1e-9)
                    t_last, img_last = now, images
                    last_loss = avg["loss"]
                    window, n_window = {}, 0
                    if self.is_main:
                        rec = {"step": self.step, **avg, "images_per_s": ips, "time": time.time()}
                        self.metrics.append(rec)
                        if pbar is not None:
                            pbar.set_postfix(loss=f"{avg['loss']:.4f}", img_s=f"{ips:.1f}")
                if pbar is not None:
                    pbar.update(1)
                stop = st.any_rank(flag.requested, self.dist, self.device)
                ckpt_now = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
                if ckpt_now or stop:
                    ckpt_path = self.save_checkpoint()
                    saved_at = self.step
                    self.plot()
                if stop:
                    stopped = True
                    self._info(
                        "stop requested (signal %s): checkpoint at step %d; continue with --resume",
                        flag.signum,
                        self.step,
                    )
                    break
                every = self.config.sample.every
                if every > 0 and self.step % every == 0 and self.step < total:
                    self.sample_grid()
        if saved_at != self.step:
            ckpt_path = self.save_checkpoint()
        self.plot()
        export_path = None
        if not stopped:
            if self.config.sample.every >= 0:
                self.sample_grid()
            export_path = self.export()
            self._info("training finished at step %d", self.step)
        st.barrier(self.dist)
        return FitResult(self.step, stopped, ckpt_path, export_path, last_loss)

    def close(self, *, wait: bool = True) -> None:
        """Release data loading and tear down the process group if this trainer started it.

        Idempotent. Under torchrun every rank must call it: with ``wait`` (the normal end of a
        run) the ranks first meet at a barrier so no collective is in flight. ``wait=False``
        (after an exception, when other ranks may be stuck in a collective) skips the barrier.
        """
        self.stream.close()
        if not self._own_group:
            return
        self._own_group = False
        # DDP's reducer holds the process group: drop it so the group can really be freed.
        self.ddp = self.model
        if wait:
            st.shutdown_distributed()
        else:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def train(
    config: TrainConfig, *, resume: bool | str | Path = False, stop_at: int | None = None
) -> FitResult:
    """Build a :class:`Trainer`, run :meth:`~Trainer.fit`, and clean up."""
    trainer = Trainer(config, resume=resume)
    try:
        result = trainer.fit(stop_at=stop_at)
    except BaseException:
        trainer.close(wait=False)
        raise
    trainer.close()
    return result


__all__ = ["FitResult", "Trainer", "train"]
