"""Importance criteria: how much each weight matters. Higher score = keep.

An importance is a frozen dataclass (it is part of a config) plus a small state dict per pruned tensor that
the `Pruner` owns (it changes during training and is checkpointed). Criteria return one score per weight
element; `structures` reduces them to blocks, heads or channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .errors import ConfigError
from .registry import Registry, SerializableComponent


IMPORTANCES: Registry[Importance] = Registry("importance")


@dataclass(frozen=True)
class Importance(SerializableComponent):
    """Base class of importance criteria.

    Subclasses set `requires_grad` (whether `update` needs gradients, hence data) and implement `score`.
    """

    requires_grad: ClassVar[bool] = False

    def init_state(self, weight: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-tensor state (accumulators, fixed random draws); empty for stateless criteria."""
        return {}

    def update(self, state: dict[str, Tensor], weight: Tensor, grad: Tensor) -> None:
        """Accumulate statistics after a backward pass; a no-op for data-free criteria."""

    def score(self, state: dict[str, Tensor], weight: Tensor) -> Tensor:
        """Elementwise scores, same shape as ``weight``; larger means more important."""
        raise TypeError(f"{type(self).__name__} must implement score()")


@IMPORTANCES.register("magnitude", "l1")
@dataclass(frozen=True)
class MagnitudeImportance(Importance):
    """Weight magnitude (Han et al. 2015). The ShrinkBench baseline.

    Args:
        p (`int`, defaults to 1): Norm used when elements are grouped into blocks or structures: scores are
            ``|w|^p``, summed per group. For unstructured pruning 1 and 2 give the same ranking.
    """

    p: int = 1

    def __post_init__(self) -> None:
        if self.p not in (1, 2):
            raise ConfigError(f"MagnitudeImportance.p must be 1 (L1) or 2 (L2); got {self.p!r}.")

    def score(self, state: dict[str, Tensor], weight: Tensor) -> Tensor:
        return weight.detach().abs().float().pow(self.p)


@IMPORTANCES.register("l2")
@dataclass(frozen=True)
class L2MagnitudeImportance(MagnitudeImportance):
    """`MagnitudeImportance` with ``p=2``: groups are ranked by their L2 norm."""

    p: int = 2


@IMPORTANCES.register("random")
@dataclass(frozen=True)
class RandomImportance(Importance):
    """Uniform random scores: the sanity baseline every criterion should beat.

    Scores are drawn once per tensor (seeded from `PruningConfig.seed`) and kept in the pruner state, so a gradual
    schedule removes nested sets of weights and a resumed run draws nothing new.
    """

    def init_state(self, weight: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"scores": torch.rand(weight.shape, generator=generator, dtype=torch.float32).to(weight.device)}

    def score(self, state: dict[str, Tensor], weight: Tensor) -> Tensor:
        return state["scores"]


@IMPORTANCES.register("taylor", "gradient_weight")
@dataclass(frozen=True)
class TaylorImportance(Importance):
    """First-order Taylor estimate of the loss change when a weight is removed: ``|w * dL/dw|``.

    This is ShrinkBench's "gradient x weight" baseline (Molchanov et al. 2017). It is averaged over every backward
    pass seen by `Pruner.accumulate`, so give it a few batches of real data.
    """

    requires_grad: ClassVar[bool] = True

    def init_state(self, weight: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"sum": torch.zeros_like(weight, dtype=torch.float32), "count": torch.zeros((), dtype=torch.long)}

    def update(self, state: dict[str, Tensor], weight: Tensor, grad: Tensor) -> None:
        state["sum"] += (weight.detach().float() * grad.detach().float()).abs()
        state["count"] += 1

    def score(self, state: dict[str, Tensor], weight: Tensor) -> Tensor:
        if int(state["count"]) == 0:
            raise ConfigError(
                "TaylorImportance has seen no gradients. Run forward/backward passes and call Pruner.accumulate(), "
                "or pass a dataloader to prune_()."
            )
        return state["sum"] / state["count"].float()
