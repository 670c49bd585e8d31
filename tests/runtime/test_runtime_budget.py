"""TimeBudget: the step schedule shrinks to fit the wall-clock budget, never grows."""

from napari_neuroseg.runtime.budget import TimeBudget


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_no_budget_keeps_total_and_never_expires():
    b = TimeBudget(None, 0, 500)
    for k in range(1, 50):
        assert b.update(k) == 500
    assert not b.expired()


def test_total_shrinks_to_what_fits():
    clock = FakeClock()
    b = TimeBudget(1.0, 100, 100_000, warmup=10, clock=clock)  # 60 s, resumed at step 100
    totals = []
    for done in range(101, 400):
        clock.t += 0.5  # 2 steps per second
        totals.append(b.update(done))
    # ~120 steps fit in 60 s (minus 3 % margin); the first 10 warm-up steps are not measured
    assert 200 <= totals[-1] <= 221
    assert totals == sorted(totals, reverse=True)  # only shrinks
    clock.t = 61
    assert b.expired()


def test_fast_run_keeps_requested_total():
    clock = FakeClock()
    b = TimeBudget(10.0, 0, 300, clock=clock)
    for done in range(1, 100):
        clock.t += 0.01
        assert b.update(done) == 300
    assert not b.expired()


def test_after_step_ends_the_run_once_the_budget_is_spent():
    clock = FakeClock()
    b = TimeBudget(1.0, 0, 1000, clock=clock)
    clock.t = 1.0
    assert b.after_step(1) == 1000  # not measured yet: the requested total
    clock.t = 61
    assert b.after_step(7) == 7 and b.total == 7
    assert TimeBudget(None, 0, 50).after_step(3) == 50
