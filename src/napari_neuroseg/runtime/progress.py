"""The progress/cancel protocol shared by every long job.

A long job is a generator that yields :class:`Progress` after each step (tile, file, block,
instance) and *returns* its result. A caller cancels by simply not resuming it (``gen.close()``);
napari's generator workers do exactly that on ``worker.quit()``. Run one to completion without a
GUI with :func:`run_to_completion`.

Progress rule for GUIs: a job may yield as often as it likes (one step per object is fine);
whoever shows the steps must rate-limit them by time, not by count. :func:`throttle` does that in
the worker thread (at most one ``Progress`` per :data:`PROGRESS_INTERVAL`, the first and the last
always), so a job with thousands of tiny steps costs the main thread ~10 updates a second.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

#: seconds between two forwarded progress steps (about 10 updates a second)
PROGRESS_INTERVAL = 0.1
#: steps that start a new phase of a job (:func:`phase_of`) forwarded at once, up to this many
#: in a burst, then one per ``interval`` (a token bucket): the step before a long computation
#: says what it is ("post-processing" right after the last network tile)
PHASE_BURST = 4


@dataclass(frozen=True)
class Progress:
    """One step of a long job: ``step`` of ``total`` done, with a short message."""

    step: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return 1.0 if self.total <= 0 else min(1.0, self.step / self.total)


ProgressGenerator = Generator[Progress, None, T]


class StepClock:
    """The time left in one long step of a job (NMS over its candidates, a file's blocks),
    extrapolated linearly from the step's progress so far: ``elapsed * (1 - f) / f`` for the
    fraction ``f`` done. No estimate before :attr:`min_seconds` have passed and
    :attr:`min_fraction` is done (a first chunk's rate says little). The clock starts at the first
    call (or :meth:`start`)."""

    min_seconds = 1.0
    min_fraction = 0.02

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._t0: float | None = None

    def start(self) -> StepClock:
        self._t0 = self._clock()
        return self

    def left(self, step: float, total: float) -> float | None:
        """Seconds left (None: no estimate yet)."""
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        f = 0.0 if total <= 0 else min(1.0, max(0.0, step / total))
        elapsed = now - self._t0
        if elapsed < self.min_seconds or f < self.min_fraction:
            return None
        return elapsed * (1.0 - f) / f

    def describe(self, message: str, step: int, total: int) -> str:
        """``message`` with the step's percentage done and the time left:
        ``"merging (57 %) — about 0:05 left"``."""
        return f"{message} ({100 * step // max(total, 1)} %){self.text(step, total)}"

    def text(self, step: float, total: float) -> str:
        """``" — about 1:05 left"`` (``""`` while there is no estimate)."""
        left = self.left(step, total)
        if left is None:
            return ""
        sec = round(left)
        return f" — about {sec // 3600:d}:{sec % 3600 // 60:02d}:{sec % 60:02d} left" if sec >= 3600 else \
            f" — about {sec // 60:d}:{sec % 60:02d} left"


def carries_data(item: Any) -> bool:
    """Whether a yielded item holds data for the caller beyond a step (e.g. a batch file's summary
    ``record``): such items are never skipped by rate limiting, even when they are ``Progress``."""
    return getattr(item, "record", None) is not None


class Cancelled(Exception):
    """Raised by :func:`run_to_completion` when its ``should_stop`` callback says so."""


def run_to_completion(
    gen: Generator[Progress, Any, T],
    callback: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> T:
    """Drive a progress generator to its end and return its result.

    ``callback`` sees every :class:`Progress`; if ``should_stop()`` becomes true between steps the
    generator is closed (its ``finally`` blocks run) and :class:`Cancelled` is raised.
    """
    try:
        while True:
            item = next(gen)
            if callback is not None:
                callback(item)
            if should_stop is not None and should_stop():
                gen.close()
                raise Cancelled("cancelled between steps")
    except StopIteration as stop:
        return stop.value


def relay(gen: Generator[Any, Any, T], to_progress: Callable[[Any], Any]) -> Generator[Any, None, T]:
    """Forward each item of a sub-job ``gen`` as ``to_progress(item)`` (e.g. rescaled into the
    caller's steps) and return the sub-job's result; ``gen`` is closed when the relay ends or is
    closed. Use as ``result = yield from relay(gen, fn)``."""
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            yield to_progress(item)
    finally:
        gen.close()


_DIGITS = re.compile(r"\d+")


def phase_of(item: Any) -> str | None:
    """The phase a progress step announces: its message with every number replaced by ``#``
    ("network: tile 3/12" and "network: tile 4/12" are one phase, "post-processing" another);
    None without a message."""
    msg = getattr(item, "message", None)
    return None if msg is None else _DIGITS.sub("#", str(msg))


def throttle(
    gen: Generator[Any, Any, T],
    interval: float = PROGRESS_INTERVAL,
    should_stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    is_progress: Callable[[Any], bool] | None = None,
) -> Generator[Any, None, T]:
    """Forward the items of a progress generator, :class:`Progress` ones at most every
    ``interval`` seconds, and return its result.

    The first ``Progress`` is forwarded at once, later ones only when ``interval`` has passed
    since the last forwarded one; a skipped step is not lost for good: the latest one is forwarded
    before the result (so a bar ends on the job's last step). A step that starts a new phase
    (:func:`phase_of` differs from the last forwarded step's) is forwarded at once too, up to
    :data:`PHASE_BURST` in a row and then one per ``interval``: a job yields it right before that
    phase's work, and held back it would not be shown until the work is done (the Neurons dock
    said "network: tile 1/1" through 3-13 s of post-processing). Items that are not ``Progress``
    (data for the caller; ``is_progress`` decides, default: instances of ``Progress``) and steps
    that :func:`carries_data` are always forwarded. ``should_stop()`` is asked after each
    skipped step: when it says true the step is forwarded at once, so a consumer that cancels at
    a ``yield`` (napari's ``worker.quit()``) still stops within one step of the job. Closing the
    throttle closes ``gen`` (its ``finally`` blocks run).
    """
    last: float | None = None
    last_phase: str | None = None
    tokens, t_tokens = float(PHASE_BURST), None
    pending: Any = None
    step_test = is_progress if is_progress is not None else (lambda x: isinstance(x, Progress))

    def skippable(x: Any) -> bool:  # a plain step; data-carrying steps are always forwarded
        return step_test(x) and not carries_data(x)
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                if pending is not None:
                    yield pending
                return stop.value
            if not skippable(item):
                yield item
                continue
            now = clock()
            if t_tokens is not None and interval > 0:
                tokens = min(float(PHASE_BURST), tokens + (now - t_tokens) / interval)
            t_tokens = now
            phase = phase_of(item)
            new_phase = last is not None and phase != last_phase and tokens >= 1
            if last is None or now - last >= interval or new_phase:
                if new_phase and now - last < interval:
                    tokens -= 1
                pending = None
                last, last_phase = now, phase
                yield item
            elif should_stop is not None and should_stop():
                pending = None
                yield item
            else:
                pending = item
    finally:
        gen.close()
