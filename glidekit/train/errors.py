"""What ``glidekit train`` raises when a run cannot go on (besides ``ValueError`` for bad config).

* :class:`RunFolderBusyError`: another training run holds ``train.out_dir`` (the CLI: one line,
  exit code 2);
* :class:`NonFiniteLossError`: the loss (or the gradients) stopped being finite; the run stops
  before the optimizer step, so the last checkpoint on disk stays the last good one and no
  export is written (the CLI: one line, exit code 1);
* a corrupt ``checkpoint.pt`` is a :class:`glidekit.checkpoints.CorruptCheckpointError`.
"""

from __future__ import annotations


class RunFolderBusyError(RuntimeError):
    """``train.out_dir`` is locked by another training run (of this or another process)."""


class NonFiniteLossError(FloatingPointError):
    """The training loss or gradient norm is NaN or infinite; ``step`` is the step it hit."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


__all__ = ["NonFiniteLossError", "RunFolderBusyError"]
