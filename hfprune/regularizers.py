"""Training-time penalties that prepare a model for a pruning criterion, as components the trainer sums.

The trainer knows no method: it binds each regularizer it is given to the model once (`Regularizer.bind`) and adds
the bound penalty to every training step's loss, as it adds the pruner's own penalty on learned scores
(`Pruner.regularization_loss`, e.g. soft movement's L1 ramp).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import ConfigError


@dataclass(frozen=True)
class Regularizer:
    """A penalty added to the training loss. Subclasses set `log_name` and implement `bind`."""

    #: The key under which the trainer logs the term.
    log_name = "regularizer_loss"

    def bind(self, model: nn.Module) -> Callable[[], Tensor]:
        """The penalty of ``model``, as a function called every training step; what it needs from the model is
        found here, once. Refuses a model the penalty cannot apply to."""
        raise NotImplementedError


@dataclass(frozen=True)
class BatchNormL1(Regularizer):
    """Network slimming (Liu et al. 2017): ``weight * sum |gamma|`` over every BatchNorm scale, so that
    ``bn_scale`` channel pruning afterwards finds the channels the network learned to switch off.

    Args:
        weight (`float`): Penalty weight (the paper uses 1e-4 to 1e-5 for ImageNet-scale training).
    """

    weight: float
    log_name = "bn_l1_loss"

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"bn_l1 must be >= 0; got {self.weight}.")

    def bind(self, model: nn.Module) -> Callable[[], Tensor]:
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
        if self.weight and not norms:
            raise ConfigError("bn_l1 > 0 penalizes BatchNorm scales, but the model has no BatchNorm layer.")
        return lambda: self.weight * sum(norm.weight.abs().sum() for norm in norms)  # type: ignore[return-value]


@dataclass(frozen=True)
class Polarization(Regularizer):
    """Polarization (Zhuang et al. 2020): ``weight * sum(t * |gamma| - |gamma - mean(gamma)|)`` over every BatchNorm
    scale, the mean taken over all of them. The L1 term pushes scales down as network slimming's does; the second
    term pushes them away from their mean, so that they split into a group near 0 and a group clearly above it,
    and a threshold in the gap (`polarization_threshold`) separates the channels to prune from the rest instead of
    cutting through a continuum. The paper clamps scales to [0, 1]; train with ``clamp=True`` to do the same.

    Args:
        weight (`float`): Penalty weight (lambda; the paper uses about 1e-4 on CIFAR).
        t (`float`, defaults to 1.2): Balance of the L1 term against the polarizing term; larger prunes more.
        clamp (`bool`, defaults to True): Clamp every BatchNorm scale to [0, 1] before each forward pass of the
            bound model, as the paper's training does (a scale can then never turn negative).
    """

    weight: float
    t: float = 1.2
    clamp: bool = True
    log_name = "polarization_loss"

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"The polarization weight must be >= 0; got {self.weight}.")
        if self.t <= 0:
            raise ConfigError(f"Polarization t must be > 0 (the paper uses 0.6 to 1.6); got {self.t}.")

    def bind(self, model: nn.Module) -> Callable[[], Tensor]:
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
        if not norms:
            raise ConfigError("Polarization penalizes BatchNorm scales, but the model has no BatchNorm layer.")

        if self.clamp:
            # Before each forward, not in the penalty: the forward has already used the scales by then.
            for norm in norms:
                if not getattr(norm, "_hfprune_clamped", False):  # bound again (a second trainer): one hook is enough
                    norm.register_forward_pre_hook(_clamp_scale)
                    norm._hfprune_clamped = True

        def penalty() -> Tensor:
            scales = torch.cat([norm.weight.reshape(-1) for norm in norms])
            return self.weight * (self.t * scales.abs().sum() - (scales - scales.mean()).abs().sum())

        return penalty


@torch.no_grad()
def _clamp_scale(norm: nn.Module, inputs: tuple) -> None:
    norm.weight.clamp_(0.0, 1.0)


def polarization_threshold(scales: Tensor, bins: int = 100) -> float:
    """The scale in the middle of the widest empty stretch of a histogram of ``scales`` (all BatchNorm scales of a
    model) below their mean: where a polarized network separates the channels it switched off from the others.
    Returns 0.0 when the histogram has no empty bin below the mean (the scales did not polarize)."""
    values = scales.detach().float().abs().reshape(-1)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return 0.0
    counts = torch.histc(values, bins=bins, min=low, max=high)
    width = (high - low) / bins
    limit = int((float(values.mean()) - low) / width)
    best, start, best_range = 0, None, None
    for index in range(min(limit, bins)):
        if counts[index] == 0:
            start = index if start is None else start
            if index - start + 1 > best:
                best, best_range = index - start + 1, (start, index)
        else:
            start = None
    if best_range is None:
        return 0.0
    return low + width * (best_range[0] + best_range[1] + 1) / 2
