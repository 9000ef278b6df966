"""Sparsity schedules: pure functions of the training step.

A schedule gives the *shape* of the ramp; the target comes from `PruningConfig.sparsity` (or a per-module
override), so one schedule serves every module. ``schedule(step, final)`` returns the sparsity to apply at
``step``. Schedules hold no state, so resuming a run only needs the step counter.
"""

from __future__ import annotations

import dataclasses
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

    @property
    def relative(self) -> bool:
        """Whether the schedule is given in shares of the run rather than in steps."""
        return False

    def resolved(self, total_steps: int | None) -> Schedule:
        """The schedule in steps for a run of ``total_steps`` optimizer steps."""
        return self


@SCHEDULES.register("constant")
@dataclass(frozen=True)
class ConstantSchedule(Schedule):
    """Prune to the final sparsity at once (one-shot), and keep it."""

    def __call__(self, step: int, final: float) -> float:
        return final


def _is_fraction(value: float) -> bool:
    # A float in (0, 1] is a share of the run, as transformers reads a float warmup_steps; ints are steps.
    return isinstance(value, float) and 0.0 < value <= 1.0


@dataclass(frozen=True)
class _RampSchedule(Schedule):
    initial: float = 0.0
    start_step: float = 0
    end_step: float = 1000
    every: int = 1

    def validate(self) -> None:
        _check_fraction("initial", self.initial)
        for name in ("start_step", "end_step"):
            value = getattr(self, name)
            if isinstance(value, float) and not _is_fraction(value):
                if not value.is_integer():
                    raise ConfigError(
                        f"{name}={value!r}: give a step (a whole number, e.g. 100) or a share of the run's training "
                        "steps (a float in (0, 1], e.g. 0.1)."
                    )
                object.__setattr__(self, name, int(value))  # 10.0 (or 0.0) is the step 10 (0)
        if self.start_step < 0 or (not self.relative and self.end_step <= self.start_step):
            raise ConfigError(
                f"Need 0 <= start_step < end_step; got start_step={self.start_step}, end_step={self.end_step}."
            )
        if self.relative and type(self.start_step) is type(self.end_step) and self.end_step <= self.start_step:
            raise ConfigError(f"Need start_step < end_step; got the shares {self.start_step} and {self.end_step}.")
        if self.every < 1:
            raise ConfigError(f"every (pruning frequency in steps) must be >= 1; got {self.every}.")

    @property
    def relative(self) -> bool:
        """Whether warm-up or ramp end are shares of the run (resolved by `resolved` once its length is known)."""
        return _is_fraction(self.start_step) or _is_fraction(self.end_step)

    def resolved(self, total_steps: int | None) -> _RampSchedule:
        """This schedule in steps for a run of ``total_steps`` optimizer steps (itself when already in steps)."""
        if not self.relative:
            return self
        if total_steps is None or total_steps < 1:
            raise ConfigError(self._needs_length())

        def steps(value: float) -> int:
            return round(value * total_steps) if _is_fraction(value) else int(value)

        start, end = steps(self.start_step), steps(self.end_step)
        if end <= start:
            raise ConfigError(f"For a run of {total_steps} steps, start_step={self.start_step} and "
                              f"end_step={self.end_step} give the steps {start} and {end}; the ramp needs "
                              "start < end.")  # fmt: skip
        return dataclasses.replace(self, start_step=start, end_step=end)

    def _needs_length(self) -> str:
        return (f"The schedule's start_step={self.start_step} / end_step={self.end_step} are shares of the run, "
                "which needs the run's length: PruningTrainer knows it; with Pruner, pass total_steps=... (or use "
                "schedule.resolved(total_steps)).")  # fmt: skip

    @property
    def end(self) -> int:
        return int(self.end_step)

    def _progress(self, step: int) -> float:
        if self.relative:
            if step <= 0:
                return 0.0  # before the first step every run length gives the warm-up
            raise ConfigError(self._needs_length())
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
        start_step (`int` or `float`, defaults to 0): Last step of the warm-up; a float in (0, 1] is a share of
            the run's training steps (``0.1``: the first 10 %).
        end_step (`int` or `float`, defaults to 1000): Step (or share of the run) at which the final sparsity is
            reached; the steps after it hold the final mask (the cool-down).
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
    with a warm-up (``start_step``) and a cool-down after ``end_step``; ``start_step=0.1, end_step=0.7`` gives
    that shape (10 % dense, 30 % at the final mask) at any run length.

    Example:
        >>> round(CubicSchedule(start_step=0, end_step=100)(50, final=0.8), 6)
        0.7
    """

    def _ramp(self, progress: float) -> float:
        return (1.0 - progress) ** 3
