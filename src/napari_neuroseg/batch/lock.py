"""A lock file that keeps two batch runs from writing into one output folder at the same time.

:class:`RunLock` creates ``<folder>/.neuroseg-batch.lock`` (or any lock path) with
``O_CREAT | O_EXCL`` and writes the owner into it: pid, host, the process start time and the
run's start time. A second run that finds the lock **refuses** (it does not wait): it raises a
:class:`~napari_neuroseg.errors.NeurosegError` naming the other run, the folder and the fix.

A lock is *stale* — and taken over — when its owner ran on this host and that process is gone
(its pid is not alive, or the pid now belongs to a process started later: the pid was reused).
A lock written on another host (shared file system) is never judged stale from here; the message
then says how to remove it when no run is active. The lock is released by :meth:`release`
(``finally`` of the run: normal exit, error, cancel/Ctrl-C); a run killed with SIGKILL leaves a
stale lock, which the next run takes over.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from napari_neuroseg.errors import NeurosegError

LOCK_NAME = ".neuroseg-batch.lock"
#: a lock file whose content cannot be read yet (its owner is between create and write) is
#: re-read for this long before it is judged by its age
_PARTIAL_WAIT_S = 2.0
#: an unreadable lock file older than this is stale (its owner died between create and write)
_PARTIAL_STALE_S = 30.0


def _process_started(pid: int) -> float | None:
    """The start time (epoch seconds) of process ``pid``; None when it does not exist (or is a
    zombie); 0.0 when it exists but cannot be inspected."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:  # AccessDenied and the like: it exists
        return 0.0


def _owner() -> dict[str, Any]:
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "process_started": _process_started(pid),
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "token": uuid.uuid4().hex,
    }


def owner_alive(info: dict[str, Any]) -> bool | None:
    """True/False for a lock written on this host; None when that cannot be told (other host)."""
    if info.get("host") != socket.gethostname():
        return None
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    started = _process_started(pid)
    if started is None:
        return False
    recorded = info.get("process_started")
    if started and isinstance(recorded, (int, float)) and recorded and abs(started - recorded) > 2.0:
        return False  # the pid was reused by a later process
    return True


class RunLock:
    """An exclusive lock file; use :meth:`acquire` (or ``with RunLock(path, what=...)``)."""

    def __init__(self, path: str | Path, *, what: str = "neuroseg batch", folder: str | Path | None = None):
        self.path = Path(path)
        self.what = what
        self.folder = Path(folder) if folder is not None else self.path.parent
        self.info: dict[str, Any] | None = None

    @classmethod
    def for_folder(cls, folder: str | Path) -> RunLock:
        folder = Path(folder)
        return cls(folder / LOCK_NAME, folder=folder)

    # -- acquiring ------------------------------------------------------------------------
    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`NeurosegError` when another live run holds it."""
        if self.info is not None:
            return self
        info = _owner()
        data = json.dumps({**info, "what": self.what, "folder": str(self.folder)}).encode()
        for _attempt in range(20):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read_other()
                if other is None:
                    continue  # it was released (or taken over) meanwhile: try again
                if self._stale(other):
                    self._break(other)
                    continue
                raise self._busy_error(other) from None
            except OSError as err:
                raise NeurosegError(
                    f"cannot create the lock file ({err.strerror or err})", path=self.path,
                    fix="check that the output folder is writable",
                ) from err
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.info = info
            return self
        raise NeurosegError(
            "cannot take the lock file: other runs keep creating and removing it", path=self.path,
            fix="wait until the other neuroseg batch runs on this folder have ended, or use another -o",
        )

    def _read_other(self) -> dict[str, Any] | None:
        """The holder's info; ``{}`` for a lock whose content stays unreadable (judged by age);
        None when the lock file disappeared."""
        t0 = time.monotonic()
        while True:
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                return None
            except OSError:
                text = ""
            try:
                info = json.loads(text)
                if isinstance(info, dict) and "pid" in info:
                    return info
            except ValueError:
                pass
            if time.monotonic() - t0 > _PARTIAL_WAIT_S:
                return {}
            time.sleep(0.05)

    def _stale(self, other: dict[str, Any]) -> bool:
        if not other:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return True
            return age > _PARTIAL_STALE_S
        return owner_alive(other) is False

    def _break(self, other: dict[str, Any]) -> None:
        """Remove a stale lock; of several runs doing this at once, one rename wins and the
        others find the file gone (and retry the exclusive create)."""
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        # Another run might have replaced the stale lock by its own live one in between: put a
        # live lock back rather than deleting it.
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {}
        if moved and other and moved.get("token") != other.get("token") and owner_alive(moved) is not False:
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        try:
            aside.unlink()
        except OSError:
            pass

    def _busy_error(self, other: dict[str, Any]) -> NeurosegError:
        if not other:
            return NeurosegError(
                f"another {self.what} is starting to write to {self.folder} (its lock file is being written)",
                path=self.path, fix="wait for it or use another -o",
            )
        who = f"pid {other.get('pid')}"
        if other.get("host") != socket.gethostname():
            who += f" on host {other.get('host')}"
        fix = "wait for it or use another -o"
        if owner_alive(other) is None:
            fix += f" (if no run is active on host {other.get('host')}, delete {self.path})"
        return NeurosegError(
            f"another {other.get('what') or self.what} ({who}, started {other.get('started')}) is writing to "
            f"{self.folder}", fix=fix,
        )

    # -- releasing ------------------------------------------------------------------------
    def release(self) -> None:
        """Remove the lock file if it is still ours (idempotent)."""
        if self.info is None:
            return
        try:
            current = json.loads(self.path.read_text())
        except (OSError, ValueError):
            current = None
        if isinstance(current, dict) and current.get("token") == self.info["token"]:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self.info = None

    @property
    def held(self) -> bool:
        return self.info is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
