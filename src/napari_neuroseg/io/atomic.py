"""Atomic output: write to a temporary sibling, rename onto the target only on success."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from napari_neuroseg.errors import NeurosegError

__all__ = ["atomic_output", "remove_path"]


def remove_path(path: str | Path) -> None:
    """Remove a file or a directory tree if it exists (no error if it does not)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _suffixes(name: str) -> str:
    """All suffixes of a file name (``.ome.tif``), kept so extension-based writers still work."""
    s = "".join(Path(name).suffixes)
    return s if len(s) <= 16 else Path(name).suffix


@contextlib.contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target``.

    Works for single files and for directory stores (Zarr): whatever the body writes at the
    yielded path (a file or a folder) is renamed onto ``target`` when the body finishes without
    an exception. On any exception (including ``KeyboardInterrupt``) the temporary output is
    removed and ``target`` is left exactly as it was (absent, or the previous version).
    """
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise NeurosegError(
            "the output folder does not exist",
            path=parent,
            fix="create the folder first or choose another output path",
        )
    if not os.access(parent, os.W_OK):
        raise NeurosegError(
            "the output folder is not writable",
            path=parent,
            fix="choose a folder you can write to",
        )
    token = uuid.uuid4().hex[:8]
    tmp = parent / f".{target.name}.tmp-{token}{_suffixes(target.name)}"
    try:
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise
    if not tmp.exists():
        raise NeurosegError("the writer produced no output", path=target, fix="report this as a bug")
    try:
        if target.is_dir() and not target.is_symlink():
            # A directory cannot be replaced in one os.replace: move the old one aside first.
            backup = parent / f".{target.name}.old-{token}"
            os.replace(target, backup)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(backup, target)
                raise
            remove_path(backup)
        else:
            os.replace(tmp, target)
    except OSError as err:
        remove_path(tmp)
        raise NeurosegError(
            f"could not move the finished output into place ({err.strerror or err})",
            path=target,
            fix="check permissions and that the path is not open in another program",
        ) from err
