"""Crash-safe output files: write a temporary file beside the target, fsync it, then rename it over.

``os.replace`` within one folder is atomic, so a reader (or a later run) sees either the old
complete file or the new complete file, never a truncated one, whatever kills the writer
(kill -9, a full disk, a file-size limit). Also: ``check_folder`` validates an output folder
before any work is done, so that a bad ``--out`` costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["OutputError", "check_folder", "replacing", "write_bytes", "write_text"]


class OutputError(OSError):
    """An output folder or file that cannot be written (message: one line naming the path)."""


def _umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """``with replacing(path) as f: f.write(...)``: ``path`` is replaced only if the block completes.

    The data goes to a hidden temporary file in the same folder (same filesystem, so the rename is
    atomic), which is flushed and fsynced before ``os.replace``; on any error it is removed and the
    previous ``path`` (if any) is left untouched. ``mode`` is "wb" or "w" (UTF-8 text).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode={mode!r}: expected 'wb' or 'w'")
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files: give the mode open() would
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(target.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replace ``path`` by ``data``."""
    with replacing(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically replace ``path`` by ``text`` (UTF-8)."""
    return write_bytes(path, text.encode("utf-8"))


def check_folder(folder: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Create ``folder`` if needed and prove it writable (a probe file is created and removed).

    Raises OutputError with a one-line message naming ``flag`` and the folder: an existing file, a
    path under a file, no permission, a read-only filesystem, a full disk.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".glocal-probe-") as probe:
            probe.write(b"ok")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise OutputError(f"{flag} {path}: not a writable folder ({error.strerror or error})") from None
    return path
