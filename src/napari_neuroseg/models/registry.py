"""The user model folder: fine-tuned models registered by name.

Models live in ``platformdirs.user_data_dir("napari-neuroseg")/models`` (``NEUROSEG_MODELS_DIR``
overrides it, e.g. for tests), one folder per model holding the model files (a StarDist-3D model
folder, or a neuron model's ``model.pt``) and ``neuroseg-model.json``::

    {"name": ..., "kind": "nuclei" | "neurons", "file": "" | "model.pt", "source": ...,
     "voxel_size": [z, y, x] | null, "scores": {...}, "created": ...}

Shipped models have fixed names: ``neuroseg_nuclei`` and ``neuroseg_neurons``. :func:`resolve`
turns a name (shipped or registered) or a path into a path; :func:`list_models` lists them all.
No torch here.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.atomic import atomic_output

__all__ = [
    "ENTRY_FILE",
    "ENV_VAR",
    "SHIPPED",
    "list_models",
    "lookup",
    "model_names",
    "models_dir",
    "notify_changed",
    "on_change",
    "register_model",
    "remove_listener",
    "resolve_neuron_model",
]

ENV_VAR = "NEUROSEG_MODELS_DIR"
ENTRY_FILE = "neuroseg-model.json"
KINDS = ("nuclei", "neurons")
#: names of the shipped models and their kind
SHIPPED = {"neuroseg_nuclei": "nuclei", "neuroseg_neurons": "neurons"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def user_data_folder(env_var: str, name: str) -> Path:
    """The folder ``$env_var`` names, else ``name`` in the user data folder of napari-neuroseg
    (``platformdirs``); not created here. The one rule for the user model and session folders."""
    env = os.environ.get(env_var)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-neuroseg")) / name


def models_dir() -> Path:
    """The user model folder (not created here)."""
    return user_data_folder(ENV_VAR, "models")


#: Where the shipped models lie inside the package. Their packages take these paths from here
#: (``stardist3d.pretrained.BUNDLED_DIR``, ``neurons.model.DEFAULT_MODEL``), so finding a shipped
#: model's file (e.g. when a dock opens) imports neither the model code nor numba nor torch.
_MODELS_DIR = Path(__file__).resolve().parent
SHIPPED_NUCLEI_DIR = _MODELS_DIR / "stardist3d" / "pretrained"
SHIPPED_NEURONS_FILE = _MODELS_DIR / "neurons" / "weights" / "neurons_default.pt"


def _shipped_path(name: str) -> Path:
    return SHIPPED_NEURONS_FILE if name == "neuroseg_neurons" else SHIPPED_NUCLEI_DIR / name


def _read_entry(folder: Path) -> dict | None:
    f = folder / ENTRY_FILE
    try:
        d = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or d.get("kind") not in KINDS:
        return None
    rel = str(d.get("file") or "")
    if rel and (Path(rel).is_absolute() or ".." in Path(rel).parts):
        return None  # an entry never points outside its folder
    d["name"] = folder.name
    d["path"] = str(folder / rel) if rel else str(folder)
    return d


def lookup(name: str) -> dict | None:
    """The registry entry of a registered model ``name`` (with its ``path``), or None."""
    s = str(name)
    if not _NAME.match(s):
        return None
    folder = models_dir() / s
    return _read_entry(folder) if folder.is_dir() else None


def list_models(include_shipped: bool = True) -> list[dict[str, Any]]:
    """Shipped models (if ``include_shipped``) then registered ones, each a dict with ``name``,
    ``kind``, ``path``, ``voxel_size``, ``scores`` (and ``shipped``)."""
    out: list[dict[str, Any]] = []
    if include_shipped:
        for name, kind in SHIPPED.items():
            p = _shipped_path(name)
            if p.exists():
                out.append({"name": name, "kind": kind, "path": str(p), "voxel_size": _shipped_voxel_size(name, p),
                            "scores": {}, "shipped": True})
    root = models_dir()
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.is_dir() and not folder.name.startswith("."):
                d = _read_entry(folder)
                if d is not None:
                    d["shipped"] = False
                    out.append(d)
    return out


def _shipped_voxel_size(name: str, path: Path):
    from napari_neuroseg.runtime.scale import read_scale_json

    f = path / "scale.json" if path.is_dir() else path.with_suffix(".scale.json")
    try:
        sc = read_scale_json(f)
    except NeurosegError:
        return None
    return None if sc is None else [float(v) for v in sc.voxel_size]


# ---------------------------------------------------------------- change listeners (model pickers)
_listeners: list = []


def on_change(callback) -> None:
    """Call ``callback()`` whenever a model is registered (:func:`register_model`) or
    :func:`notify_changed` is called: model pickers refresh their lists with it. Plain Python:
    the callback may run in a worker thread (a Qt picker hands it to the main thread, see
    ``_napari/_forms.py``: ``follow_registry``). Remove it with :func:`remove_listener`."""
    if callback not in _listeners:
        _listeners.append(callback)


def remove_listener(callback) -> None:
    """Stop calling ``callback`` (no error if it was not registered)."""
    try:
        _listeners.remove(callback)
    except ValueError:
        pass


def notify_changed() -> None:
    """Tell every listener that the list of models changed (a listener's error is ignored)."""
    for cb in _listeners:
        try:
            cb()
        except Exception:  # noqa: BLE001, S110 - a picker whose widget is gone must not stop the others
            pass


def model_names(kind: str, include_shipped: bool = True) -> list[str]:
    """Names a model picker offers for ``kind`` ("nuclei" or "neurons"): the shipped model(s),
    then the registered models of that kind (by name)."""
    if kind not in KINDS:
        raise NeurosegError(f"unknown model kind {kind!r}", fix=f"use one of {', '.join(KINDS)}")
    return [m["name"] for m in list_models(include_shipped) if m.get("kind") == kind]


def register_model(source: str | Path, *, kind: str, name: str | None = None, voxel_size=None,
                   scores: dict | None = None, info: dict | None = None, replace: bool = True) -> dict:
    """Copy the model at ``source`` (a StarDist-3D model folder, or a neuron ``.pt`` file) into
    the user model folder under ``name`` (default: the folder or file name) and write its entry;
    the copy is made in a temporary folder and moved in place in one step. A model registered
    under the same name is replaced (``replace``) or refused. Returns the entry."""
    if kind not in KINDS:
        raise NeurosegError(f"unknown model kind {kind!r}", fix=f"use one of {', '.join(KINDS)}")
    src = Path(source)
    if not src.exists():
        raise NeurosegError("model to register not found", path=src, fix="train or save the model first")
    name = name or (src.stem if src.is_file() else src.name)
    if not _NAME.match(name) or name in SHIPPED:
        raise NeurosegError(f"{name!r} cannot be a registered model name", path=src,
                            fix="use letters, digits, '.', '_' or '-' (not a shipped model's name)")
    root = models_dir()
    dest = root / name
    if dest.exists() and not replace:
        raise NeurosegError(f"a model named {name!r} is already registered", path=dest,
                            fix="choose another name or remove it first")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with atomic_output(dest) as tmp:  # a complete model folder, or the old one untouched
            tmp.mkdir()
            if src.is_dir():
                for f in src.iterdir():
                    # the model files only: no training checkpoint (optimizer state) or temporaries
                    if f.is_file() and not f.name.startswith(".") and f.name != "checkpoint.pt":
                        shutil.copy2(f, tmp / f.name)
                rel = ""
            else:
                shutil.copy2(src, tmp / "model.pt")
                rel = "model.pt"
            entry = {"name": name, "kind": kind, "file": rel, "source": str(src.resolve()),
                     "voxel_size": None if voxel_size is None else [float(v) for v in voxel_size],
                     "scores": dict(scores or {}), "info": dict(info or {}),
                     "created": _dt.datetime.now().isoformat(timespec="seconds")}
            (tmp / ENTRY_FILE).write_text(json.dumps(entry, indent=1, default=str))
    except (OSError, NeurosegError) as err:  # io.atomic reports a full disk as a NeurosegError
        why = err.problem if isinstance(err, NeurosegError) else (err.strerror or err)
        raise NeurosegError(f"cannot register the model in the user model folder ({why})", path=root,
                            fix=f"free disk space or set {ENV_VAR} to a writable folder; the trained model itself "
                                f"is in {src}") from err
    entry["path"] = str(dest / rel) if rel else str(dest)
    notify_changed()
    return entry


def resolve_neuron_model(name_or_path: str | Path | None) -> Path | None:
    """The file of a neuron model given by name (``neuroseg_neurons``, a registered neurons model)
    or path; None stays None (the shipped default). A nuclei model's name is a clear error."""
    if name_or_path is None:
        return None
    s = str(name_or_path)
    if s == "neuroseg_neurons":
        return _shipped_path(s)
    if s in SHIPPED:
        raise NeurosegError(f"{s!r} is a nuclei model, not a neuron model",
                            fix="use it with 'neuroseg nuclei' / 'train nuclei', or give neuroseg_neurons")
    p = Path(s).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        raise NeurosegError("this is a StarDist-3D nuclei model folder, not a neuron model", path=p,
                            fix="use it with 'neuroseg nuclei' / 'train nuclei --init-from', or give a neuron model .pt")
    if p.is_dir() and (p / "model.pt").is_file():  # the output folder of 'train neurons'
        return p / "model.pt"
    if p.is_dir():
        raise NeurosegError("this folder holds no neuron model (model.pt)", path=p,
                            fix="give the output folder of 'neuroseg train neurons' or a model .pt file")
    if p.exists():
        return p
    entry = lookup(s)
    if entry is not None:
        if entry["kind"] != "neurons":
            raise NeurosegError(f"registered model {s!r} is a {entry['kind']} model, not a neuron model",
                                path=entry["path"], fix="give a neuron model (see 'neuroseg models list')")
        return Path(entry["path"])
    raise NeurosegError(f"neuron model {s!r} is neither neuroseg_neurons, a registered model nor an existing file",
                        fix="see 'neuroseg models list' for the names, or give a model .pt file")
