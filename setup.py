"""Packaging shim: ship the repository-root ``napari.yaml`` inside the package.

The root ``napari.yaml`` is the source of truth; ``src/napari_neuroseg/napari.yaml`` is a symlink
to it so an editable install finds it. Symlinks do not survive every checkout or archive (e.g.
Windows clones store them as text files), so every build copies the real file into the built
package. Everything else is configured in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
MANIFEST = ROOT / "napari.yaml"


class build_py_with_manifest(build_py):  # noqa: N801 - setuptools command naming
    """``build_py`` that copies ``napari.yaml`` from the repository root into the package."""

    def run(self) -> None:
        super().run()
        if not MANIFEST.is_file():  # building from an sdist that already holds the file
            return
        target = Path(self.build_lib) / "napari_neuroseg" / "napari.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        shutil.copyfile(MANIFEST, target)


setup(cmdclass={"build_py": build_py_with_manifest})
