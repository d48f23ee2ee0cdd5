"""Training state on disk and across processes: RNG states, checkpoints, the run lock, torchrun.

A checkpoint is ``torch.save`` of plain containers of tensors, numbers and strings, read back
with ``torch.load(weights_only=True)``, so loading one never runs pickled code. It carries
``"checksum"``: ``"sha256:<hex>"`` over everything else in it (:func:`payload_checksum`), which
:func:`load_checkpoint` verifies; checkpoints written before the checksum existed have none and
load unverified. Writing a new ``checkpoint.pt`` moves the previous one, once it is known good,
to ``checkpoint.prev.pt``, the fallback a corrupt checkpoint's error message offers.

A run folder is locked (:class:`RunLock`) for as long as a training run uses it.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from filelock import FileLock, Timeout

from glidekit.checkpoints import CorruptCheckpointError
from glidekit.fileio import atomic_path
from glidekit.train.errors import RunFolderBusyError

try:
    import fcntl
except ImportError:  # Windows: no flock; RunLock falls back to filelock's lock file
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "glidekit-train/1"
#: The checkpoint in a run folder, and the previous good one kept beside it.
CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.prev.pt"


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
def _feed(h: Any, path: str, obj: Any) -> None:
    """Hash ``obj`` into ``h``: its place in the payload, its type, and its value (for a tensor
    its dtype, shape and raw bytes); mappings in the order of their keys' reprs."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"{path}:tensor:{t.dtype}:{tuple(obj.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy())
    elif isinstance(obj, Mapping):
        h.update(f"{path}:mapping:{len(obj)}\n".encode())
        for key in sorted(obj, key=repr):
            _feed(h, f"{path}/{key!r}", obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{path}:{type(obj).__name__}:{len(obj)}\n".encode())
        for i, value in enumerate(obj):
            _feed(h, f"{path}[{i}]", value)
    else:
        h.update(f"{path}:{type(obj).__name__}:{obj!r}\n".encode())


def payload_checksum(payload: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` over every entry of a checkpoint payload but ``"checksum"`` itself,
    in a fixed order (so it is the same before ``torch.save`` and after ``torch.load``)."""
    h = hashlib.sha256()
    _feed(h, "", {k: v for k, v in payload.items() if k != "checksum"})
    return f"sha256:{h.hexdigest()}"


def atomic_torch_save(
    obj: Any, path: str | os.PathLike, *, previous: str | os.PathLike | None = None
) -> Path:
    """``torch.save`` that never leaves a half-written file (see :func:`atomic_path`).

    ``previous``: move the file at ``path`` there first, once the new one is complete on disk
    (a kill at any point leaves a whole checkpoint under one of the two names).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        if previous is not None and path.exists():
            with open(tmp, "rb+") as f:  # the new file's bytes on disk before the old one moves
                os.fsync(f.fileno())
            os.replace(path, previous)
    return path


def previous_checkpoint(path: str | os.PathLike) -> Path:
    """Where the checkpoint before ``path`` is kept (``checkpoint.prev.pt`` beside it)."""
    path = Path(path)
    return path.with_name(PREVIOUS_NAME) if path.name == CHECKPOINT_NAME else path


def _read(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise CorruptCheckpointError(
            f"{str(path)!r} is not a readable training checkpoint ({type(exc).__name__}: "
            f"{first}){_fallback_hint(path)}"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CorruptCheckpointError(
            f"{str(path)!r} is not a glidekit training checkpoint (format {CHECKPOINT_FORMAT})"
        )
    return ckpt


def _fallback_hint(path: Path) -> str:
    """The sentence a corrupt checkpoint's error ends with: the previous checkpoint if intact."""
    prev = previous_checkpoint(path)
    if prev == path or not prev.is_file():
        return "; start a new run (a new train.out_dir) or restore the file"
    try:
        step = int(load_checkpoint(prev)["step"])
    except (CorruptCheckpointError, KeyError, TypeError, ValueError):
        return f"; the previous checkpoint {str(prev)!r} is damaged too: start a new run"
    return f"; the previous checkpoint is intact (step {step}): continue with --resume-from {prev}"


def load_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``: tensors and plain containers only).

    With ``verify``, a checkpoint that carries a checksum must match it. Raises
    :class:`FileNotFoundError`, or :class:`~glidekit.checkpoints.CorruptCheckpointError` (one
    line naming the file and, if ``checkpoint.prev.pt`` beside it is intact, offering it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {str(path)!r}")
    ckpt = _read(path)
    recorded = ckpt.get("checksum")
    if verify and recorded is not None and recorded != payload_checksum(ckpt):
        raise CorruptCheckpointError(
            f"{str(path)!r} is corrupt: its checksum does not match its content"
            f"{_fallback_hint(path)}"
        )
    if recorded is None:
        logger.debug("%s carries no checksum (written before checksums): not verified", path)
    return ckpt


def read_checkpoint_overrides(path: str | os.PathLike) -> list[str]:
    """The ``section.key=value`` overrides a checkpoint's run was started with ([] if it
    recorded none or cannot be read: resuming from it reports why). Tensors are memory-mapped,
    not read."""
    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return []
    overrides = ckpt.get("overrides") if isinstance(ckpt, dict) else None
    if not isinstance(overrides, (list, tuple)):
        return []
    return [str(o) for o in overrides]


class RunLock:
    """An exclusive lock on a run folder, held while a training run uses it.

    On POSIX it is ``flock`` on the folder itself: no file is created, and the kernel releases
    it when the process ends, however it ends (a SIGKILL leaves no stale lock). Elsewhere a
    ``filelock`` lock file in the folder. :meth:`acquire` creates the folder if needed and
    raises :class:`~glidekit.train.errors.RunFolderBusyError` at once if another run holds it.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None
        self._filelock: Any = None
        self._created = False

    def acquire(self) -> None:
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            self._acquire_filelock()
            return
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._busy() from None
        except OSError as exc:  # a file system without flock (some network mounts)
            os.close(fd)
            logger.warning("cannot lock %s (%s): running without a run-folder lock", self, exc)
            return
        self._fd = fd

    def _acquire_filelock(self) -> None:
        lock = FileLock(str(self.folder / ".glidekit-train.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise self._busy() from None
        self._filelock = lock

    def _busy(self) -> RunFolderBusyError:
        return RunFolderBusyError(
            f"train.out_dir {str(self.folder)!r} is in use by another training run; wait for "
            "it to end (or stop it), or set train.out_dir to another folder"
        )

    def release(self, *, remove_if_created: bool = False) -> None:
        """Release the lock (idempotent). ``remove_if_created``: also remove the folder if
        :meth:`acquire` created it and it is still empty (a run that failed to start)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock
        lock, self._filelock = self._filelock, None
        if lock is not None:
            lock.release()
        if remove_if_created and self._created:
            self._created = False
            with contextlib.suppress(OSError):  # not empty: leave it
                self.folder.rmdir()

    def __del__(self) -> None:  # a lock left held by a trainer never closed
        with contextlib.suppress(Exception):
            self.release()

    def __str__(self) -> str:
        return str(self.folder)


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
    "CHECKPOINT_NAME",
    "PREVIOUS_NAME",
    "DistInfo",
    "RunLock",
    "all_gather_objects",
    "any_rank",
    "atomic_torch_save",
    "barrier",
    "capture_rng",
    "init_distributed",
    "load_checkpoint",
    "mean_over_ranks",
    "payload_checksum",
    "previous_checkpoint",
    "read_checkpoint_overrides",
    "restore_rng",
    "seed_everything",
    "shutdown_distributed",
]
