"""Training state on disk and across processes: RNG states, atomic checkpoints, torchrun setup.

A checkpoint is ``torch.save`` of plain containers of tensors, numbers and strings, read back
with ``torch.load(weights_only=True)``, so loading one never runs pickled code.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from glidekit.fileio import atomic_path

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "glidekit-train/1"


# ---------------------------------------------------------------------------------------- RNG
def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every RNG state this process uses: torch (CPU and CUDA), numpy, python, ``generators``."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_state[0]),
            "state": torch.tensor(py_state[1], dtype=torch.int64),
            "gauss": py_state[2],
        },
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["name"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    pyst = state["python"]
    random.setstate((pyst["version"], tuple(int(v) for v in pyst["state"].tolist()), pyst["gauss"]))
    for name, g in generators.items():
        if name in state["generators"]:
            g.set_state(state["generators"][name].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ---------------------------------------------------------------------------------------- files
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file (see :func:`atomic_path`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``: tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{str(path)!r} is not a readable training checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a glidekit training checkpoint (format {CHECKPOINT_FORMAT})"
        )
    return ckpt


# ---------------------------------------------------------------------------------------- dist
@dataclass
class DistInfo:
    """Where this process sits in a ``torchrun`` job (rank 0 of 1 when run directly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistInfo:
        """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` as set by torchrun."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError as exc:
            raise ValueError(
                f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}"
            ) from exc
        return cls(rank, world, local)


def init_distributed(info: DistInfo, device: torch.device) -> bool:
    """Start the process group (NCCL on GPU, gloo on CPU) if needed; True if this call did."""
    if not info.enabled or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    backend = "nccl" if device.type == "cuda" else "gloo"
    # DistributedDataParallel imports torch._dynamo on first use; imported after the process
    # group exists, it keeps references to the default group that are never released, so
    # destroy_process_group() cannot free it and gloo's worker threads live on into interpreter
    # shutdown, where they crash the process now and then ("terminate called without an active
    # exception", SIGABRT). Imported first, it holds none and shutdown joins those threads.
    with contextlib.suppress(ImportError):
        import torch._dynamo  # noqa: F401
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    logger.debug("process group %s: rank %d of %d", backend, info.rank, info.world_size)
    return True


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` in rank order (just ``[obj]`` without distribution)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on any rank."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values: dict[str, float], info: DistInfo, device: torch.device) -> dict:
    """Average a dict of floats over all ranks (same keys on every rank)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= info.world_size
    return dict(zip(keys, t.tolist(), strict=True))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def _native_thread_names() -> list[str]:
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:  # not Linux
        return []
    names = []
    for tid in tasks:
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/self/task/{tid}/comm").read_text().strip())
    return names


def shutdown_distributed() -> None:
    """Tear down the default process group cleanly (idempotent; every rank must call it).

    All ranks first meet at a barrier so that no collective is still in flight, then the group
    is destroyed and garbage collected while the interpreter is fully alive, so the backend's
    worker threads are joined here rather than racing interpreter shutdown. Callers should
    drop their DistributedDataParallel wrappers first.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.barrier()
    finally:
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
    left = [n for n in _native_thread_names() if n.startswith(("pt_gloo", "gloo_"))]
    if left:
        logger.debug(
            "gloo threads still alive after destroy_process_group: %s (python threads: %s)",
            left,
            [t.name for t in threading.enumerate()],
        )


__all__ = [
    "CHECKPOINT_FORMAT",
    "DistInfo",
    "all_gather_objects",
    "any_rank",
    "atomic_torch_save",
    "barrier",
    "capture_rng",
    "init_distributed",
    "load_checkpoint",
    "mean_over_ranks",
    "restore_rng",
    "seed_everything",
    "shutdown_distributed",
]
