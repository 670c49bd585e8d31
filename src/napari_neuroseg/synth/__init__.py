"""Seeded synthetic data: FISBe-like multicolour neurons and anisotropic 3D nuclei (no Qt).

See ``docs/synth.md``.
"""

from .neurons import NeuronSettings, NeuronVolume, make_neurons
from .nuclei import NucleiSettings, make_nuclei

__all__ = ["NeuronSettings", "NeuronVolume", "NucleiSettings", "make_neurons", "make_nuclei"]
