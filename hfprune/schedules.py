"""Sparsity schedules: pure functions of the training step.

A schedule gives the *shape* of the ramp; the target comes from `PruningConfig.sparsity` (or a per-module
override), so one schedule serves every module. ``schedule(step, final)`` returns the sparsity to apply at
``step``. Schedules hold no state, so resuming a run only needs the step counter.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .registry import Registry, SerializableComponent


SCHEDULES: Registry[Schedule] = Registry("schedule")


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a sparsity in [0, 1); got {value!r}.")


@dataclass(frozen=True)
class Schedule(SerializableComponent):
    """Base class. Subclasses implement `__call__(step, final)`."""

    def __call__(self, step: int, final: float) -> float:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement __call__(step, final)")

    @property
    def end(self) -> int:
        """First step at which the schedule has reached its final value."""
        return 0

    def progress(self, step: int) -> float:
        """Fraction of the ramp done at ``step``, in [0, 1] (1 for constant); drives thresholds and lambdas."""
        return 1.0


@SCHEDULES.register("constant")
@dataclass(frozen=True)
class ConstantSchedule(Schedule):
    """Prune to the final sparsity at once (one-shot), and keep it."""

    def __call__(self, step: int, final: float) -> float:
        return final


@dataclass(frozen=True)
class _RampSchedule(Schedule):
    initial: float = 0.0
    start_step: int = 0
    end_step: int = 1000
    every: int = 1

    def validate(self) -> None:
        _check_fraction("initial", self.initial)
        if self.start_step < 0 or self.end_step <= self.start_step:
            raise ConfigError(
                f"Need 0 <= start_step < end_step; got start_step={self.start_step}, end_step={self.end_step}."
            )
        if self.every < 1:
            raise ConfigError(f"every (pruning frequency in steps) must be >= 1; got {self.every}.")

    @property
    def end(self) -> int:
        return self.end_step

    def _progress(self, step: int) -> float:
        # Masks change only every `every` steps (Zhu & Gupta's pruning frequency), so quantize the step.
        if step <= self.start_step:
            return 0.0
        if step >= self.end_step:
            return 1.0
        quantized = self.start_step + ((step - self.start_step) // self.every) * self.every
        return (quantized - self.start_step) / (self.end_step - self.start_step)

    def _ramp(self, progress: float) -> float:  # pragma: no cover - abstract
        raise TypeError

    def progress(self, step: int) -> float:
        return 1.0 - self._ramp(self._progress(step))

    def __call__(self, step: int, final: float) -> float:
        # A per-module override can ask for less than the global initial sparsity; never overshoot it.
        initial = min(self.initial, final)
        return final + (initial - final) * self._ramp(self._progress(step))


@SCHEDULES.register("linear")
@dataclass(frozen=True)
class LinearSchedule(_RampSchedule):
    """Sparsity grows linearly from ``initial`` at ``start_step`` to the final value at ``end_step``.

    Args:
        initial (`float`, defaults to 0.0): Sparsity held until ``start_step`` (the warm-up).
        start_step (`int`, defaults to 0): Last step of the warm-up.
        end_step (`int`, defaults to 1000): Step at which the final sparsity is reached.
        every (`int`, defaults to 1): Masks are updated every ``every`` steps.
    """

    def _ramp(self, progress: float) -> float:
        return 1.0 - progress


@SCHEDULES.register("cubic")
@dataclass(frozen=True)
class CubicSchedule(_RampSchedule):
    """The cubic schedule of Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f) * (1 - p)^3``.

    Sparsity rises fast while the network has many redundant weights, then slowly near the target. ``p`` is the
    fraction of the ramp done, counted in whole multiples of ``every``. Movement pruning (Sanh et al. 2020) uses it
    with a warm-up (``start_step``) and a cool-down after ``end_step``.

    Example:
        >>> round(CubicSchedule(start_step=0, end_step=100)(50, final=0.8), 6)
        0.7
    """

    def _ramp(self, progress: float) -> float:
        return (1.0 - progress) ** 3
