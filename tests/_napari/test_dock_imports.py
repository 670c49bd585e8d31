"""Opening a dock never imports torch in the main thread (issue 17: a stall of seconds).

The Nuclei, Neurons and Fine-tune docks are opened as napari opens them (the npe2 widget
contribution) in a fresh process that has not imported torch; torch is imported by the
background preload thread (``_napari/_workers.py``: the preload rule), which then gives the
docks their device list and the Neurons dock the shipped model's thresholds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.gui

_CHILD = textwrap.dedent(r'''
    import json, sys, threading, time

    main_imports = []  # heavy modules whose import started in the main thread

    class Spy:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torch" and threading.current_thread() is threading.main_thread():
                main_imports.append(name)

    sys.meta_path.insert(0, Spy())
    import napari
    from qtpy.QtWidgets import QApplication
    from napari_neuroseg._napari import _workers

    go = threading.Event()  # the preload waits until every dock is built: a clean check of each
    body = _workers._preload_body
    _workers._preload_body = lambda relay: (go.wait(60), body(relay))
    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    out = {"torch_before": "torch" in sys.modules, "after_build": {}}
    docks = {}
    for key, title in (("nuclei", "Nuclei (StarDist-3D)"), ("neurons", "Neurons (FISBe)"),
                       ("finetune", "Fine-tune")):
        _dw, docks[key] = viewer.window.add_plugin_dock_widget("napari-neuroseg", title)
        out["after_build"][key] = "torch" in sys.modules
    out["main_imports_at_build"] = list(main_imports)
    out["devices_before"] = list(docks["nuclei"].form.device.choices)
    go.set()
    th = _workers._PRELOAD["thread"]
    t_end = time.perf_counter() + 120
    while time.perf_counter() < t_end and (th.is_alive() or "devices" not in _workers._PRELOAD):
        app.processEvents()
        time.sleep(0.01)
    for _ in range(20):  # the queued device list and the deferred threshold reads
        app.processEvents()
        time.sleep(0.01)
    from napari_neuroseg.models.neurons.model import DEFAULT_MODEL, read_checkpoint

    f = docks["neurons"].form
    out.update(main_imports=list(main_imports), devices=_workers._PRELOAD.get("devices"),
               nuclei_choices=list(docks["nuclei"].form.device.choices),
               neurons_choices=list(f.device.choices), pending=docks["neurons"].thresholds_read.pending,
               neurons_boxes=[f.merge_threshold.value, f.min_size.value],
               shipped=[read_checkpoint(DEFAULT_MODEL)["postprocess"][k] for k in ("merge_threshold", "min_size")])
    viewer.close()
    print("RESULT " + json.dumps(out), flush=True)
''')


def test_opening_the_docks_does_not_import_torch_in_the_main_thread():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=300, env=env,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    r = json.loads(lines[-1][7:])
    assert r["torch_before"] is False  # napari itself does not import torch
    assert r["after_build"] == {"nuclei": False, "neurons": False, "finetune": False}
    assert r["main_imports_at_build"] == []
    assert r["devices_before"] == ["auto", "cpu"]
    # the background import happened, and the docks got what it brought, in the main thread
    assert r["main_imports"] == []
    assert r["devices"] and r["devices"][-1] == "cpu"
    assert r["nuclei_choices"] == r["neurons_choices"] == ["auto", *r["devices"]]
    assert r["pending"] is False
    assert r["neurons_boxes"][0] == pytest.approx(r["shipped"][0])
    assert r["neurons_boxes"][1] == r["shipped"][1]


def test_a_run_before_the_background_import_ends_uses_the_model_thresholds(make_napari_viewer):
    """Run pressed while the thresholds still wait for torch: they are read first (the run
    must not use the boxes' defaults instead of the model's values)."""
    from napari_neuroseg._napari.neurons_widget import NeuronsWidget
    from napari_neuroseg.models.neurons.model import DEFAULT_MODEL, read_checkpoint

    w = NeuronsWidget(make_napari_viewer())
    shipped = read_checkpoint(DEFAULT_MODEL)["postprocess"]
    w.form.merge_threshold.value = 1.2
    w.thresholds_read.pending = True  # as if torch were still being imported in the background
    assert w.params()["merge_threshold"] == pytest.approx(shipped["merge_threshold"])
    assert w.thresholds_read.pending is False
