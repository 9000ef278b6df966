"""Turn unit scores into keep-masks at a requested sparsity, per tensor (local) or across tensors (global)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

from .errors import ConfigError


Scope = Literal["local", "global"]


def num_to_prune(num_units: int, sparsity: float) -> int:
    """How many of ``num_units`` to remove; rounding keeps the achieved sparsity within half a unit of the target."""
    return min(num_units, int(round(sparsity * num_units)))


def round_count(count: int, total: int, multiple: int, down: bool = False) -> int:
    """``count`` kept units rounded to the nearest multiple of ``multiple`` (at least one multiple, at most
    ``total``); 0 stays 0 (a layer that keeps nothing is skipped, not rounded up). ``down``: the multiple at or
    below ``count`` (possibly 0), for counts that a FLOPs or parameter budget caps."""
    if multiple <= 1 or count == 0:
        return count
    if down:
        return count if count == total else count // multiple * multiple
    return min(total, max(multiple, int(round(count / multiple)) * multiple))


def check_round_to(round_to: int, width: int, what: str = "this model's FFN layers", unit: str = "neurons") -> None:
    """Refuse a ``round_to`` wider than the layer it rounds: the layer would keep all its units, silently."""
    if round_to > width:
        raise ConfigError(
            f"round_to={round_to} is wider than {what} ({width} {unit}): rounding would keep all {width} {unit}, so "
            f"nothing would be pruned there. Use a round_to of at most {width} (a divisor of it, e.g. 8, keeps the "
            "widths even)."
        )


def _keep_all_but_lowest(scores: Tensor, k: int) -> Tensor:
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        # A stable sort makes ties (e.g. already-zero weights) resolve by position, so results are reproducible.
        order = torch.sort(scores.reshape(-1).float(), stable=True).indices
        keep[order[:k]] = False
    return keep


def select_local(scores: Tensor, sparsity: float) -> Tensor:
    """Keep-mask over ``scores`` (flat, one per unit) removing the lowest ``sparsity`` fraction."""
    return _keep_all_but_lowest(scores, num_to_prune(scores.numel(), sparsity))


def select_global(scores: Mapping[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """Rank all units of all tensors together and remove the lowest ``sparsity`` fraction of the pool.

    Per-tensor sparsities then follow the score distribution: layers with many unimportant units lose more.
    """
    names = list(scores)
    if not names:
        return {}
    flat = torch.cat([scores[name].reshape(-1).float() for name in names])
    keep = _keep_all_but_lowest(flat, num_to_prune(flat.numel(), sparsity))
    result: dict[str, Tensor] = {}
    offset = 0
    for name in names:
        count = scores[name].numel()
        result[name] = keep[offset : offset + count]
        offset += count
    return result
