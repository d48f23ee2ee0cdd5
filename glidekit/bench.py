"""Measure this machine: forward cost per model and dtype, sampler steps per second, peak memory.

Used by ``glidekit bench`` and the scripts in ``benchmarks/``. Weights are random (timing does not
depend on their values). Where ``../shared/bench/calibrate.py`` is found beside a checkout, each
time is also reported as a ratio to that yardstick, measured in the same process, and the CPU's
bf16 features are written beside every figure (:func:`cpu_info`).

Layer: a face beside ``glidekit.web`` (used by ``glidekit bench``); imports ``glidekit.nn`` and
``glidekit.pipelines.devices`` (:func:`cpu_info`, which the fast preset reads too).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from glidekit.nn import RELEASED_CONFIGS, UNetConfig, create_model
from glidekit.nn.unet import GlideUNet
from glidekit.pipelines.devices import cpu_info

logger = logging.getLogger(__name__)

# (batch, image size) of the official timing figures: base batch 2 (CFG), upsampler batch 1.
DEFAULT_CASES: dict[str, tuple[int, int]] = {"base": (2, 64), "upsample": (1, 256)}


@dataclass
class ForwardResult:
    model: str
    dtype: str
    batch: int
    size: int
    seconds: float
    calibrate_seconds: float | None
    ratio: float | None
    peak_rss_mb: float
    compiled: bool = False
    compile_seconds: float | None = None  # the first (compiling) forward, with compile=True
    machine: dict[str, object] | None = None  # cpu_info() of the CPU that ran it

    @property
    def steps_per_second(self) -> float:
        """Sampler steps per second: one step is one forward of this batch."""
        return 1.0 / self.seconds


def find_calibrate() -> Callable[[int], float] | None:
    """``calibrate_seconds`` from ``$GLIDEKIT_CALIBRATE`` or ``<checkout>/../shared/bench``."""
    candidates = [os.environ.get("GLIDEKIT_CALIBRATE", "")]
    candidates.append(
        str(Path(__file__).resolve().parents[2] / "shared" / "bench" / "calibrate.py")
    )
    for path in candidates:
        if path and Path(path).is_file():
            spec = importlib.util.spec_from_file_location("glidekit_calibrate", path)
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.calibrate_seconds
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def prepare_model(
    config: UNetConfig, dtype: torch.dtype, device: torch.device, channels_last: bool = True
) -> GlideUNet:
    """A randomly initialised model in the fast-path layout for ``dtype`` on ``device``."""
    model = create_model(config, device=device).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    if dtype != torch.float32:
        model.convert_to_fp16(dtype)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def forward_cost(
    name: str,
    dtype: torch.dtype = torch.float32,
    *,
    batch: int | None = None,
    size: int | None = None,
    rounds: int = 3,
    device: str | torch.device = "cpu",
    calibrate: Callable[[int], float] | None = None,
    compile: bool = False,
) -> ForwardResult:
    """Median seconds of one forward of the released config ``name`` (text already encoded);
    ``compile``: through ``torch.compile``, the first (compiling) forward timed apart."""
    config = RELEASED_CONFIGS[name]
    default_batch, default_size = DEFAULT_CASES.get(name, (1, config.image_size))
    batch, size = batch or default_batch, size or default_size
    device = torch.device(device)
    torch.manual_seed(0)
    model = prepare_model(config, dtype, device, channels_last=dtype != torch.float32)
    x = torch.randn(batch, 3, size, size, device=device)
    if dtype != torch.float32:
        x = x.contiguous(memory_format=torch.channels_last)
    kwargs = {}
    if config.super_res:
        kwargs["low_res"] = torch.rand(batch, 3, size // 4, size // 4, device=device) * 2 - 1
    t = torch.full((batch,), 500, device=device)
    tokens = torch.randint(0, config.n_vocab, (batch, config.text_ctx), device=device)
    mask = torch.ones(batch, config.text_ctx, dtype=torch.bool, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times, cals = [], []
    with torch.inference_mode():
        text = model.encode_text(tokens, mask)
        if compile:
            model.compile()
        start = time.perf_counter()
        model(x, t, text=text, **kwargs)  # warm-up (compiles); fills the per-layer text k/v cache
        sync()
        compile_s = time.perf_counter() - start if compile else None
        for _ in range(rounds):
            if calibrate is not None:
                cals.append(calibrate(3))
            start = time.perf_counter()
            model(x, t, text=text, **kwargs)
            sync()
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    cal = statistics.median(cals) if cals else None
    ratio = statistics.median(a / b for a, b in zip(times, cals, strict=True)) if cals else None
    return ForwardResult(
        model=name,
        dtype=str(dtype).removeprefix("torch."),
        batch=batch,
        size=size,
        seconds=seconds,
        calibrate_seconds=cal,
        ratio=ratio,
        peak_rss_mb=peak_rss_mb(),
        compiled=compile,
        compile_seconds=compile_s,
        machine=cpu_info() if device.type == "cpu" else None,
    )


def as_dict(result: ForwardResult) -> dict:
    return {**asdict(result), "steps_per_second": result.steps_per_second}
