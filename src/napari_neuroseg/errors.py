"""The project's error type: a message that names the problem and the fix."""

from __future__ import annotations

from pathlib import Path


class NeurosegError(ValueError):
    """A user-facing error: what went wrong, where, and what to do about it.

    The CLI prints ``str(err)`` as one line and exits non-zero; the napari layer shows it as a
    notification. Subclasses ``ValueError`` so callers that expect bad-input errors still work.
    """

    def __init__(self, problem: str, *, path: str | Path | None = None, fix: str | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.fix = fix
        parts = []
        if self.path is not None:
            parts.append(f"{self.path}: ")
        parts.append(problem.rstrip("."))
        if fix:
            parts.append(f". Fix: {fix.rstrip('.')}")
        super().__init__("".join(parts) + ".")
