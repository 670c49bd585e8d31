"""The one CLI progress printer (cli/_progress.py)."""

import io
from dataclasses import dataclass

from napari_neuroseg.cli._progress import ProgressPrinter
from napari_neuroseg.runtime.progress import Progress


@dataclass(frozen=True)
class _Record(Progress):
    record: dict | None = None


def _clock(times):
    it = iter(times)
    return lambda: next(it)


def test_log_mode_one_line_per_step_and_quiet():
    out = io.StringIO()
    show = ProgressPrinter(stream=out, in_place=False)
    for p in (Progress(1, 3, "a"), Progress(1, 3, "a tick"), Progress(2, 3, "b"), Progress(3, 3, "c")):
        show(p)
    show.end()
    assert out.getvalue() == "[1/3] a\n[2/3] b\n[3/3] c\n"
    quiet = io.StringIO()
    ProgressPrinter(stream=quiet, quiet=True, in_place=False)(Progress(1, 1, "x"))
    assert quiet.getvalue() == ""


def test_terminal_mode_redraws_one_line_and_ends_it():
    out = io.StringIO()
    with ProgressPrinter(stream=out, in_place=True, clock=_clock([0.0, 0.1, 0.7, 0.8])) as show:
        for p in (Progress(1, 4, "a"), Progress(2, 4, "b"), Progress(3, 4, "c"), Progress(4, 4, "d")):
            show(p)
    text = out.getvalue()
    assert text.count("\r") == 3 and "[2/4]" not in text  # b came within 0.5 s of a; the last always
    assert text.endswith("[4/4] d".ljust(79) + "\n")


def test_min_gap_filter_and_format():
    out = io.StringIO()
    show = ProgressPrinter(stream=out, in_place=False, one_per_step=False, min_gap=2.0,
                           clock=_clock([0.0, 1.0, 1.5, 5.0, 5.1]), fmt=lambda p: p.message,
                           when=lambda p: p.message != "hidden")
    show(Progress(1, 9, "first"))
    show(Progress(2, 9, "too soon"))
    show(_Record(3, 9, "file done", record={"status": "done"}))  # data: always
    show(Progress(4, 9, "hidden"))
    show(Progress(5, 9, "later"))
    show(Progress(9, 9, "end"))  # the last step: always
    assert out.getvalue().splitlines() == ["first", "file done", "later", "end"]
