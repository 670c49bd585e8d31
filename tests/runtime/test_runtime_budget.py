"""TimeBudget: the step schedule is fitted to the wall-clock budget, never beyond the requested total."""

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
    fitted = totals[totals.index(min(totals)):]
    assert all(200 <= t <= 221 for t in fitted)  # a steady rate: re-estimates stay put
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


def test_a_slow_start_is_corrected_later_up_to_the_requested_total():
    """The first estimate falls while the machine is busy; when steps get faster, the later
    re-estimates give the run back the steps that fit (but never more than requested)."""
    clock = FakeClock()
    b = TimeBudget(1.0, 0, 10_000, warmup=10, clock=clock)  # 60 s
    totals = []
    for done in range(1, 10_000):
        if b.expired():
            break
        clock.t += 0.5 if clock.t < 15 else 0.1  # 2 steps/s for 15 s, then 10 steps/s
        totals.append(b.update(done))
    first = totals[25]  # after the first estimate (slow rate)
    assert first < 200
    assert totals[-1] > 2 * first and totals[-1] <= 10_000
    # the run reached (about) its fitted total when the time was up
    assert abs(totals[-1] - len(totals)) < 0.15 * totals[-1]
    small = TimeBudget(1.0, 0, 120, warmup=10, clock=FakeClock())
    for done in range(1, 100):
        small.clock.t += 0.01
        assert small.update(done) == 120  # fast: the requested total, not more
