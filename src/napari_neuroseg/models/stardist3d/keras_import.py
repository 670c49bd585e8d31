"""Import the weights of a Keras StarDist-3D ``.h5`` file (legacy HDF5 layout) into a
:class:`~.network.StarDistNet`.

The file lists layers (root attribute ``layer_names``) in graph-depth order, each group with a
``weight_names`` attribute (``…/kernel:0``, ``…/bias:0``; newer saves may drop ``:0``). Named
layers (``down_level_0_no_0``, ``features``, ``prob``, …) are matched by name; auto-named
``conv3d[_N]`` layers by the order of their numeric suffix (their creation order), which is the
order in which the network registers its unnamed convolutions. Kernels are converted from
(kd, kh, kw, in, out) to (out, in, kd, kh, kw).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from napari_neuroseg.errors import NeurosegError

__all__ = ["read_keras_weights", "load_keras_weights"]

_AUTO = re.compile(r"^conv3d(?:_(\d+))?$")


def _decode(v) -> str:
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def read_keras_weights(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``{layer name: {"kernel": array, "bias": array}}`` for every layer with weights."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise NeurosegError("weight file not found", path=path, fix="put weights_best.h5 in the model folder")
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                raise NeurosegError(
                    "not a Keras weight file (no 'layer_names' attribute)",
                    path=path,
                    fix="use the .h5 file saved by StarDist (weights_best.h5)",
                )
            out: dict[str, dict[str, np.ndarray]] = {}
            for lname in (_decode(n) for n in root.attrs["layer_names"]):
                g = root[lname]
                wnames = [_decode(n) for n in g.attrs.get("weight_names", [])]
                if not wnames:
                    continue
                ws: dict[str, np.ndarray] = {}
                for wn in wnames:
                    key = wn.split("/")[-1].split(":")[0]
                    ws[key] = np.asarray(g[wn])
                out[lname] = ws
            return out
    except NeurosegError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise NeurosegError(
            f"cannot read the Keras weight file ({err})", path=path, fix="the file is corrupt: restore or re-export it"
        ) from err


def _auto_index(name: str) -> int | None:
    m = _AUTO.match(name)
    if m is None:
        return None
    return int(m.group(1) or 0)


def load_keras_weights(net, path: str | Path) -> None:
    """Copy the weights of the Keras file at ``path`` into ``net`` (a StarDistNet), in place.

    Raises NeurosegError when the file's layers do not match the architecture of the config.
    """
    import torch

    weights = read_keras_weights(path)
    named = {n: w for n, w in weights.items() if _auto_index(n) is None}
    auto = sorted((n for n in weights if _auto_index(n) is not None), key=_auto_index)
    targets_named = [(n, m) for n, m in net.keras_layers if n is not None]
    targets_auto = [m for n, m in net.keras_layers if n is None]
    if len(auto) != len(targets_auto) or set(named) != {n for n, _ in targets_named}:
        missing = sorted({n for n, _ in targets_named} - set(named))
        unexpected = sorted(set(named) - {n for n, _ in targets_named})
        raise NeurosegError(
            f"the weight file does not match the model's config: {len(auto)} auto-named conv layers "
            f"(expected {len(targets_auto)}), missing {missing}, unexpected {unexpected}",
            path=path,
            fix="use the config.json that was saved with these weights",
        )
    pairs = [(named[n], m, n) for n, m in targets_named] + [
        (weights[n], m, n) for n, m in zip(auto, targets_auto)
    ]
    with torch.no_grad():
        for w, module, name in pairs:
            conv = module.conv
            kernel = w.get("kernel")
            if kernel is None or kernel.ndim != 5:
                raise NeurosegError(f"layer {name!r} has no 3D kernel", path=path, fix="use a StarDist-3D model")
            k = torch.from_numpy(np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2)))
            if tuple(k.shape) != tuple(conv.weight.shape):
                raise NeurosegError(
                    f"layer {name!r}: kernel shape {kernel.shape} does not fit the model "
                    f"({tuple(conv.weight.shape)} as out,in,d,h,w)",
                    path=path,
                    fix="use the config.json that was saved with these weights",
                )
            conv.weight.copy_(k)
            if conv.bias is not None:
                if "bias" not in w or w["bias"].shape != (conv.bias.shape[0],):
                    raise NeurosegError(f"layer {name!r} has no matching bias", path=path, fix="check the weight file")
                conv.bias.copy_(torch.from_numpy(np.asarray(w["bias"])))
