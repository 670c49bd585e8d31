"""napari-neuroseg: 3D nuclei and neuron segmentation, FISBe metrics and proofreading.

The core (``io``, ``synth``, ``models``, ``metrics``, ``proofread``, ``batch``) never imports Qt
or napari; everything that does lives in ``napari_neuroseg._napari``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-neuroseg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

from napari_neuroseg.errors import NeurosegError

__all__ = ["NeurosegError", "__version__"]
