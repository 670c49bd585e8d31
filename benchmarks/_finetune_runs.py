"""What the two fine-tuning benchmarks (``bench_finetune_nuclei.py``, ``bench_finetune_neurons.py``)
share: running a ``neuroseg`` command, the resumable ``results.json`` and the training runs,
started one after the other or all at once, each logging to its own file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def neuroseg(*args: str) -> str:
    """Run ``python -m napari_neuroseg.cli ARGS`` and return its output (exit with it on failure)."""
    cmd = [sys.executable, "-m", "napari_neuroseg.cli", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def load_results(work: Path) -> tuple[dict, Callable[[], None]]:
    """The results so far (``work/results.json``, empty at first) and a function that saves them."""
    path = work / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}

    def save() -> None:
        path.write_text(json.dumps(results, indent=1))

    return results, save


@dataclass
class TrainingRun:
    """One ``neuroseg train`` child process (output in ``log``)."""

    proc: subprocess.Popen
    log: Path
    start: float  # perf_counter
    load_avg_start: float
    end: float | None = None

    def wait(self) -> float:
        """Wait for the run; its wall seconds. Exits naming the log if the run failed."""
        if self.proc.wait() != 0:
            raise SystemExit(f"training failed: see {self.log}")
        if self.end is None:
            self.end = time.perf_counter()
        return self.end - self.start


def start_training(args: list[str], log: Path, *, parallel: bool) -> TrainingRun:
    """Start ``neuroseg train ARGS`` with its output in ``log``; without ``parallel`` wait for it
    (so the next run starts after it and its wall time is its own)."""
    cmd = [sys.executable, "-m", "napari_neuroseg.cli", "train", *args]
    fh = open(log, "w")  # noqa: SIM115 - handed to the child process
    run = TrainingRun(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT), log, time.perf_counter(),
                      os.getloadavg()[0])
    if not parallel:
        run.wait()
    return run
