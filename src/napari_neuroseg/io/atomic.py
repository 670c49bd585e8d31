"""Atomic output: write to a temporary sibling, rename onto the target only on success."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from napari_neuroseg.errors import NeurosegError

__all__ = ["atomic_output", "defer_sigint", "remove_path"]

#: errnos that mean "no room left" (full disk, quota).
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


class _Deferred:
    interrupted = False


_active = threading.local()


@contextlib.contextmanager
def defer_sigint() -> Iterator[_Deferred]:
    """Hold back Ctrl-C (SIGINT) while the body runs; the caller checks ``.interrupted`` after.

    Writers must not be interrupted half way: a ``KeyboardInterrupt`` raised inside h5py is
    swallowed by its C code (the write goes on and the program exits 0), and one raised while
    zarr's I/O thread still writes chunks lets that thread recreate the temporary folder after it
    was removed. So the first Ctrl-C is only recorded and honoured
    when the body ends (the CLI then prints one line and exits 130); a second Ctrl-C interrupts
    at once. Nested uses share one state. Only in the main thread and only when
    Python's default SIGINT handler is installed (napari and other hosts keep theirs).
    """
    outer = getattr(_active, "state", None)
    if outer is not None:  # nested (a writer inside a writer): one shared state
        yield outer
        return
    state = _Deferred()
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield state
        return

    def handler(signum, frame):  # noqa: ARG001
        if state.interrupted:  # second Ctrl-C: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        state.interrupted = True

    signal.signal(signal.SIGINT, handler)
    _active.state = state
    try:
        yield state
    finally:
        _active.state = None
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
    with defer_sigint() as sig:
        try:
            yield tmp
        except BaseException as err:
            remove_path(tmp)
            if isinstance(err, OSError) and err.errno in _NO_SPACE:
                raise NeurosegError(
                    f"no space left to write the output ({err.strerror or err}); nothing was written",
                    path=target,
                    fix="free some space or write to another disk",
                ) from err
            raise
        if sig.interrupted:
            remove_path(tmp)
            raise KeyboardInterrupt
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
        if sig.interrupted:  # Ctrl-C during the rename: the output is complete, stop now
            raise KeyboardInterrupt
