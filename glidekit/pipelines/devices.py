"""Devices and compute dtypes of the pipelines, and handing freed model memory back to the OS."""

from __future__ import annotations

import ctypes
import logging
import sys

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


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Compute dtype of the UNets: "auto" is float16 on cuda/mps and float32 on cpu.

    bfloat16 works everywhere (on the CPU it is the fast path: weights and activations in bf16,
    norms in float32, channels-last). float16 is for accelerators only: asked for on the CPU it
    logs a warning and computes in float32 (CPU half-precision convolutions are slow and inexact).
    """
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
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


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> "fp32" (as recorded in a result's params)."""
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
