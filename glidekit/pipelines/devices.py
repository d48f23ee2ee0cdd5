"""Devices and compute dtypes of the pipelines, and handing freed model memory back to the OS."""

from __future__ import annotations

import ctypes
import logging
import platform
import sys
from pathlib import Path

import torch

from glidekit.errors import OptionError

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
DTYPE_NAMES = ("auto", "fp32", "fp16", "bf16")


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc keeps freed model weights otherwise, and the
    next model's load would add to the resident size instead of reusing them)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to do
        pass


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None): cuda if available, then mps, then cpu; anything else as given."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        msg = f"cannot parse {device!r} ({exc}); use auto, cpu, cuda, mps"
        raise OptionError("device", msg) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("device", f"{device!r} requested but CUDA is not available")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise OptionError("device", f"{device!r} requested but MPS is not available")
    return dev


def resolve_dtype(
    dtype: str | torch.dtype | None, device: torch.device, auto: torch.dtype | None = None
) -> torch.dtype:
    """Compute dtype of the UNets: "auto" (or None) is ``auto`` if given (a preset's choice),
    else float16 on cuda/mps and float32 on cpu.

    bfloat16 works everywhere (on the CPU it is the fast path: weights and activations in bf16,
    norms in float32, channels-last). float16 is for accelerators only: asked for on the CPU it
    logs a warning and computes in float32 (CPU half-precision convolutions are slow and inexact).
    """
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        if auto is not None:
            return auto
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        key = str(dtype).strip().lower().removeprefix("torch.")
        if key not in _DTYPES:
            raise OptionError("dtype", f"unknown dtype {dtype!r}; expected one of {DTYPE_NAMES}")
        resolved = _DTYPES[key]
    if resolved not in (torch.float32, torch.float16, torch.bfloat16):
        raise OptionError("dtype", f"{resolved} is not supported; expected one of {DTYPE_NAMES}")
    if resolved == torch.float16 and device.type == "cpu":
        logger.warning("dtype float16 requested on the CPU; computing in float32 (use bf16)")
        return torch.float32
    return resolved


#: The CPU features that decide how fast bf16 runs: AMX tiles (several times fp32's matmul
#: throughput) or AVX-512 bf16 dot products (about fp32's speed for matmuls; the full-size
#: cascade still runs about 2x faster than fp32, RESULTS.md "Forward cost").
BF16_FEATURES = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f")


def cpu_info() -> dict[str, object]:
    """The CPU's model name and which of :data:`BF16_FEATURES` it has (Linux /proc/cpuinfo;
    elsewhere the platform's processor string and no features), written beside every figure."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    return {"cpu": model, **{f: f in flags for f in BF16_FEATURES}}


def fast_dtype(device: torch.device) -> torch.dtype:
    """The fastest dtype that keeps GLIDE's pictures on ``device`` (the fast preset's).

    CUDA: bf16 where the card has it (as fast as fp16 and without fp16's overflow, the NaN /
    black images of openai/glide-text2im #31), else fp16. MPS: fp16. CPU: bf16 when the CPU
    has native bf16 instructions (AMX or AVX-512 bf16; emulated bf16 is slower than fp32),
    else fp32.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    info = cpu_info()
    return torch.bfloat16 if info["amx_bf16"] or info["avx512_bf16"] else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> "fp32" (as recorded in a result's params)."""
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
