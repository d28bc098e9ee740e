"""The job page's loss chart, drawn by the server as SVG coordinates (no chart library, no script).

The template draws what this computes: a polyline and one marker per point for the training loss
(one point per ``progress`` event, by step), and the validation loss the job measured after
training, at the last step. Only numbers reach the SVG, and the template escapes them anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 640
HEIGHT = 260
LEFT = 56
RIGHT = 16
TOP = 16
BOTTOM = 36


@dataclass(frozen=True)
class Point:
    step: int
    loss: float
    x: float
    y: float


@dataclass(frozen=True)
class Tick:
    label: str
    position: float


@dataclass(frozen=True)
class LossChart:
    training: list[Point]
    validation: list[Point]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.training)

    @property
    def empty(self) -> bool:
        return not self.training and not self.validation


def loss_chart(training: Sequence[tuple[int, float]], validation: Sequence[float], total_steps: int) -> LossChart:
    """Scale (step, loss) pairs into the plot area; validation losses sit at the last step."""
    last_step = max([total_steps, *(step for step, _ in training), 1])
    validation_pairs = [(last_step, loss) for loss in validation]
    losses = [loss for _, loss in [*training, *validation_pairs]]
    low, high = (min(losses), max(losses)) if losses else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM

    def x_of(step: int) -> float:
        return LEFT + plot_w * step / last_step

    def y_of(loss: float) -> float:
        return TOP + plot_h * (high - loss) / (high - low)

    def points(pairs: Sequence[tuple[int, float]]) -> list[Point]:
        return [Point(step, loss, x_of(step), y_of(loss)) for step, loss in pairs]

    x_ticks = [Tick(str(round(last_step * i / 4)), x_of(round(last_step * i / 4))) for i in range(5)]
    y_ticks = [Tick(f"{low + (high - low) * i / 4:.3g}", y_of(low + (high - low) * i / 4)) for i in range(5)]
    return LossChart(points(training), points(validation_pairs), x_ticks, y_ticks)
