"""BioImage.IO Model Zoo packages in and out (see ``docs/bioimageio.md``).

* :func:`load_stardist3d` — a 3D StarDist package (Zoo Keras weights or this project's export) as a
  :class:`~napari_neuroseg.models.stardist3d.StarDist3D`; also reached through
  ``StarDist3D.from_bioimageio``, ``StarDist3D.load`` and ``neuroseg nuclei --model PACKAGE``.
* :func:`export_package` — write a package (``neuroseg export``) for the nuclei or the neuron model.

Importing needs only PyYAML (the description is read with ``yaml.safe_load``); ``bioimageio.spec``
(extra ``napari-neuroseg[bioimageio]``) is imported lazily: it validates descriptions when
installed and is required for export.
"""

from __future__ import annotations

from .package import ModelPackage, is_package

__all__ = ["ModelPackage", "export_package", "is_package", "load_neuron_model", "load_stardist3d"]


def __getattr__(name: str):
    if name in ("load_stardist3d", "load_neuron_model", "package_kind", "package_percentiles"):
        from . import load

        return getattr(load, name)
    if name in ("export_package",):
        from . import export

        return getattr(export, name)
    raise AttributeError(name)
