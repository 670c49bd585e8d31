"""throttle(): progress steps rate-limited by time (the progress rule for GUIs)."""

from __future__ import annotations

import pytest

from napari_neuroseg.runtime.progress import Progress, StepClock, run_to_completion, throttle


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def job(n, clock, dt, log, data_every=0):
    try:
        for i in range(n):
            clock.t += dt
            yield Progress(i + 1, n, f"step {i + 1}")
            if data_every and (i + 1) % data_every == 0:
                yield ("data", i + 1)
        return "result"
    finally:
        log.append("closed")


def test_forwards_first_last_and_at_most_one_per_interval():
    clock, log = FakeClock(), []
    gen = throttle(job(1000, clock, 0.001, log), 0.1, clock=clock)
    out = []
    with pytest.raises(StopIteration) as stop:
        while True:
            out.append(next(gen))
    assert stop.value.value == "result"
    steps = [p.step for p in out]
    assert steps[0] == 1 and steps[-1] == 1000
    assert steps == sorted(steps)
    assert len(steps) <= 1 + 1000 * 0.001 / 0.1 + 1  # 1 s of work at 10 per second
    assert log == ["closed"]


def test_slow_steps_all_pass_and_data_is_never_dropped():
    clock, log = FakeClock(), []
    out = list(throttle(job(5, clock, 0.5, log), 0.1, clock=clock))
    assert [p.step for p in out] == [1, 2, 3, 4, 5]
    clock2 = FakeClock()
    items = list(throttle(job(100, clock2, 0.0001, [], data_every=10), 0.1, clock=clock2))
    assert [x for x in items if isinstance(x, tuple)] == [("data", k) for k in range(10, 101, 10)]
    assert items[-1] == Progress(100, 100, "step 100")


def test_should_stop_forwards_the_step_and_close_closes_the_job():
    clock, log = FakeClock(), []
    stop = {"now": False}
    gen = throttle(job(1000, clock, 0.0001, log), 0.1, should_stop=lambda: stop["now"],
                   clock=clock)
    assert next(gen).step == 1
    stop["now"] = True
    assert next(gen).step == 2  # would have been skipped without the stop request
    gen.close()
    assert log == ["closed"]


def test_a_new_phase_is_shown_before_its_work_not_after():
    """The step a job yields right before a long phase ("post-processing" after the last network
    tile, microseconds later) is forwarded at once: held back by the rate limit, the bar said
    "network: tile 1/1" through the whole post-processing."""
    from napari_neuroseg.runtime.progress import phase_of

    clock = FakeClock()

    def predict():
        for i in range(8):  # tiles, 1 ms apart: rate-limited
            clock.t += 0.001
            yield Progress(i + 1, 9, f"network: tile {i + 1}/8")
        yield Progress(8, 9, "post-processing")  # no time passes ...
        clock.t += 5.0  # ... then 5 s of work
        yield Progress(9, 9, "12 neurons")
        return "labels"

    shown = []  # (what the consumer got, when)
    gen = throttle(predict(), 0.1, clock=clock)
    with pytest.raises(StopIteration) as stop:
        while True:
            p = next(gen)
            shown.append((p.message, clock.t))
    assert stop.value.value == "labels"
    messages = [m for m, _ in shown]
    assert messages[0] == "network: tile 1/8" and messages[-2:] == ["post-processing", "12 neurons"]
    assert dict(shown)["post-processing"] == pytest.approx(0.008)  # before the 5 s, not after
    assert phase_of(Progress(3, 12, "network: tile 3/12")) == phase_of(Progress(4, 12, "network: tile 4/12"))
    assert phase_of(Progress(1, 1, "post-processing")) != phase_of(Progress(3, 12, "network: tile 3/12"))


def test_alternating_phases_are_still_rate_limited():
    """Messages that change phase at every step (two kinds of steps interleaved) pass at once
    only in a short burst, then about one per interval more: no flood of bar updates."""
    from napari_neuroseg.runtime.progress import PHASE_BURST

    clock = FakeClock()

    def flood():
        for i in range(1000):
            clock.t += 0.001
            yield Progress(i + 1, 1000, ("matching" if i % 2 else "skeletonising") + f" {i}")
        return None

    out = list(throttle(flood(), 0.1, clock=clock))
    # 1 s of steps: the first, 10 by the interval, PHASE_BURST + 10 by the phase rule, the last
    assert len(out) <= 1 + 10 + PHASE_BURST + 10 + 1, len(out)
    assert out[-1].step == 1000


def test_run_to_completion_through_throttle():
    clock = FakeClock()
    assert run_to_completion(throttle(job(50, clock, 0.01, []), clock=clock)) == "result"


def test_throttle_never_skips_steps_that_carry_data():
    """A batch file's summary row rides on a Progress (``record``): rate limiting must not drop it
    (the Batch dock lost table rows when several files ended within 0.1 s)."""
    from dataclasses import dataclass

    from napari_neuroseg.runtime.progress import Progress, carries_data, throttle

    @dataclass(frozen=True)
    class WithRecord(Progress):
        record: dict | None = None

    def job():
        for i in range(6):
            yield WithRecord(i, 6, "file", record={"i": i} if i % 2 else None)
        return "ok"

    clock = iter([0.0] * 100).__next__  # no time passes: only the first plain step is due
    out = list(throttle(job(), 0.1, clock=clock))
    assert [p.record["i"] for p in out if carries_data(p)] == [1, 3, 5]
    assert out[0].step == 0


def test_relay_maps_steps_returns_the_result_and_closes_the_sub_job():
    from napari_neuroseg.runtime.progress import Progress, relay

    closed = []

    def sub():
        try:
            yield 1
            yield 2
            return "done"
        finally:
            closed.append(True)

    def outer():
        result = yield from relay(sub(), lambda i: Progress(i, 2, "sub"))
        return result

    gen = outer()
    assert [p.step for p in gen] == [1, 2]
    assert closed == [True]
    gen2 = relay(sub(), lambda i: i)
    assert next(gen2) == 1
    gen2.close()
    assert closed == [True, True]


def test_step_clock_extrapolates_the_time_left_in_a_step():
    now = [100.0]
    clock = StepClock(lambda: now[0]).start()
    assert clock.left(10, 100) is None and clock.text(10, 100) == ""  # no time has passed
    now[0] = 100.5
    assert clock.left(50, 100) is None  # under a second: no estimate yet
    now[0] = 110.0
    assert clock.left(1, 100) is None  # 1 % done: too little to extrapolate from
    assert clock.left(25, 100) == pytest.approx(30.0)  # 10 s for a quarter: 30 s left
    assert clock.text(25, 100) == " — about 0:30 left"
    assert clock.text(1, 1000) == ""
    now[0] = 100.0 + 7200
    assert clock.text(50, 100) == " — about 2:00:00 left"
    assert clock.left(100, 100) == 0.0
