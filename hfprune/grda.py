"""gRDA, the generalized regularized dual averaging optimizer of directional pruning (Chao et al. 2020).

Plain SGD accumulates ``a_n = w_0 - sum_i lr_i * g_i``; gRDA returns the weights ``w_n = sign(a_n) * max(|a_n| -
g_n, 0)`` with a soft threshold ``g_n = c * sum_i (lr_i^(1/2 + mu) * (i^mu - (i-1)^mu))`` (``c * lr^(1/2 + mu) *
n^mu`` at a constant rate) that grows with the step count. Weights whose accumulated movement stays below it are
exactly zero, so sparsity emerges during training without a pruning threshold or schedule, and the paper shows the
solution lies on a direction of small loss change ("directional pruning"). The threshold uses each step's learning
rate, so learning-rate schedules (and `transformers.Trainer`'s) work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError


class GRDA(torch.optim.Optimizer):
    """Generalized regularized dual averaging.

    Args:
        params (`Iterable`): Parameters or parameter groups (a group may set its own ``c``: ``c=0`` leaves its
            parameters dense, e.g. biases and norms).
        lr (`float`, defaults to 0.01): Learning rate (the paper uses SGD-like rates, e.g. 0.1 on CIFAR).
        c (`float`, defaults to 0.005): Strength of the soft threshold; larger is sparser (the paper: 1e-4 to 5e-3).
        mu (`float`, defaults to 0.7): Growth of the threshold with the step count, in (0.5, 1) (the paper: 0.51 to
            0.8; larger prunes earlier).

    Example:
        ```python
        trainer = PruningTrainer(model=model, args=args, train_dataset=train,
                                 optimizer_cls_and_kwargs=(GRDA, {"lr": 0.05, "c": 0.002, "mu": 0.6}))
        ```
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.01, c: float = 0.005, mu: float = 0.7, **extra: Any):
        if not lr > 0:
            raise ConfigError(f"GRDA lr must be > 0; got {lr}.")
        if c < 0:
            raise ConfigError(f"GRDA c must be >= 0 (0 is plain dual averaging, no pruning); got {c}.")
        if not 0.5 < mu < 1.0:
            raise ConfigError(f"GRDA mu must be in (0.5, 1) (the paper uses 0.51 to 0.8); got {mu}.")
        # `extra` takes what `transformers.Trainer` puts in its parameter groups (weight_decay), which gRDA ignores:
        # its soft threshold is the regularizer.
        super().__init__(params, {"lr": lr, "c": c, "mu": mu, **extra})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, c, mu = group["lr"], group["c"], group["mu"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["accumulator"] = param.detach().clone(memory_format=torch.preserve_format)
                    # A Python float, not a tensor: load_state_dict would cast a tensor to the parameter's dtype.
                    state["threshold"] = 0.0
                state["step"] += 1
                step = float(state["step"])
                state["accumulator"].add_(param.grad, alpha=-lr)
                state["threshold"] = float(state["threshold"]) + c * lr ** (0.5 + mu) * (step**mu - (step - 1.0) ** mu)
                accumulator = state["accumulator"]
                shrunk = (accumulator.abs() - float(state["threshold"])).clamp_(min=0.0)
                param.copy_(torch.sign(accumulator) * shrunk)
        return loss


def grda_sparsity(optimizer: GRDA) -> float:
    """Share of exact zeros among the parameters ``optimizer`` thresholds (groups with ``c > 0``)."""
    zeros = total = 0
    for group in optimizer.param_groups:
        if group["c"] > 0:
            for param in group["params"]:
                zeros += int((param == 0).sum())
                total += param.numel()
    return zeros / total if total else 0.0
