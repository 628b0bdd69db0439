"""Write glocal's records as TensorBoard event files (``torch.utils.tensorboard``).

Install with ``pip install "glocal[tensorboard]"``. Every scalar of a record becomes
``add_scalar(tag, value, record.step)``; a window's fallback reason becomes text under
``window/reason``. Use it as a listener: ``Tuner(..., listeners=[TensorBoardListener("runs/x")])``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..records import Record

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "glocal.integrations.tensorboard needs the tensorboard package: pip install \"glocal[tensorboard]\""
    ) from error

__all__ = ["TensorBoardListener"]


class TensorBoardListener:
    """A record listener that writes one TensorBoard run into ``log_dir``.

    Use it as a context manager or call ``close()`` at the end (``flush()`` writes pending events).
    """

    def __init__(self, log_dir: str | Path, **writer_options: Any) -> None:
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), **writer_options)

    def __call__(self, record: Record) -> None:
        for tag, value in record.scalars.items():
            self.writer.add_scalar(tag, value, record.step)
        reason = record.details.get("reason")
        if record.kind == "window" and reason:
            self.writer.add_text("window/reason", str(reason), record.step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
