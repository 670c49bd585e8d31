"""A small live plot of a training run (QPainter, no plotting library): the training loss (left
axis) and the validation score on the held-out part (right axis, 0-1) against the step.

The data is built in the worker (``FineTuneProgress.loss`` / ``.val_f1`` are tuples of
``(step, value)``); :meth:`CurvePlot.set_curves` only stores it and asks for a repaint, which Qt
coalesces, so the plot costs the main thread one paint per update (the worker sends at most five
a second).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["CurvePlot"]

LOSS_COLOR = QColor(80, 160, 255)
VAL_LOSS_COLOR = QColor(150, 200, 255)
F1_COLOR = QColor(255, 150, 40)
BEFORE_COLOR = QColor(170, 170, 170)


def _smooth(values: Sequence[float], n: int = 10) -> list[float]:
    """A running mean over ``n`` steps (the per-step loss of batch 2 is noisy)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= n:
            acc -= values[i - n]
        out.append(acc / min(i + 1, n))
    return out


class CurvePlot(QWidget):
    """Training loss and validation F1 against the step."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.loss: tuple = ()
        self.val_loss: tuple = ()
        self.val_f1: tuple = ()
        self.f1_before: float | None = None
        self.total: int = 0
        self.paints = 0
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("Training loss (blue, running mean of 10 steps; light blue: validation loss) and "
                        "F1 at IoU 0.5 on the held-out part (orange; grey dashes: the base model's)")

    def sizeHint(self) -> QSize:
        return QSize(260, 170)

    def clear(self) -> None:
        self.set_curves((), (), (), None, 0)

    def set_curves(self, loss: Sequence, val_loss: Sequence, val_f1: Sequence, f1_before: float | None,
                   total: int = 0) -> None:
        self.loss, self.val_loss, self.val_f1 = tuple(loss), tuple(val_loss), tuple(val_f1)
        self.f1_before = f1_before
        self.total = int(total)
        self.update()

    # ------------------------------------------------------------------ drawing
    def paintEvent(self, event) -> None:
        self.paints += 1
        p = QPainter(self)
        try:
            self._paint(p)
        finally:
            p.end()

    def _paint(self, p: QPainter) -> None:
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        fg = pal.color(pal.ColorRole.WindowText)
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        p.setFont(font)
        fm = p.fontMetrics()
        w, h = self.width(), self.height()
        left, right, top, bottom = fm.horizontalAdvance("0.000") + 8, fm.horizontalAdvance("1.0") + 10, fm.height() + 6, fm.height() + 6
        area = QRectF(left, top, max(10, w - left - right), max(10, h - top - bottom))
        p.setPen(QPen(fg, 1))
        p.drawRect(area)

        steps = [s for s, _ in self.loss] + [s for s, _ in self.val_f1] + [s for s, _ in self.val_loss]
        x_max = max([self.total, *steps, 1])
        x_min = 0
        losses = [v for _, v in self.loss] + [v for _, v in self.val_loss]
        finite = [v for v in losses if math.isfinite(v)]
        y_lo = min(finite) if finite else 0.0
        y_hi = max(finite) if finite else 1.0
        if y_hi - y_lo < 1e-6:
            y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
        pad = 0.05 * (y_hi - y_lo)
        y_lo, y_hi = max(0.0, y_lo - pad), y_hi + pad

        def px(step: float) -> float:
            return area.left() + (step - x_min) / max(1e-9, x_max - x_min) * area.width()

        def py_loss(v: float) -> float:
            return area.bottom() - (v - y_lo) / (y_hi - y_lo) * area.height()

        def py_f1(v: float) -> float:
            return area.bottom() - max(0.0, min(1.0, v)) * area.height()

        # axes labels
        p.drawText(QRectF(0, area.top() - fm.height() / 2, left - 4, fm.height()),
                   int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter), f"{y_hi:.3g}")
        p.drawText(QRectF(0, area.bottom() - fm.height() / 2, left - 4, fm.height()),
                   int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter), f"{y_lo:.3g}")
        p.drawText(QRectF(area.right() + 3, area.top() - fm.height() / 2, right, fm.height()),
                   int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), "1")
        p.drawText(QRectF(area.right() + 3, area.bottom() - fm.height() / 2, right, fm.height()),
                   int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), "0")
        p.drawText(QRectF(area.left(), area.bottom() + 2, area.width(), fm.height()),
                   int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop), "0")
        p.drawText(QRectF(area.left(), area.bottom() + 2, area.width(), fm.height()),
                   int(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop), "step")
        p.drawText(QRectF(area.left(), area.bottom() + 2, area.width(), fm.height()),
                   int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop), str(x_max))

        # legend
        x = area.left()
        for color, text in ((LOSS_COLOR, "loss"), (VAL_LOSS_COLOR, "val loss"), (F1_COLOR, "held-out F1"),
                            (BEFORE_COLOR, "base F1")):
            p.setPen(QPen(color, 3))
            p.drawLine(QPointF(x, top / 2), QPointF(x + 12, top / 2))
            p.setPen(QPen(fg, 1))
            p.drawText(QPointF(x + 15, top / 2 + fm.ascent() / 2 - 1), text)
            x += 20 + fm.horizontalAdvance(text)

        p.save()
        p.setClipRect(area.adjusted(-2, -2, 2, 2))
        if self.f1_before is not None and math.isfinite(self.f1_before):
            pen = QPen(BEFORE_COLOR, 1.5, Qt.PenStyle.DashLine)
            p.setPen(pen)
            y = py_f1(self.f1_before)
            p.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
        if self.loss:
            ys = _smooth([v for _, v in self.loss])
            self._polyline(p, [(px(s), py_loss(v)) for (s, _), v in zip(self.loss, ys) if math.isfinite(v)],
                           LOSS_COLOR, 1.5)
        if self.val_loss:
            self._polyline(p, [(px(s), py_loss(v)) for s, v in self.val_loss if math.isfinite(v)], VAL_LOSS_COLOR,
                           1.5, dots=True)
        if self.val_f1:
            self._polyline(p, [(px(s), py_f1(v)) for s, v in self.val_f1], F1_COLOR, 2.0, dots=True)
        p.restore()

    @staticmethod
    def _polyline(p: QPainter, pts: list[tuple[float, float]], color: QColor, width: float, dots: bool = False) -> None:
        if not pts:
            return
        path = QPainterPath(QPointF(*pts[0]))
        for x, y in pts[1:]:
            path.lineTo(QPointF(x, y))
        p.setPen(QPen(color, width))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawPath(path)
        if dots:
            p.setBrush(color)
            for x, y in pts:
                p.drawEllipse(QPointF(x, y), 2.5, 2.5)
            p.setBrush(Qt.BrushStyle.NoBrush)
