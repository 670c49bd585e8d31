"""Seeded synthetic data: FISBe-like multicolour neurons and anisotropic 3D nuclei (no Qt).

- :func:`make_neurons` → :class:`NeuronVolume` (FISBe layout), knobs in :class:`NeuronSettings`;
- :func:`make_nuclei` → ``(image float32, labels int32)``, knobs in :class:`NucleiSettings`;
- :func:`load_sample` (``"nuclei"``, ``"neurons"``, ``"stardist_nuclei_3d"``), :func:`sample_path`,
  :func:`stardist_nuclei_3d`.

See ``docs/synth.md``.
"""

from .neurons import NeuronSettings, NeuronVolume, make_neurons, render_neurons
from .nuclei import NucleiSettings, make_nuclei
from .samples import SAMPLE_NAMES, load_sample, sample_dir, sample_path, stardist_nuclei_3d

__all__ = [
    "NeuronSettings",
    "NeuronVolume",
    "NucleiSettings",
    "SAMPLE_NAMES",
    "load_sample",
    "make_neurons",
    "make_nuclei",
    "render_neurons",
    "sample_dir",
    "sample_path",
    "stardist_nuclei_3d",
]
