"""A plugin dock removed with ``viewer.window.remove_dock_widget(<QDockWidget>)`` leaves no Python
slot connected to Qt's ``destroyed`` signals.

Those slots (``_dock.DockLifecycleMixin``: the widget's and its ``QDockWidget``'s) stayed connected
after the dock closed; when Qt deleted the widgets during interpreter exit it called them: a
segmentation fault after the last test of a pytest process that used ``make_napari_viewer``
(reproduced with the Evaluate dock before the fix; a plain script that does the same exited
cleanly). The connections are cut when the dock closes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.gui

TITLES = ["Evaluate segmentation", "Proofreading", "Nuclei (StarDist-3D)"]


def _python_receivers(obj) -> int:
    return obj.receivers(obj.destroyed)


@pytest.mark.parametrize("title", TITLES)
def test_a_removed_dock_leaves_no_slot_on_destroyed(viewer, qtbot, title):
    dock, widget = viewer.window.add_plugin_dock_widget("napari-neuroseg", title)
    n_widget = _python_receivers(widget)  # napari's and the mixin's
    viewer.window.remove_dock_widget(dock)
    qtbot.wait(10)
    assert widget.dock_closed
    assert _python_receivers(widget) == n_widget - 1  # the mixin's slot is gone (the dock is deleted)


CHILD_TEST = textwrap.dedent(
    """
    def test_remove(make_napari_viewer, qtbot):
        from napari_neuroseg._napari.evaluate_widget import EvaluateWidget

        viewer = make_napari_viewer()
        w = EvaluateWidget(viewer)
        dock = viewer.window.add_dock_widget(w, name="Evaluate")
        viewer.window.remove_dock_widget(dock)
        qtbot.waitUntil(lambda: w.dock_closed, timeout=2000)
    """
)


@pytest.mark.slow
def test_a_pytest_process_that_removed_a_dock_exits_cleanly(tmp_path):
    """The crash itself: a child pytest process (SIGSEGV at its exit before the fix)."""
    (tmp_path / "test_child.py").write_text(CHILD_TEST)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n0", "test_child.py"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
