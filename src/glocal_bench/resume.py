"""``OUT/checkpoint.pt``: what an interrupted ``glocal run`` / ``compare`` has done, to ``--resume`` it.

The file holds the command's configuration (task, strategies, seeds, settings), the result records
of the runs already finished and the saved state of the run in progress (see
``experiment.Checkpointing``). It is replaced atomically at every save, so a process killed at any
moment leaves the previous complete checkpoint, and it is loaded with ``torch.load(weights_only=True)``
(no code runs on load). It is removed once the command's results are written.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from .atomic import write_bytes

__all__ = ["FILE", "CheckpointError", "RunCheckpoint"]

FILE = "checkpoint.pt"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, unreadable, written by another command); one line."""


class RunCheckpoint:
    """The checkpoint of one command writing to ``folder``; ``config`` must match to resume."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.path = Path(folder) / FILE
        self.config = config
        self.records: list[dict[str, Any]] = []
        #: {"index": position of the run in progress, "state": its saved state} or None
        self.current: dict[str, Any] | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> None:
        """Read the checkpoint; raise CheckpointError if it is missing, unreadable or another command's."""
        if not self.path.exists():
            raise CheckpointError(f"--resume: no checkpoint {self.path} (nothing to resume)")
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(f"--resume: cannot read {self.path} ({type(error).__name__})") from None
        if not isinstance(data, dict) or data.get("version") != VERSION or "config" not in data:
            raise CheckpointError(f"--resume: {self.path} is not a glocal checkpoint of this version")
        stored = data["config"]
        if stored != self.config:
            differs = sorted(k for k in set(stored) | set(self.config) if stored.get(k) != self.config.get(k))
            raise CheckpointError(f"--resume: {self.path} was written by a different command "
                                  f"(differs in {', '.join(differs)}); rerun that command with --resume")
        self.records = list(data["records"])
        self.current = data["current"]

    def save(self, current: dict[str, Any] | None = None) -> None:
        """Atomically write the finished records and ``current`` (the run in progress, or None)."""
        self.current = current
        buffer = io.BytesIO()
        torch.save({"version": VERSION, "config": self.config, "records": self.records, "current": current},
                   buffer)
        write_bytes(self.path, buffer.getvalue())

    def remove(self) -> None:
        """Delete the checkpoint, and temporary files of saves that a kill interrupted."""
        self.path.unlink(missing_ok=True)
        for stale in self.path.parent.glob(f".{FILE}.*.tmp"):
            stale.unlink(missing_ok=True)
