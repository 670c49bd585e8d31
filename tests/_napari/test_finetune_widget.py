"""The Fine-tune dock (issue 13): the whole cycle on a small volume — annotate (programmatic edits),
fine-tune a few steps, re-segment, the new model in the Nuclei dock's picker — plus teardown on
close, session autosave/restore/resume, and bad input as clear messages. A tiny network, a few
steps: well under 30 s on 2 cores."""

from __future__ import annotations

import numpy as np
import pytest
from sd3d_helpers import (  # tests/stardist3d is on pythonpath
    BASE_SCALE,
    balls,
    make_tiny_base,
)

pytestmark = pytest.mark.gui

SCALE = tuple(BASE_SCALE["voxel_size"])  # the tiny base model's voxel size: no resampling


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny StarDist-3D model folder (voxel size 1 x 0.5 x 0.5 um)."""
    return make_tiny_base(tmp_path_factory.mktemp("base"))


@pytest.fixture(autouse=True)
def _user_dirs(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("NEUROSEG_MODELS_DIR", str(tmp_path / "user_models"))
    monkeypatch.setenv("NEUROSEG_SESSIONS_DIR", str(tmp_path / "sessions"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _add_data(viewer, labels=None):
    img, lbl = balls()
    viewer.add_image(img, name="raw", scale=SCALE, units=("um", "um", "um"))
    lab = viewer.add_labels(lbl if labels is None else labels, name="corrected", scale=SCALE)
    return img, lab


def _form(w, base, *, steps=3, name="ft_test"):
    from napari_neuroseg._napari.finetune_widget import PATH_CHOICE

    w.image.value = "raw"
    w.labels.value = "corrected"
    w.base.value = PATH_CHOICE
    w.base_path.value = str(base)
    w.minutes.value = 2.0
    w.steps.value = steps
    w.thresholds.value = False  # the threshold search of an untrained tiny network is slow
    w.device.value = "cpu"
    w.output.value = name


def _picker_names(nuclei) -> list[str]:
    form = getattr(nuclei, "form", None)
    if form is not None and hasattr(form, "model"):
        return list(form.model.choices)
    combo = nuclei.model_combo
    return [combo.itemText(i) for i in range(combo.count())]


# issue 13's acceptance test: in the default run (12.6 s in the slow run of session 6; 25-80 s on a loaded machine)
def test_the_whole_cycle(make_napari_viewer, qtbot, tiny_base, monkeypatch):
    from napari_neuroseg._napari.finetune_widget import FineTuneWidget
    from napari_neuroseg._napari.nuclei_widget import NucleiWidget
    from napari_neuroseg.models import registry
    from napari_neuroseg.models.stardist3d import postprocess, train

    backends: list[str] = []  # the NMS backend of every prediction the job makes (issue 17)
    check = postprocess.check_nms_backend
    monkeypatch.setattr(postprocess, "check_nms_backend", lambda nms: backends.append(nms) or check(nms))
    in_worker: list[bool] = []  # where the training patches' targets were computed
    targets = train.patch_targets
    monkeypatch.setattr(train, "patch_targets",
                        lambda *a, **kw: in_worker.append(kw.get("worker_process")) or targets(*a, **kw))

    viewer = make_napari_viewer()
    img, lab = _add_data(viewer)
    nuclei = NucleiWidget(viewer)
    viewer.window.add_dock_widget(nuclei)
    w = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert not w.restore_box.isVisible()  # no earlier session
    _form(w, tiny_base)
    assert "ft_test" not in _picker_names(nuclei)

    # annotate: programmatic corrections of the Labels layer (a merge undone, a stray blob removed)
    lab.paint((8, 24, 24), 0, refresh=True)
    lab.fill((8, 12, 12), 42)
    assert w.autosaver.pending >= 2
    w.save_session(wait=True)
    s = w.session
    assert s is not None and s.has("annotation") and s.has("image")
    np.testing.assert_array_equal(s.load_array("annotation"), lab.data)
    assert w.autosaver.pending == 0

    worker = w.run()
    assert worker is not None and w.controls.busy
    qtbot.waitUntil(lambda: not w.controls.busy, timeout=90_000)
    assert w.last_error is None, w.status.text()
    res = w.result
    assert res is not None and res.steps == 3 and res.name == "ft_test"
    # scores, live F1 and the trainer's held-out score all used the numba NMS, which releases the
    # GIL: stardist's C++ NMS holds it for its whole call and froze the viewer 5-72 s a call
    assert backends and set(backends) == {"neuroseg"}, backends
    # and stardist's GIL-holding C++ targets ran in the worker process, not in the viewer's
    assert in_worker and set(in_worker) == {True}, in_worker
    assert "base" in w.scores_label.text() and "fine-tuned" in w.scores_label.text()
    assert [s for s, _ in w.plot.loss] == [1, 2, 3] and w.plot.val_loss and w.plot.f1_before is not None
    assert w.plot.paints > 0 or not w.plot.isVisible()
    assert registry.lookup("ft_test") is not None
    qtbot.waitUntil(lambda: "ft_test" in _picker_names(nuclei), timeout=5000)  # offered at once
    assert w.session.status == "done" and w.session.checkpoint_step() == 3
    assert (w.session.model_dir / "MODEL_CARD.md").is_file()

    assert w.resegment_button.isEnabled()
    w.resegment()
    qtbot.waitUntil(lambda: not w.controls.busy, timeout=60_000)
    assert w.last_error is None, w.status.text()
    out = viewer.layers["raw nuclei (ft_test)"]
    assert out.data.shape == img.shape and tuple(out.scale) == SCALE


def test_closing_the_dock_cancels_and_saves(make_napari_viewer, qtbot, tiny_base):
    from napari_neuroseg._napari.finetune_widget import FineTuneWidget
    from napari_neuroseg.models import registry

    viewer = make_napari_viewer()
    _img, lab = _add_data(viewer)
    listeners = len(registry._listeners)
    w = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    _form(w, tiny_base, steps=10_000)
    w.minutes.value = 10.0
    finished = []
    worker = w.run()
    worker.finished.connect(lambda: finished.append(True))
    qtbot.waitUntil(lambda: len(w.plot.loss) >= 2, timeout=60_000)  # training
    lab.fill((8, 12, 12), 77)  # an edit not saved yet
    assert w.autosaver.pending
    viewer.window.remove_dock_widget(w)
    assert w.dock_closed
    qtbot.waitUntil(lambda: bool(finished), timeout=30_000)  # the job stopped at its next step
    assert w.result is None and len(w.plot.loss) < 10_000
    assert w._tracked is None  # the Labels layer is let go
    n = len(lab.events.paint.callbacks)
    lab.fill((8, 12, 12), 78)
    assert len(lab.events.paint.callbacks) == n and w.autosaver.pending == 0
    np.testing.assert_array_equal(w.session.load_array("annotation")[8, 12, 12], 77)  # saved on close
    assert len(registry._listeners) == listeners  # the picker relay of this dock is gone
    assert w.session.status == "stopped"  # a later Fine-tune resumes from the last checkpoint (every 25 steps)


def test_closing_the_viewer_saves_pending_edits(make_napari_viewer, qtbot):
    """Closing napari itself (the dock is deleted with it): the edits not autosaved yet are written."""
    from napari_neuroseg._napari.finetune_widget import FineTuneWidget
    from napari_neuroseg.models.finetune_session import latest_session

    viewer = make_napari_viewer()
    _img, lab = _add_data(viewer)
    w = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.image.value, w.labels.value = "raw", "corrected"
    w.save_session(wait=True)  # the session exists (the first autosave)
    lab.fill((8, 12, 12), 91)
    assert w.autosaver.pending
    viewer.close()
    qtbot.waitUntil(lambda: w.dock_closed, timeout=10_000)
    s = latest_session()
    assert s is not None and s.load_array("annotation")[8, 12, 12] == 91


@pytest.mark.slow  # two short runs to their end (~15 s on the loaded machine)
def test_restore_and_resume_a_session(make_napari_viewer, qtbot, tiny_base):
    from napari_neuroseg._napari.finetune_widget import FineTuneWidget
    from napari_neuroseg.models.finetune_session import Session

    viewer = make_napari_viewer()
    _img, lab = _add_data(viewer)
    w = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    _form(w, tiny_base, steps=2)
    lab.fill((8, 12, 12), 55)
    w.run()
    qtbot.waitUntil(lambda: not w.controls.busy, timeout=60_000)
    assert w.last_error is None, w.status.text()
    first = w.session
    # pretend the run had stopped after its checkpoint (a crash): status "stopped"
    first.save_state(status="stopped")
    viewer.window.remove_dock_widget(w)
    viewer.layers.clear()

    w2 = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(w2)
    assert w2.offered_session is not None and w2.offered_session.path == first.path
    assert "corrected" in w2.restore_label.text() and "step 2" in w2.restore_label.text()
    w2.restore_session()
    restored = viewer.layers["corrected (restored)"]
    assert restored.data[8, 12, 12] == 55 and tuple(restored.scale) == SCALE
    assert "raw" in viewer.layers and w2.labels.value == "corrected (restored)"
    assert w2.run_button.text().startswith("Resume") and w2.output.value == "ft_test"
    w2.steps.value = 4
    w2.run()
    qtbot.waitUntil(lambda: not w2.controls.busy, timeout=60_000)
    assert w2.last_error is None, w2.status.text()
    assert [s for s, _ in w2.plot.loss] == [3, 4]  # resumed after step 2
    assert Session.open(first.path).status == "done"

    w3 = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(w3)
    assert w3.offered_session is not None
    w3.discard_offered_session()
    assert not w3.restore_box.isVisible()
    w4 = FineTuneWidget(viewer)
    assert w4.offered_session is None


def test_reviewed_part_from_the_review_queue(make_napari_viewer, tiny_base):
    """'objects marked fixed in the review queue': the queue of the Proofreading dock (here the one
    saved in the session) decides which objects count; none fixed is a clear message."""
    from napari_neuroseg._napari.finetune_widget import FIXED, FineTuneWidget
    from napari_neuroseg.proofread.review import ReviewQueue

    viewer = make_napari_viewer()
    _img, lab = _add_data(viewer)
    w = FineTuneWidget(viewer)
    _form(w, tiny_base)
    w.mask.value = FIXED
    q = ReviewQueue.from_checks(lab.data, tiny=10_000)
    w.save_session(wait=True)
    w.session.save_review(q)
    assert w.run() is None and "marked fixed" in w.status.text()
    for k in range(4):  # fix four objects
        q.position = k
        q.mark("fixed")
    w.session.save_review(q)
    a = w.job_arguments()
    fixed = {it.id for it in q.items if it.status == "fixed"}
    assert set(np.unique(lab.data[a["mask"] > 0])) == fixed


@pytest.mark.parametrize("case, message", [
    ("shapes", "different shapes"),
    ("empty", "empty"),
    ("one", "only one object"),
    ("small", "too little data for a validation split"),
    ("neuron_base", "neuron model"),
    ("no_path", "no base model path"),
    ("neurons_3d", "3-channel raw"),
])
def test_bad_input_is_a_clear_message(make_napari_viewer, qtbot, tiny_base, case, message):
    from napari_neuroseg._napari.finetune_widget import FineTuneWidget

    _img, lbl = balls()
    labels = {"shapes": lbl[:, :40], "empty": np.zeros_like(lbl), "one": (lbl == 5).astype(np.uint16)}.get(case, lbl)
    viewer = make_napari_viewer()
    if case == "small":
        img = np.zeros((16, 12, 12), np.uint8)
        labels = np.zeros((16, 12, 12), np.uint16)
        labels[4:8, 1:4, 1:4], labels[4:8, 8:11, 8:11] = 1, 2
        viewer.add_image(img, name="raw", scale=SCALE, units=("um", "um", "um"))
        viewer.add_labels(labels, name="corrected", scale=SCALE)
    else:
        _add_data(viewer, labels)
    w = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    _form(w, tiny_base)
    if case == "neuron_base":
        w.base.value = "neuroseg_neurons" if "neuroseg_neurons" in w.base.choices else w.base.value
        w.base_path.value = "neuroseg_neurons"
    if case == "no_path":
        w.base_path.value = ""
    if case == "neurons_3d":
        w.task.value = "neurons"
        assert "neuroseg_nuclei" not in w.base.choices  # the picker follows the task
    worker = w.run()
    if worker is not None:  # errors found in the worker (scale, split, base model kind)
        qtbot.waitUntil(lambda: not w.controls.busy, timeout=60_000)
        assert w.result is None
    assert message in w.status.text(), w.status.text()
    assert not w.resegment_button.isEnabled()


@pytest.mark.slow  # the neuron post-processing compiles (numba) once: ~1-2 min on the loaded machine
def test_neurons_task_trains_registers_and_resegments(make_napari_viewer, qtbot, tmp_path):
    import torch

    from napari_neuroseg._napari.finetune_widget import PATH_CHOICE, FineTuneWidget
    from napari_neuroseg.models import registry
    from napari_neuroseg.models.neurons.model import NetConfig, save_model
    from napari_neuroseg.synth import make_neurons

    torch.manual_seed(0)
    cfg = NetConfig(base=2, levels=2)
    save_model(tmp_path / "tiny_neurons.pt", cfg.build(), cfg)
    v = make_neurons((20, 48, 48), n_neurons=4, seed=3)
    viewer = make_napari_viewer()
    viewer.add_image(v.raw, name="raw3")  # one (3, Z, Y, X) layer
    viewer.add_labels(v.labels, name="neurons corrected")
    w = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.task.value = "neurons"
    w.image.value = "raw3"
    w.labels.value = "neurons corrected"
    w.base.value = PATH_CHOICE
    w.base_path.value = str(tmp_path / "tiny_neurons.pt")
    w.steps.value = 2
    w.device.value = "cpu"
    w.output.value = "ft_neurons"
    w.run()
    qtbot.waitUntil(lambda: not w.controls.busy, timeout=300_000)
    assert w.last_error is None, w.status.text()
    assert w.result.kind == "neurons" and "avF1" in w.scores_label.text()
    assert registry.lookup("ft_neurons")["kind"] == "neurons"
    qtbot.waitUntil(lambda: "ft_neurons" in w.base.choices, timeout=5000)  # the dock's own picker follows too
    w.resegment()
    qtbot.waitUntil(lambda: not w.controls.busy, timeout=300_000)
    assert w.last_error is None, w.status.text()
    assert viewer.layers["raw3 neurons (ft_neurons)"].data.shape == v.labels.shape


# ------------------------------------------------------------------ responsiveness (issue 17)
def test_targets_in_the_worker_process_are_the_same():
    """``TrainSettings.targets_in_worker_process`` (the Fine-tune dock sets it): a patch's targets
    come from the persistent worker process (stardist's C++ holds that process's GIL), equal to
    those computed here."""
    from stardist.rays3d import Rays_GoldenSpiral

    from napari_neuroseg.models.stardist3d.train import patch_targets
    from napari_neuroseg.models.stardist3d.training.data import make_targets
    from napari_neuroseg.runtime import subprocess as sp

    _img, lbl = balls()
    calls: list = []
    real = sp.get_worker
    worker = real()
    orig_call = worker.call

    def spy_call(fn, *a, **kw):
        calls.append(fn.__name__)
        return orig_call(fn, *a, **kw)

    worker.call = spy_call
    try:
        rays = Rays_GoldenSpiral(32, anisotropy=(2.0, 1.0, 1.0))
        p, d = patch_targets(lbl, rays, (1, 2, 2), (2.0, 1.0, 1.0), worker_process=True)
    finally:
        del worker.call
    assert calls == ["make_targets"] and worker.alive  # a real child process
    p0, d0 = make_targets(lbl, rays, (1, 2, 2), (2.0, 1.0, 1.0))
    np.testing.assert_array_equal(p, p0)
    np.testing.assert_array_equal(d, d0)


@pytest.mark.timeout(240)
def test_opening_the_dock_compiles_what_the_first_scoring_would(make_napari_viewer, warms_once):
    """The dock starts ``finetune_job.warmup`` in a background thread once per process: stardist's
    matching table is compiled for the usual label dtypes before any run (numba's compiler had
    competed with the viewer for the GIL during the run's first scoring)."""
    import sys

    from stardist.matching import _label_overlap

    from napari_neuroseg._napari import finetune_widget
    from napari_neuroseg._napari.finetune_widget import FineTuneWidget
    from napari_neuroseg.models.finetune_job import WARM_LABEL_DTYPES, WARM_MODULES

    warms_once(make_napari_viewer(), FineTuneWidget, finetune_widget.WARMUP_THREAD)
    compiled = {(str(a.dtype), str(b.dtype)) for a, b in _label_overlap.signatures}
    assert {(dt, "int32") for dt in WARM_LABEL_DTYPES} <= compiled, compiled
    # the set-up's imports too: the trainers, and what torch's first optimiser imports
    assert {*WARM_MODULES, "torch._dynamo"} <= set(sys.modules)
    # a neurons job's scoring: the post-processing and the thinning
    from napari_neuroseg.metrics._thin import _thin
    from napari_neuroseg.models.neurons import _postprocess_kernels as K

    assert K.count_rows.signatures and K.greedy_merge.signatures and _thin.signatures


@pytest.fixture
def slow_warmup(monkeypatch):
    """A stand-in for the dock's warm-up thread (under a name of its own, so that the real one,
    which the dock starts, does not interfere), running until the test sets the event it yields."""
    import threading

    from napari_neuroseg._napari import finetune_widget

    monkeypatch.setattr(finetune_widget, "WARMUP_THREAD", "test-finetune-warmup")
    release = threading.Event()
    th = threading.Thread(target=release.wait, name="test-finetune-warmup", daemon=True)
    th.start()
    yield release
    release.set()
    th.join()


def _spy_job(monkeypatch) -> list[str]:
    """The names of the fine-tune jobs the dock starts (the real ones run)."""
    from napari_neuroseg.models import finetune_job

    started: list[str] = []
    for name in ("finetune_nuclei_iter", "finetune_neurons_iter"):
        real = getattr(finetune_job, name)

        def spy(*a, _real=real, _name=name, **kw):
            started.append(_name)
            return (yield from _real(*a, **kw))

        monkeypatch.setattr(finetune_job, name, spy)
    return started


def _docked_with_data(viewer, base):
    """The sample's image and labels in ``viewer``, a docked Fine-tune widget on them (2 steps)."""
    from napari_neuroseg._napari.finetune_widget import FineTuneWidget

    _img, lab = _add_data(viewer)
    w = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    _form(w, base, steps=2)
    return viewer, w, lab


def test_a_run_pressed_during_the_warmup_waits_for_it(make_napari_viewer, qtbot, tiny_base, slow_warmup, monkeypatch):
    """Run while the dock's warm-up still compiles: the session's arrays are written, the job
    says it waits for the warm-up and starts only once the warm-up has ended, then trains."""
    started = _spy_job(monkeypatch)
    _viewer, w, lab = _docked_with_data(make_napari_viewer(), tiny_base)
    w.run()
    qtbot.waitUntil(lambda: "warm-up" in w.status.text(), timeout=30_000)
    qtbot.wait(600)  # a few of its reports
    assert started == [] and w.worker is not None and "warm-up" in w.status.text()
    np.testing.assert_array_equal(w.session.load_array("annotation"), lab.data)  # written before the wait
    slow_warmup.set()
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    assert started == ["finetune_nuclei_iter"]
    assert w.result is not None and w.result.steps == 2


def test_cancel_while_waiting_for_the_warmup(make_napari_viewer, qtbot, tiny_base, slow_warmup, monkeypatch):
    """Cancel (here: closing the dock) while the run waits for the warm-up: it stops within a
    report, the job never starts, the session is left resumable-stopped with the annotation."""
    started = _spy_job(monkeypatch)
    viewer, w, lab = _docked_with_data(make_napari_viewer(), tiny_base)
    finished: list[bool] = []
    w.run().finished.connect(lambda: finished.append(True))
    qtbot.waitUntil(lambda: "warm-up" in w.status.text(), timeout=30_000)
    viewer.window.remove_dock_widget(w)
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)  # while the warm-up still runs
    assert started == [] and w.result is None
    assert w.session.status == "stopped"
    np.testing.assert_array_equal(w.session.load_array("annotation"), lab.data)
