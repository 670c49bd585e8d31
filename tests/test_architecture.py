"""The layering of docs/architecture.md holds in the code: no unit imports a unit of a higher
layer (core never imports the CLI or the napari layer; io and runtime never import models)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"


def _graph():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_import_points_up_a_layer():
    g = _graph()
    e = g.edges()
    assert ("_napari", "models/stardist3d") in e  # the scan sees real imports
    assert ("io", "errors") in e
    assert g.layer_violations(e) == []


def test_an_upward_import_is_caught():
    g = _graph()
    assert g.layer_violations({("io", "_napari"): 1, ("runtime", "models/neurons"): 2}) == [
        ("io", "_napari"), ("runtime", "models/neurons")]
