"""Fixtures for the napari-layer tests: small files in every supported format."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def small_volumes() -> dict[str, np.ndarray]:
    """A small image (uint16 ZYX) and labels (uint32 ZYX, touching objects)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 2000, size=(6, 20, 24)).astype(np.uint16)
    labels = np.zeros((6, 20, 24), np.uint32)
    labels[1:4, 2:8, 2:9] = 1
    labels[1:5, 8:15, 2:9] = 2
    labels[2:6, 5:18, 12:22] = 7
    return {"image": image, "labels": labels}


@pytest.fixture(scope="session")
def fisbe_small(tmp_path_factory) -> dict:
    """A small synthetic FISBe sample on disk (raw + overlapping instances + dim neurons)."""
    from napari_neuroseg.io import write_fisbe
    from napari_neuroseg.synth import make_neurons

    vol = make_neurons((20, 48, 48), n_neurons=4, seed=3)
    stack = vol.gt_instances.copy()
    # guarantee an overlap between neurons 1 and 2 whatever the generator drew
    stack[0, 5, 5:9, 5] = 1
    stack[1, 5, 5:9, 5] = 2
    path = tmp_path_factory.mktemp("fisbe") / "sample.zarr"
    write_fisbe(path, raw=vol.raw, gt_instances=stack, dim_neurons=[2])
    return {"path": path, "raw": vol.raw, "stack": stack, "dim_neurons": [2]}


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def layer_by_name(viewer, fragment: str):
    exact = [ly for ly in viewer.layers if ly.name == fragment]
    matches = exact or [ly for ly in viewer.layers if fragment in ly.name]
    assert len(matches) == 1, [ly.name for ly in viewer.layers]
    return matches[0]


@pytest.fixture
def by_name():
    return layer_by_name


#: the plugin's docks, by the short name the tests use
DOCK_KINDS = ("nuclei", "neurons", "evaluate", "proofreading", "batch", "finetune")


def make_dock_widget(kind: str, viewer):
    """The dock widget of ``kind`` (:data:`DOCK_KINDS`) for ``viewer``, not docked; Fine-tune
    without its offer to restore a saved session."""
    if kind == "nuclei":
        from napari_neuroseg._napari.nuclei_widget import NucleiWidget as W
    elif kind == "neurons":
        from napari_neuroseg._napari.neurons_widget import NeuronsWidget as W
    elif kind == "evaluate":
        from napari_neuroseg._napari.evaluate_widget import EvaluateWidget as W
    elif kind == "proofreading":
        from napari_neuroseg._napari.proofread_widget import ProofreadWidget as W
    elif kind == "batch":
        from napari_neuroseg._napari.batch_widget import BatchWidget as W
    elif kind == "finetune":
        from napari_neuroseg._napari.finetune_widget import FineTuneWidget as W

        return W(viewer, offer_restore=False)
    else:
        raise ValueError(f"unknown dock kind {kind!r}; one of {DOCK_KINDS}")
    return W(viewer)


@pytest.fixture
def make_dock():
    """:func:`make_dock_widget`, as a fixture."""
    return make_dock_widget



@pytest.fixture(autouse=True)
def _fresh_collector_state():
    """Each test starts and ends with nothing settled or held (``runtime/collector.py``): a dock a
    test made but never docked or closed would otherwise keep the rule on for later tests, and
    freeze their closed viewers."""
    from napari_neuroseg.runtime import collector

    collector.reset()
    yield
    collector.reset()


@pytest.fixture
def background_done(qtbot):
    """``wait(name)``: waits until the docks' background thread ``name``
    (``_workers.run_in_background``) has been started and has ended; returns it."""
    from napari_neuroseg._napari import _workers

    def wait(name: str, timeout: int = 200_000):
        qtbot.waitUntil(lambda: name in _workers._BACKGROUND, timeout=10_000)
        th = _workers._BACKGROUND[name]
        qtbot.waitUntil(lambda: th.ident is not None and not th.is_alive(), timeout=timeout)
        return th

    return wait


@pytest.fixture
def warms_once(background_done):
    """``check(viewer, dock_class, name)``: a ``dock_class`` dock added to ``viewer`` starts the
    background thread ``name``, which ends, and a second dock of the class starts no other."""
    from napari_neuroseg._napari import _workers

    def check(viewer, dock_class, name: str):
        viewer.window.add_dock_widget(dock_class(viewer))
        th = background_done(name)
        dock_class(viewer)
        assert _workers._BACKGROUND[name] is th
        return th

    return check
