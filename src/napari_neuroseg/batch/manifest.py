"""The run manifest: what was run, with what, how long it took and what failed.

``OUTDIR/neuroseg-batch-<task>.json`` records the task, its parameters (and their hash), the
model, package versions, the engine, and one entry per input. An entry with ``status: "done"``
is written only *after* the output was renamed into place, so on ``--resume`` an input is
skipped exactly when its entry is ``done`` with the same parameter hash and its output exists.
The manifest itself is replaced atomically after every file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as md
import json
import platform
from pathlib import Path
from typing import Any

from napari_neuroseg.io.atomic import atomic_write_json

_PACKAGES = ("numpy", "scipy", "scikit-image", "dask", "distributed", "zarr", "tifffile", "h5py", "torch", "stardist")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str | None]:
    from napari_neuroseg import __version__

    out: dict[str, str | None] = {"napari-neuroseg": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def params_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Manifest:
    """Load/update the manifest of one output folder and task."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = path
        self.data = data

    @staticmethod
    def path_for(outdir: str | Path, task: str) -> Path:
        return Path(outdir) / f"neuroseg-batch-{task}.json"

    @staticmethod
    def _load(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("entries"), dict) else None

    @classmethod
    def outputs_in(cls, path: str | Path) -> list[str]:
        """Every output path a manifest file knows: its done entries' and earlier runs' (``outputs``)."""
        data = cls._load(Path(path))
        if data is None:
            return []
        out = [str(o) for o in data.get("outputs", []) if isinstance(o, str)]
        for e in data["entries"].values():
            if isinstance(e, dict) and e.get("status") == "done" and isinstance(e.get("output"), str) and e["output"]:
                out.append(e["output"])
        return out

    @classmethod
    def open(cls, outdir: str | Path, task: str, *, resume: bool) -> Manifest:
        """The existing manifest when resuming (if readable), else a fresh one that still lists
        the outputs earlier runs wrote (``outputs``), so that they are never taken for inputs."""
        path = cls.path_for(outdir, task)
        old = cls._load(path) if path.exists() else None
        if resume and old is not None:
            return cls(path, old)
        fresh: dict[str, Any] = {"format": "napari-neuroseg batch manifest", "version": 1, "entries": {}}
        if old is not None:
            fresh["outputs"] = sorted(set(cls.outputs_in(path)))
        return cls(path, fresh)

    def begin(self, **settings: Any) -> None:
        """Record the run settings (task, params, model, engine, format...) and versions."""
        runs = self.data.setdefault("runs", [])
        runs.append({"started": now(), **{k: settings[k] for k in ("engine",) if k in settings}})
        self.data.update({k: v for k, v in settings.items() if k != "engine"})
        self.data["versions"] = versions()
        self.save()

    def is_complete(self, name: str, phash: str, target: Path) -> bool:
        e = self.data["entries"].get(name)
        return bool(e) and e.get("status") == "done" and e.get("params_hash") == phash and Path(target).exists()

    def record(self, name: str, entry: dict[str, Any]) -> None:
        self.data["entries"][name] = {**entry, "finished": now()}
        self.save()

    def finish(self, summary: dict[str, Any]) -> None:
        if self.data.get("runs"):
            self.data["runs"][-1].update({"finished": now(), **summary})
        self.save()

    def save(self) -> None:
        self.data["updated"] = now()
        atomic_write_json(self.path, self.data)
