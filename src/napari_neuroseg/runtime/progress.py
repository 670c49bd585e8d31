"""The progress/cancel protocol shared by every long job.

A long job is a generator that yields :class:`Progress` after each step (tile, file, block,
instance) and *returns* its result. A caller cancels by simply not resuming it (``gen.close()``);
napari's generator workers do exactly that on ``worker.quit()``. Run one to completion without a
GUI with :func:`run_to_completion`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


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
