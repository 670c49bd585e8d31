"""Atomic output: write to a temporary sibling, rename onto the target only on success.

The one home for "temp file, then rename" in the package: :func:`atomic_output` (any writer that
takes a path: a file or a directory store), and on top of it :func:`atomic_write_file` (a writer
of an open binary file), :func:`atomic_write_bytes`, :func:`atomic_write_text`,
:func:`atomic_write_json`, :func:`atomic_save_npy` and :func:`atomic_save_npz`. Every temporary is named
``.<target name>.tmp-<token>...`` next to its target (:func:`is_temporary`), removed on any
failure, and :func:`clean_temporaries` removes those an earlier crashed process left.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from napari_neuroseg.errors import NeurosegError

__all__ = [
    "TMP_MARK",
    "atomic_output",
    "atomic_save_npy",
    "atomic_save_npz",
    "atomic_write_bytes",
    "atomic_write_file",
    "atomic_write_json",
    "atomic_write_text",
    "clean_temporaries",
    "defer_sigint",
    "is_temporary",
    "json_default",
    "remove_path",
    "replace_path",
]

#: Part of every temporary's name (``.<name>.tmp-<token>``): :func:`clean_temporaries` looks for it.
TMP_MARK = ".tmp-"

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


def is_temporary(path: str | Path) -> bool:
    """True for the name of a temporary (or a moved-aside old directory) of :func:`atomic_output`."""
    name = Path(path).name
    return name.startswith(".") and TMP_MARK in name


def clean_temporaries(folder: str | Path) -> int:
    """Remove leftover temporaries of interrupted writes directly in ``folder``; returns how many.

    Call it only where no other process may be writing into ``folder`` at the same time (e.g.
    under the batch run lock): a running writer's temporary looks the same.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.iterdir():
        if is_temporary(p):
            remove_path(p)
            n += 1
    return n


def replace_path(src: str | Path, target: str | Path) -> None:
    """Move the finished file or folder ``src`` onto ``target`` (same file system).

    A file replaces ``target`` in one ``os.replace``. A folder cannot: an existing ``target``
    folder is moved aside (a temporary name), ``src`` moved in, and the old one removed; if the
    second move fails the old folder is put back.
    """
    src, target = Path(src), Path(target)
    if target.is_dir() and not target.is_symlink():
        backup = target.parent / f".{target.name}{TMP_MARK}old-{uuid.uuid4().hex[:8]}"
        os.replace(target, backup)
        try:
            os.replace(src, target)
        except BaseException:
            os.replace(backup, target)
            raise
        remove_path(backup)
    else:
        os.replace(src, target)


@contextlib.contextmanager
def atomic_output(target: str | Path, *, parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target``.

    Works for single files and for directory stores (Zarr): whatever the body writes at the
    yielded path (a file or a folder) is renamed onto ``target`` when the body finishes without
    an exception. On any exception (including ``KeyboardInterrupt`` and a generator's
    ``GeneratorExit``) the temporary output is removed and ``target`` is left exactly as it was
    (absent, or the previous version). ``parents``: create missing parent folders first
    (otherwise a missing folder is a :class:`NeurosegError`).
    """
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    if parents:
        parent.mkdir(parents=True, exist_ok=True)
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
    tmp = parent / f".{target.name}{TMP_MARK}{token}{_suffixes(target.name)}"
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
            replace_path(tmp, target)
        except OSError as err:
            remove_path(tmp)
            raise NeurosegError(
                f"could not move the finished output into place ({err.strerror or err})",
                path=target,
                fix="check permissions and that the path is not open in another program",
            ) from err
        if sig.interrupted:  # Ctrl-C during the rename: the output is complete, stop now
            raise KeyboardInterrupt


def atomic_write_file(
    path: str | Path, write: Callable[[IO[bytes]], Any], *, fsync: bool = True, parents: bool = False
) -> Path:
    """Call ``write(fh)`` on a new binary file and move it onto ``path`` when it returns.

    ``fsync``: flush the data to the disk before the rename (the file survives a power loss);
    leave it off for scratch files that are rewritten on resume anyway. Returns ``path``.
    """
    path = Path(path)
    with atomic_output(path, parents=parents) as tmp, open(tmp, "wb") as fh:
        write(fh)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    return path


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True, parents: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_file`)."""
    return atomic_write_file(path, lambda fh: fh.write(data), fsync=fsync, parents=parents)


def atomic_write_text(
    path: str | Path, text: str, *, encoding: str = "utf-8", fsync: bool = True, parents: bool = False
) -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation)."""
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync, parents=parents)


def json_default(o: Any) -> Any:
    """``json.dump``'s ``default`` for numpy scalars/arrays and paths (anything else: ``str``)."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def atomic_write_json(
    path: str | Path, obj: Any, *, indent: int | None = 1, fsync: bool = True, parents: bool = False
) -> Path:
    """Write ``obj`` as JSON atomically (numpy values and paths allowed, see :func:`json_default`)."""
    text = json.dumps(obj, indent=indent, default=json_default)
    return atomic_write_text(path, text, fsync=fsync, parents=parents)


def atomic_save_npy(path: str | Path, arr: Any, *, fsync: bool = False, parents: bool = False) -> Path:
    """``numpy.save`` atomically (a reader never sees a torn ``.npy``; no pickles are written)."""
    import numpy as np

    return atomic_write_file(
        path, lambda fh: np.save(fh, np.ascontiguousarray(arr), allow_pickle=False), fsync=fsync, parents=parents
    )


def atomic_save_npz(path: str | Path, arrays: dict[str, Any], *, fsync: bool = False, parents: bool = False) -> Path:
    """``numpy.savez`` of ``arrays`` (name -> array) atomically, at exactly ``path`` (no ``.npz``
    is appended)."""
    import numpy as np

    return atomic_write_file(path, lambda fh: np.savez(fh, **arrays), fsync=fsync, parents=parents)
