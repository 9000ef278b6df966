"""Attach, update and remove weight masks. No scoring logic lives here.

Masks are `torch.nn.utils.parametrize` parametrizations: the module's ``weight`` is computed as
``original * mask`` on every access, so the forward pass sees the pruned weight and the gradient reaching
``original`` is zero wherever the mask is zero (kept weights train, removed ones stay frozen). Removing the
parametrization with ``merge=True`` writes the zeros into a plain ``weight`` parameter, which leaves no
``original``/``mask`` keys behind in a state dict.

Under FSDP2 (``fully_shard``) each rank holds a shard of ``original`` outside the forward pass, while masks stay
whole buffers, the same on every rank (see `hfprune.sharding`); `masked_weight` reads a weight whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .sharding import full_tensor, is_sharded, shard_like


class _StraightThroughScores(torch.autograd.Function):
    """Forward: the binary mask. Backward: the mask's gradient, summed per unit, goes to the scores.

    This is the straight-through estimator of movement pruning (Sanh et al. 2020): scores receive
    ``dL/dW' * W`` (W' = W * M), so weights moving away from zero raise their score even while masked.
    """

    @staticmethod
    def forward(ctx, mask: Tensor, scores: Tensor, reduce: Callable[[Tensor], Tensor]) -> Tensor:  # noqa: ANN001
        ctx.reduce = reduce
        ctx.scores_shape = scores.shape
        return mask

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:  # noqa: ANN001
        # Sum per unit in float32 (the scores' dtype): in a half-precision model ``grad`` is bf16/fp16, and a
        # head's sum runs over thousands of elements.
        return None, ctx.reduce(grad.float()).reshape(ctx.scores_shape), None


class WeightMask(nn.Module):
    """Parametrization multiplying a weight by a boolean mask (a buffer, so checkpoints carry it).

    With ``scores`` (learned importance, one per unit), the mask is still the binary buffer in the forward pass,
    but gradients flow to the scores through a straight-through estimator. ``reduce`` maps a weight-shaped tensor
    to unit-shaped sums (the structure's `reduce`).
    """

    def __init__(
        self, mask: Tensor, scores: Tensor | None = None, reduce: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))
        self.scores = None if scores is None else nn.Parameter(scores)
        self._reduce = reduce

    def forward(self, weight: Tensor) -> Tensor:
        mask = self.mask.to(weight.dtype)
        if is_sharded(weight):
            # Read outside FSDP2's forward (which gathers ``original`` first): this rank's shard of the mask, so
            # that shapes and the masked values read as everywhere else.
            return weight * shard_like(mask, weight)
        if self.scores is not None and torch.is_grad_enabled():
            mask = _StraightThroughScores.apply(mask, self.scores, self._reduce)
        return weight * mask


def find_mask(module: nn.Module, param_name: str = "weight") -> WeightMask | None:
    """The `WeightMask` attached to ``module.<param_name>``, if any."""
    if not parametrize.is_parametrized(module, param_name):
        return None
    for parametrization in module.parametrizations[param_name]:  # type: ignore[index,union-attr]
        if isinstance(parametrization, WeightMask):
            return parametrization
    return None


def set_mask_(
    module: nn.Module,
    mask: Tensor,
    param_name: str = "weight",
    scores: Tensor | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> None:
    """Attach ``mask`` to ``module.<param_name>``, or replace the mask already attached (in place).

    ``scores``/``reduce`` are only used when attaching: they make the scores a learned parameter (movement).
    """
    existing = find_mask(module, param_name)
    if existing is not None:
        with torch.no_grad():
            existing.mask.copy_(mask.to(existing.mask.device))
        return
    weight = getattr(module, param_name)
    if scores is not None:
        scores = scores.to(device=weight.device, dtype=torch.float32)
    parametrization = WeightMask(mask.to(weight.device), scores, reduce)
    parametrize.register_parametrization(module, param_name, parametrization, unsafe=True)


def masked_weight(module: nn.Module, param_name: str = "weight") -> Tensor:
    """``module.<param_name>`` as the forward pass sees it (mask applied), whole even when FSDP2 shards it."""
    raw = get_raw_weight(module, param_name)
    if not is_sharded(raw):
        return getattr(module, param_name)
    whole, mask = full_tensor(raw), find_mask(module, param_name)
    return whole if mask is None else whole * mask.mask.to(whole.dtype)


def get_raw_weight(module: nn.Module, param_name: str = "weight") -> Tensor:
    """The unmasked parameter (what the optimizer updates)."""
    if parametrize.is_parametrized(module, param_name):
        return module.parametrizations[param_name].original  # type: ignore[index,union-attr]
    return getattr(module, param_name)


def remove_mask_(module: nn.Module, param_name: str = "weight", merge: bool = True) -> None:
    """Detach the mask. ``merge=True`` keeps the zeros (permanent pruning); ``False`` restores the dense weight."""
    if parametrize.is_parametrized(module, param_name):
        parametrize.remove_parametrizations(module, param_name, leave_parametrized=merge)


def iter_masked_modules(model: nn.Module, param_name: str = "weight") -> Iterator[tuple[str, nn.Module, WeightMask]]:
    """Every ``(name, module, mask)`` in ``model`` that carries a `WeightMask`."""
    for name, module in model.named_modules():
        mask = find_mask(module, param_name)
        if mask is not None:
            yield name, module, mask


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with masks multiplied in and parametrization keys folded back to plain names.

    Lets a model be saved mid-training without touching its parametrizations.
    """
    state = model.state_dict()
    for name, module, _ in iter_masked_modules(model):
        prefix = f"{name}." if name else ""
        for key in [k for k in state if k.startswith(f"{prefix}parametrizations.weight.")]:
            del state[key]
        with torch.no_grad():
            state[f"{prefix}weight"] = module.weight.detach().clone()
    return state


def merge_masks_(model: nn.Module) -> None:
    """Make every mask in ``model`` permanent (zeros written into plain parameters)."""
    for module in list(model.modules()):
        for param_name in ("weight", "bias"):
            remove_mask_(module, param_name, merge=True)
