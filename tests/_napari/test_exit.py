"""Closing napari after a plugin dock was removed does not crash the process at exit.

``viewer.window.remove_dock_widget`` with the ``QDockWidget`` (what ``add_plugin_dock_widget``
returns) left the docks' Python slots connected to Qt's ``destroyed`` signals; Qt deleted the
widgets during interpreter exit and called them: a segmentation fault after the script's last
line (seen with every dock; three kinds are exercised here). Runs in a child process: the crash happens at its exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.gui

SCRIPT = textwrap.dedent(
    """
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=False)
    # the shared mixin (_dock.py) and run controls: a run dock, proofreading, one with warm-ups
    titles = ["Evaluate segmentation", "Proofreading", "Nuclei (StarDist-3D)"]
    for title in titles:
        dock, widget = viewer.window.add_plugin_dock_widget("napari-neuroseg", title)
        QApplication.processEvents()
        viewer.window.remove_dock_widget(dock)
        QApplication.processEvents()
        assert widget.dock_closed, title
    print("removed", len(titles))
    """
)


def test_removing_docks_then_exiting_does_not_crash(tmp_path):
    env = dict(os.environ, NEUROSEG_MODELS_DIR=str(tmp_path / "models"), NEUROSEG_SESSIONS_DIR=str(tmp_path / "sessions"),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=240, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    assert "removed 3" in proc.stdout
