"""Training-time penalties that prepare a model for a pruning criterion, as components the trainer sums.

The trainer knows no method: it binds each regularizer it is given to the model once (`Regularizer.bind`) and adds
the bound penalty to every training step's loss, as it adds the pruner's own penalty on learned scores
(`Pruner.regularization_loss`, e.g. soft movement's L1 ramp).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
