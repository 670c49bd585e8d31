"""Fine-tune sessions (models/finetune_session.py): state, arrays and review queue saved atomically in a
session folder, listing/latest for "restore?", discard, resume info, and the autosave rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.finetune_session import (
    Autosaver,
    Session,
    latest_session,
    list_sessions,
    sessions_dir,
)


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROSEG_SESSIONS_DIR", str(tmp_path / "sessions"))
    return tmp_path / "sessions"


def test_session_roundtrip(root):
    assert sessions_dir() == root
    s = Session.create("my cells/1", task="nuclei", labels_layer="corrected", voxel_size=(0.3, 0.1, 0.1))
    assert s.path.parent == root and "/" not in s.path.name[16:]
    lab = np.arange(60, dtype=np.uint32).reshape(3, 4, 5)
    s.save_array("annotation", lab)
    s.save_array("image", lab.astype(np.float32) / 2)
    t = Session.open(s.path)
    assert t.state["task"] == "nuclei" and t.state["voxel_size"] == [0.3, 0.1, 0.1]
    assert t.state["annotation_shape"] == [3, 4, 5] and t.status == "editing"
    np.testing.assert_array_equal(t.load_array("annotation"), lab)
    assert t.load_array("image").dtype == np.float32
    assert not t.has("mask") and t.checkpoint_step() is None and not t.can_resume
    assert [x.path for x in list_sessions()] == [s.path]
    assert latest_session().path == s.path
    assert "annotation 'corrected'" in t.describe()
    # no temporaries left behind
    assert sorted(p.name for p in s.path.iterdir()) == ["annotation.npy", "image.npy", "session.json"]


def test_a_failed_save_keeps_the_previous_annotation(root, monkeypatch):
    s = Session.create("x")
    s.save_array("annotation", np.ones((2, 2, 2), np.uint16))

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises((NeurosegError, OSError)):
        s.save_array("annotation", np.full((2, 2, 2), 7, np.uint16))
    monkeypatch.undo()
    np.testing.assert_array_equal(s.load_array("annotation"), 1)
    assert sorted(p.name for p in s.path.iterdir()) == ["annotation.npy", "session.json"]


def test_latest_skips_discarded_empty_and_broken(root):
    a = Session.create("a")
    a.save_array("annotation", np.zeros((2, 2, 2), np.uint8))
    b = Session.create("b")  # no annotation: nothing to restore
    c = Session.create("c")
    c.save_array("annotation", np.zeros((2, 2, 2), np.uint8))
    c.discard()
    (root / "junk").mkdir()
    (root / "junk" / "session.json").write_text("{not json")
    assert latest_session().path == a.path
    assert {s.path for s in list_sessions()} == {a.path, b.path}
    assert c.path in {s.path for s in list_sessions(include_closed=True)}
    with pytest.raises(NeurosegError, match="not a readable"):
        Session.open(root / "junk")
    b.delete()
    assert not b.path.exists()


def test_checkpoint_step_and_resume(root):
    s = Session.create("x")
    s.model_dir.mkdir()
    (s.model_dir / "checkpoint.pt").write_bytes(b"x")
    (s.model_dir / "training.json").write_text(json.dumps({"history": [{"step": 25}, {"step": 50}]}))
    assert s.checkpoint_step() == 50 and s.can_resume
    assert "stopped at step 50" in s.describe()
    s.save_state(status="done")
    assert not Session.open(s.path).can_resume


def test_review_queue_roundtrip(root):
    from napari_neuroseg.proofread.review import ReviewQueue

    lab = np.zeros((4, 8, 8), np.uint16)
    lab[1:3, 1:4, 1:4] = 1
    lab[1:3, 5:7, 5:7] = 2
    q = ReviewQueue.from_checks(lab, tiny=100)
    assert len(q) >= 2
    q.next()
    q.mark("fixed")
    s = Session.create("x")
    assert s.load_review() is None
    s.save_review(q)
    r = s.load_review()
    assert r.to_dict() == q.to_dict()


def test_session_arrays_never_unpickle(root):
    s = Session.create("x")
    np.save(s.array_path("annotation"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(NeurosegError, match="cannot be read"):
        s.load_array("annotation")


def test_autosaver_rule():
    now = [0.0]
    a = Autosaver(edits=3, seconds=60, clock=lambda: now[0])
    assert not a.due()
    assert not a.note_edit()
    assert not a.note_edit()
    assert a.note_edit()  # third edit
    a.saved()
    assert not a.due() and a.saves == 1
    a.note_edit()
    now[0] = 59.0
    assert not a.due()
    now[0] = 61.0
    assert a.due()  # a minute after the first unsaved edit
    a.saved()
    now[0] = 500.0
    assert not a.due()  # nothing pending: no save however long it was
