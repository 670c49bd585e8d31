"""NumPy's own files: ``.npy`` volumes, scratch arrays and ``.npz`` caches, read without pickles.

Writing goes through :func:`napari_neuroseg.io.atomic.atomic_save_npy` and
:func:`~napari_neuroseg.io.atomic.atomic_save_npz`. Reading never unpickles (``allow_pickle``
is off), so a file a user opens cannot execute code; numpy's ``OSError``/``ValueError`` for a
missing, torn or pickled file are left to the caller, who knows which fix to name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["read_npy", "read_npz"]


def read_npy(path: str | Path, *, mmap: bool = False) -> np.ndarray:
    """The array in a ``.npy`` file (memory-mapped read-only with ``mmap``)."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, by name (all read now; the file is closed on return)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
