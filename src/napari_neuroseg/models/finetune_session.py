"""Fine-tune sessions that survive a crash or a closed viewer (issue 13).

A session is a folder under ``platformdirs.user_data_dir("napari-neuroseg")/sessions``
(``NEUROSEG_SESSIONS_DIR`` overrides it) holding what a human-in-the-loop cycle must not lose::

    session.json        what the session is: task, layer names, voxel size, base model, output
                        name, budget, status ("editing", "training", "stopped", "done", "failed"),
                        the training step of the last checkpoint, timestamps
    image.npy           the image the annotation is drawn on (saved once)
    annotation.npy      the Labels layer being corrected (autosaved)
    mask.npy            the optional "reviewed part" mask
    review.json         the proofreading review queue (``proofread.review.ReviewQueue.to_dict``)
    model/              the fine-tuning output folder: ``checkpoint.pt`` every 25 steps, so a
                        stopped or crashed run resumes from it (``train_iter(..., resume=True)``)

Every file is replaced atomically (:func:`napari_neuroseg.io.atomic.atomic_output`): a crash
during a save leaves the previous version whole. :class:`Autosaver` decides when an edited
annotation is saved (every ``edits`` edits or ``seconds`` after the first unsaved edit).
No Qt here; the Fine-tune dock (``_napari/finetune_widget.py``) drives it.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError

__all__ = ["ENV_VAR", "Autosaver", "Session", "latest_session", "list_sessions", "sessions_dir"]

ENV_VAR = "NEUROSEG_SESSIONS_DIR"
STATE_FILE = "session.json"
FORMAT = "neuroseg-finetune-session"
#: statuses of a session that is not offered for restoring any more
CLOSED = ("discarded",)
ARRAYS = ("image", "annotation", "mask")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sessions_dir() -> Path:
    """The folder holding the sessions (not created here)."""
    from napari_neuroseg.models.registry import user_data_folder

    return user_data_folder(ENV_VAR, "sessions")


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    from napari_neuroseg.io.atomic import atomic_output

    with atomic_output(path) as tmp:
        write(Path(tmp))


class Session:
    """One session folder. Create one with :meth:`create`, open one with :meth:`open`."""

    def __init__(self, path: str | Path, state: dict | None = None):
        self.path = Path(path)
        self.state: dict[str, Any] = dict(state or {})

    def __repr__(self) -> str:
        return f"Session({str(self.path)!r}, status={self.status!r})"

    # ------------------------------------------------------------------ making and opening
    @classmethod
    def create(cls, name: str = "session", root: str | Path | None = None, **state: Any) -> Session:
        """A new, empty session folder ``<root>/<time>-<name>`` with ``state`` in session.json."""
        root = Path(root) if root is not None else sessions_dir()
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        safe = _SAFE.sub("_", str(name)).strip("._") or "session"
        try:
            root.mkdir(parents=True, exist_ok=True)
            path = root / f"{stamp}-{safe[:60]}"
            k = 1
            while path.exists():
                k += 1
                path = root / f"{stamp}-{safe[:60]}-{k}"
            path.mkdir()
        except OSError as err:
            raise NeurosegError(f"cannot create a session folder ({err.strerror or err})", path=root,
                                fix=f"free disk space or set {ENV_VAR} to a writable folder") from err
        s = cls(path, {"format": FORMAT, "created": _now(), "status": "editing", "name": str(name)})
        s.save_state(**state)
        return s

    @classmethod
    def open(cls, path: str | Path) -> Session:
        """The session in ``path``; a NeurosegError if it holds no readable session.json."""
        p = Path(path)
        f = p / STATE_FILE
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError) as err:
            raise NeurosegError(f"not a readable fine-tune session ({err})", path=f,
                                fix="choose another session or discard this folder") from err
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise NeurosegError("not a napari-neuroseg fine-tune session", path=f,
                                fix="choose another session or discard this folder")
        return cls(p, d)

    # ------------------------------------------------------------------ state
    @property
    def status(self) -> str:
        return str(self.state.get("status", "editing"))

    @property
    def model_dir(self) -> Path:
        """The fine-tuning output folder (its ``checkpoint.pt`` is what a resume starts from)."""
        return self.path / "model"

    def save_state(self, **updates: Any) -> None:
        """Merge ``updates`` into the state and write session.json atomically."""
        self.state.update(updates)
        self.state["updated"] = _now()
        text = json.dumps(self.state, indent=1, default=_json_default)
        _write_atomic(self.path / STATE_FILE, lambda tmp: tmp.write_text(text))

    def checkpoint_step(self) -> int | None:
        """The training step of the last checkpoint in :attr:`model_dir` (None: no checkpoint)."""
        if not (self.model_dir / "checkpoint.pt").is_file():
            return None
        try:
            hist = json.loads((self.model_dir / "training.json").read_text()).get("history") or []
            return int(hist[-1]["step"]) if hist else 0
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return int(self.state.get("checkpoint_step") or 0)

    @property
    def can_resume(self) -> bool:
        """Whether a fine-tuning run of this session stopped with a checkpoint and no final model."""
        return self.checkpoint_step() is not None and self.status != "done"

    # ------------------------------------------------------------------ arrays
    def array_path(self, key: str) -> Path:
        if key not in ARRAYS:
            raise ValueError(f"unknown session array {key!r}")
        return self.path / f"{key}.npy"

    def has(self, key: str) -> bool:
        return self.array_path(key).is_file()

    def save_array(self, key: str, data: Any) -> Path:
        """Save ``data`` as ``<key>.npy`` atomically (the previous version stays whole on a crash)."""
        from napari_neuroseg.io.atomic import atomic_save_npy

        arr = np.asarray(data)
        path = self.array_path(key)
        atomic_save_npy(path, arr)
        self.save_state(**{f"{key}_saved": _now(), f"{key}_shape": list(arr.shape), f"{key}_dtype": str(arr.dtype)})
        return path

    def load_array(self, key: str, mmap: bool = False) -> np.ndarray:
        """The saved array ``key`` (never unpickles: a session file cannot execute code)."""
        from napari_neuroseg.io.npy import read_npy

        path = self.array_path(key)
        try:
            return read_npy(path, mmap=mmap)
        except (OSError, ValueError) as err:
            raise NeurosegError(f"the session's {key} cannot be read ({err})", path=path,
                                fix="discard the session (its other files are still in the folder)") from err

    # ------------------------------------------------------------------ review queue
    def save_review(self, queue: Any) -> Path:
        """Save a review queue (a ``ReviewQueue`` or its ``to_dict()``) as review.json."""
        d = queue.to_dict() if hasattr(queue, "to_dict") else dict(queue)
        text = json.dumps(d, indent=1, default=_json_default)
        path = self.path / "review.json"
        _write_atomic(path, lambda tmp: tmp.write_text(text))
        return path

    def load_review(self):
        """The saved review queue (a ``ReviewQueue``) or None."""
        path = self.path / "review.json"
        if not path.is_file():
            return None
        from napari_neuroseg.proofread.review import ReviewQueue

        return ReviewQueue.load(path)

    # ------------------------------------------------------------------ ending
    def discard(self) -> None:
        """Mark the session as not to be offered again (its files stay until :meth:`delete`)."""
        self.save_state(status="discarded")

    def delete(self) -> None:
        from napari_neuroseg.io.atomic import remove_path

        remove_path(self.path)

    def describe(self) -> str:
        """One line for a "restore?" question."""
        st = self.state
        parts = [f"session of {st.get('created', '?')}"]
        if st.get("labels_layer"):
            n = st.get("annotation_objects")
            parts.append(f"annotation '{st['labels_layer']}'" + (f" ({n} objects)" if n is not None else ""))
        if st.get("image_layer"):
            parts.append(f"image '{st['image_layer']}'")
        step = self.checkpoint_step()
        if step is not None:
            parts.append(f"fine-tuning {'finished' if self.status == 'done' else 'stopped'} at step {step}")
        return ", ".join(parts)


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


def list_sessions(root: str | Path | None = None, *, include_closed: bool = False) -> list[Session]:
    """The readable sessions, newest first (unreadable folders are skipped)."""
    root = Path(root) if root is not None else sessions_dir()
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and not p.name.startswith("."):
            try:
                s = Session.open(p)
            except NeurosegError:
                continue
            if include_closed or s.status not in CLOSED:
                out.append(s)
    out.sort(key=lambda s: (str(s.state.get("updated", "")), s.path.name), reverse=True)
    return out


def latest_session(root: str | Path | None = None) -> Session | None:
    """The most recently updated session that was not discarded and holds an annotation."""
    for s in list_sessions(root):
        if s.has("annotation"):
            return s
    return None


class Autosaver:
    """When to save an edited annotation: after ``edits`` edits, or once ``seconds`` have passed
    since the first edit not saved yet (whichever comes first). Plain bookkeeping: the caller
    counts edits (:meth:`note_edit`), asks :meth:`due` (e.g. from a timer) and reports
    :meth:`saved`."""

    def __init__(self, edits: int = 20, seconds: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.edits = max(1, int(edits))
        self.seconds = float(seconds)
        self.clock = clock
        self.pending = 0
        self.first_unsaved: float | None = None
        self.saves = 0

    def note_edit(self, n: int = 1) -> bool:
        """Count ``n`` edits; returns :meth:`due`."""
        if self.pending == 0:
            self.first_unsaved = self.clock()
        self.pending += int(n)
        return self.due()

    def due(self) -> bool:
        if self.pending == 0:
            return False
        if self.pending >= self.edits:
            return True
        return self.first_unsaved is not None and self.clock() - self.first_unsaved >= self.seconds

    def saved(self) -> None:
        self.pending = 0
        self.first_unsaved = None
        self.saves += 1
