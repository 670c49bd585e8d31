"""The core packages import without Qt or napari (only ``napari_neuroseg._napari`` may).

Checked in a fresh interpreter: in the test process napari is usually imported already.
"""

from __future__ import annotations

import json
import subprocess
import sys

CORE = [
    "napari_neuroseg",
    "napari_neuroseg.io",
    "napari_neuroseg.metrics",
    "napari_neuroseg.proofread",
    "napari_neuroseg.synth",
    "napari_neuroseg.runtime",
    "napari_neuroseg.cli",
    "napari_neuroseg.batch",
    "napari_neuroseg.models.stardist3d",
    "napari_neuroseg.models.neurons",
]
GUI_PREFIXES = ("PyQt", "qtpy", "napari.", "superqt", "vispy", "magicgui")

_SCRIPT = """
import importlib, json, sys
for name in {mods!r}:
    importlib.import_module(name)
gui = sorted(m for m in sys.modules if m == "napari" or m.startswith({prefixes!r}))
print(json.dumps(gui))
"""


def _gui_modules_after_import(mods: list[str]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(mods=mods, prefixes=GUI_PREFIXES)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_core_imports_do_not_import_qt_or_napari():
    """Importing them all (so any one of them alone) loads no GUI module."""
    assert _gui_modules_after_import(CORE) == []


def test_the_check_sees_qt_when_it_is_imported():
    """The check is not vacuous: importing the napari layer does pull in napari."""
    assert "napari" in _gui_modules_after_import(["napari_neuroseg._napari._workers"])
