"""The settled heap (``runtime/collector.py``): what is frozen when, and that nothing leaks."""

from __future__ import annotations

import gc
import weakref

import pytest

from napari_neuroseg.runtime import collector


class _Cycle:
    """An object that only the cycle collector frees (it refers to itself)."""

    def __init__(self) -> None:
        self.me = self
        self.payload = bytearray(10)


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv("NEUROSEG_SETTLE_HEAP", raising=False)
    collector.reset()
    collector.hold()  # as an open plugin dock does
    yield
    collector.reset()
    assert gc.get_freeze_count() == 0


def test_settle_freezes_what_exists_and_release_hands_it_back():
    assert collector.state() == "never" and gc.get_freeze_count() == 0
    e0 = collector.epoch()
    assert collector.settle()
    assert collector.state() == "settled" and collector.epoch() == e0 + 1
    assert gc.get_freeze_count() > 1000  # the interpreter's and pytest's objects
    made = [[i] for i in range(500)]
    n = gc.get_freeze_count()
    assert collector.settle()  # a later warm-up: what was made since joins the frozen heap
    assert gc.get_freeze_count() >= n + len(made)
    assert collector.release() and gc.get_freeze_count() == 0 and collector.state() == "released"
    assert not collector.release()  # nothing frozen by the rule any more


def test_cyclic_garbage_of_frozen_objects_is_collected_after_the_release():
    obj = _Cycle()
    ref = weakref.ref(obj)
    collector.settle()
    del obj
    gc.collect()
    assert ref() is not None  # frozen: the full collection did not look at it
    collector.release()
    gc.collect()
    assert ref() is None


def test_the_next_full_collection_after_a_release_settles_the_survivors():
    collector.settle()
    collector.release()
    assert not collector.settle()  # refused: the released objects may hold garbage
    e = collector.epoch()
    gc.collect()  # a full collection: the survivors were just traversed
    assert collector.state() == "settled" and collector.epoch() == e + 1 and gc.get_freeze_count() > 0


def test_nothing_is_frozen_while_a_job_runs():
    collector.settle()
    collector.release()
    with collector.job():
        assert collector.jobs_running() == 1
        gc.collect()
        assert collector.state() == "released" and gc.get_freeze_count() == 0  # its temporaries stay collectable
    assert collector.jobs_running() == 0
    gc.collect()
    assert collector.state() == "settled"


def test_a_settling_during_a_job_is_postponed_to_the_next_job():
    with collector.job():  # the first job of the process settles what exists at its start
        assert collector.state() == "settled"
        n = gc.get_freeze_count()
        imported = [[i] for i in range(500)]  # what a warm-up ending meanwhile made
        assert not collector.settle()  # postponed
        assert gc.get_freeze_count() == n
    with collector.job():
        assert gc.get_freeze_count() >= n + len(imported)  # settled at the next job's start


def test_a_job_that_fails_or_is_closed_leaves_the_mark():
    def gen():
        with collector.job():
            yield 1
            raise ValueError("bad")

    g = gen()
    next(g)
    assert collector.jobs_running() == 1
    g.close()  # cancelled
    assert collector.jobs_running() == 0
    g = gen()
    next(g)
    with pytest.raises(ValueError, match="bad"):
        next(g)
    assert collector.jobs_running() == 0


def test_the_rule_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("NEUROSEG_SETTLE_HEAP", "0")
    assert not collector.enabled()
    assert not collector.settle()
    with collector.job():
        pass
    assert gc.get_freeze_count() == 0 and collector.state() == "never"


def test_nothing_is_frozen_without_a_holder_and_the_last_one_releases():
    collector.unhold()
    assert collector.holders() == 0
    assert not collector.settle()  # e.g. a warm-up that ends after its dock was closed
    with collector.job():
        gc.collect()
    assert gc.get_freeze_count() == 0 and collector.state() == "never"
    collector.hold()
    collector.hold()
    assert collector.settle()
    collector.unhold()  # one dock closes: released (its objects may be garbage now)
    assert collector.state() == "released" and gc.get_freeze_count() == 0
    gc.collect()
    assert collector.state() == "settled"  # the other dock is still open
    collector.unhold()
    assert collector.state() == "released"
    gc.collect()
    assert collector.state() == "released" and gc.get_freeze_count() == 0

