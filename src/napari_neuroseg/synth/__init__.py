"""Seeded synthetic data: FISBe-like multicolour neurons and anisotropic 3D nuclei (no Qt).

See ``docs/synth.md``.
"""

from .neurons import NeuronSettings, NeuronVolume, make_neurons

__all__ = ["NeuronSettings", "NeuronVolume", "make_neurons"]
