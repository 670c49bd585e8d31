"""Helpers for the batch tests: small synthetic volumes and test tasks importable by workers.

The tasks here are ordinary :class:`~napari_neuroseg.batch.Task` subclasses (the ``custom`` CLI
task and Dask worker processes import them by ``batch_helpers:ClassName``; the tests put this
folder on ``sys.path`` / ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from napari_neuroseg.batch.tasks import Param, ThresholdTask


#: with these set, :class:`SlowThreshold` lets this many calls through and holds every later one
#: until its process is killed (environment variables, not task parameters: a resumed run must
#: have the same parameter hash as the one that was killed)
HOLD_AFTER_ENV, CALLS_DIR_ENV = "NEUROSEG_TEST_HOLD_AFTER", "NEUROSEG_TEST_CALLS_DIR"


class SlowThreshold(ThresholdTask):
    """``threshold`` that sleeps ``delay`` seconds per call (to interrupt runs mid-way); with
    ``NEUROSEG_TEST_HOLD_AFTER=n`` and ``NEUROSEG_TEST_CALLS_DIR`` set, call ``n + 1`` and every
    later one (counted across worker processes) never return, so a run is killed mid-way however
    fast or slow the machine is."""

    name = "slow"
    params = ThresholdTask.params + (Param("delay", float, 0.0, "seconds to sleep per call"),)

    def segment(self, image, axes, params):
        time.sleep(params["delay"])
        hold_after, calls = os.environ.get(HOLD_AFTER_ENV), os.environ.get(CALLS_DIR_ENV)
        if hold_after is not None and calls:
            import uuid

            (Path(calls) / uuid.uuid4().hex).touch()
            if len(list(Path(calls).iterdir())) > int(hold_after):
                while True:  # held until the test kills the process
                    time.sleep(0.05)
        return super().segment(image, axes, params)


class CentreThreshold(ThresholdTask):
    """``threshold`` stitched by centre ownership (the nuclei/blob mode)."""

    name = "centre"
    stitch = "centre"


class ColourObjects(ThresholdTask):
    """Objects told apart by their intensity (as FISBe neurons by colour): connected components
    of each intensity level separately; stitched by ``overlap`` (or ``faces`` via ``stitch``)."""

    name = "colour"
    stitch = "overlap"
    default_halo = (3, 3, 3)

    def halo_for(self, params):
        return self.default_halo

    def segment(self, image, axes, params):
        import cc3d

        img = np.asarray(image)
        out = np.zeros(img.shape, np.uint32)
        n = 0
        for v in np.unique(img[img > params["threshold"]]):
            lab = cc3d.connected_components(img == v, connectivity=6, out_dtype=np.uint32)
            out[lab > 0] = lab[lab > 0] + n
            n += int(lab.max())
        return out


class ColourObjectsFaces(ColourObjects):
    """:class:`ColourObjects` stitched by face contacts (the old neuron stitching)."""

    name = "colour-faces"
    stitch = "faces"


class CrashingThreshold(ThresholdTask):
    """Kills its worker process (``os._exit``) on the first call — or on every call."""

    name = "crash"
    params = ThresholdTask.params + (
        Param("marker", str, "", "file created by the first (crashing) call"),
        Param("always", bool, False, "crash on every call"),
    )

    def segment(self, image, axes, params):
        m = Path(params["marker"])
        if params["always"] or not m.exists():
            m.touch()
            os._exit(17)
        return super().segment(image, axes, params)


class GpuThreshold(ThresholdTask):
    """``threshold`` that declares it needs a GPU (submitted with resources={'GPU': 1})."""

    name = "gpu"

    def uses_gpu(self, params):
        return True

    def segment(self, image, axes, params):
        from distributed import get_worker

        # Runs only on workers that advertise a GPU resource.
        assert get_worker().state.total_resources.get("GPU", 0) >= 1
        return super().segment(image, axes, params)


def blobs(shape=(48, 64, 64), n=25, radius=3, seed=0) -> np.ndarray:
    """uint16 volume of separated bright balls (value 1000) of the given radius."""
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.uint16)
    r = radius
    zz, yy, xx = np.ogrid[-r : r + 1, -r : r + 1, -r : r + 1]
    ball = (zz**2 + yy**2 + xx**2) <= r**2
    centres: list = []
    for _ in range(n * 20):
        c = rng.integers([r + 1] * 3, np.array(shape) - r - 1)
        if all(np.abs(c - d).max() > 2 * r + 2 for d in centres):
            centres.append(c)
            img[c[0] - r : c[0] + r + 1, c[1] - r : c[1] + r + 1, c[2] - r : c[2] + r + 1][ball] = 1000
        if len(centres) == n:
            break
    return img


def tube(shape=(32, 48, 128), radius=2.0) -> np.ndarray:
    """A long, wiggling bright tube (a synthetic neuron) running along X through the volume."""
    img = np.zeros(shape, np.uint16)
    zz, yy = np.mgrid[: shape[0], : shape[1]]
    for x in range(shape[2]):
        cz = shape[0] / 2 + (shape[0] / 3) * np.sin(x / 11.0)
        cy = shape[1] / 2 + (shape[1] / 3) * np.cos(x / 17.0)
        img[:, :, x][(zz - cz) ** 2 + (yy - cy) ** 2 <= radius**2] = 800
    return img


def write_zarr(path, data, chunks=(16, 16, 16)):
    import zarr

    z = zarr.open_array(str(path), mode="w", shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=2)
    z[...] = data
    return path


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label volumes are equal up to a renaming of ids (a bijection)."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    m = a > 0
    pairs = np.unique(np.stack([a[m], b[m]], 1), axis=0)
    return len(pairs) == len(np.unique(pairs[:, 0])) == len(np.unique(pairs[:, 1]))


class ScaledThreshold(ThresholdTask):
    """``threshold`` with a ``voxel_size`` parameter, as the nuclei and neurons tasks have (the
    batch passes the input file's voxel size to it when none is given)."""

    name = "scaled"
    params = ThresholdTask.params + (Param("voxel_size", str, None, "voxel size 'Z,Y,X' in µm"),)
