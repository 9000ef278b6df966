"""Retraining-free pruning (Kwon et al. 2022): after a Fisher mask search, rescale the kept heads and neurons so
each layer reproduces the dense layer's output, by linear least squares on calibration data.

For a sublayer whose output is ``sum_u m_u * Y_u + bias`` (``Y_u``: the contribution of kept head or neuron ``u``
through the output projection), the scales ``m`` minimising ``|| sum_u m_u Y_u - T ||^2`` over all calibration
tokens solve the normal equations ``G m = c`` with ``G[u, v] = <Y_u, Y_v>`` and ``c[u] = <Y_u, T>``, where ``T`` is
the dense model's sublayer output (minus bias). Layers are processed in order, so each one also corrects the
error that earlier pruned layers pass to it. The scales are folded into the output projection's columns.
Kwon et al.'s mask rearrangement step is not implemented.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .compaction import _encoder, _get, current_plan_shape
from .errors import ConfigError, MissingDataError


class _Stop(Exception):
    """Raised from a hook to end a forward pass once the needed activation is captured."""


def _capture(model: nn.Module, module: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Input and output of ``module`` for ``batch`` (the forward pass stops right after it)."""
    captured: dict[str, Tensor] = {}

    def hook(_: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        captured["input"], captured["output"] = inputs[0].detach(), output.detach()
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        model(**{k: v for k, v in batch.items() if k != "labels"})
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["input"], captured["output"]


def _contributions(kind: str, activation: Tensor, weight: Tensor, head_size: int) -> Tensor:
    """Per-unit contributions to the sublayer output: ``[units, tokens, hidden]``."""
    if kind == "neurons":
        return activation.t()[:, :, None] * weight.t()[:, None, :]
    heads = activation.shape[-1] // head_size
    per_head = activation.reshape(-1, heads, head_size).transpose(0, 1)  # [heads, tokens, head_size]
    weight_per_head = weight.reshape(weight.shape[0], heads, head_size).permute(1, 2, 0)  # [heads, head_size, hidden]
    return torch.bmm(per_head, weight_per_head)


@torch.no_grad()
def reconstruct_(
    pruned: nn.Module,
    dense: nn.Module,
    dataloader: Iterable[dict[str, Tensor]],
    *,
    num_batches: int | None = None,
    damping: float = 1e-6,
) -> dict[str, list[float]]:
    """Rescale the kept units of a compacted ``pruned`` model so every sublayer matches ``dense`` (in place).

    Args:
        pruned (`nn.Module`): The compacted model (`hfprune.compact_`).
        dense (`nn.Module`): The unpruned model it came from.
        dataloader (`Iterable[dict]`): Calibration batches of model inputs (labels are ignored).
        num_batches (`int`, *optional*): Use at most this many batches.
        damping (`float`, defaults to 1e-6): Ridge term, relative to the mean diagonal of ``G``, for stability.

    Returns:
        `dict`: the relative reconstruction error of each sublayer before and after (``"before"``, ``"after"``).
    """
    _, layout, layers = _encoder(pruned)
    _, dense_layout, dense_layers = _encoder(dense)
    if len(layers) != len(dense_layers):
        raise ConfigError(f"pruned has {len(layers)} layers but dense has {len(dense_layers)}.")
    batches = []
    for index, batch in enumerate(dataloader):
        if num_batches is not None and index >= num_batches:
            break
        batches.append(batch)
    if not batches:
        raise MissingDataError("reconstruct_ needs calibration batches; the dataloader yielded none.")
    heads_now, neurons_now = current_plan_shape(pruned)
    pruned.eval()
    dense.eval()
    errors: dict[str, list[float]] = {"before": [], "after": []}
    for index, (layer, dense_layer) in enumerate(zip(layers, dense_layers, strict=True)):
        head_size = _get(dense_layer, dense_layout.self_attention).attention_head_size
        for kind, name, width in (("heads", layout.attention_output, heads_now[index]),
                                  ("neurons", layout.ffn_out, neurons_now[index])):  # fmt: skip
            consumer = _get(layer, name)
            if width == 0:
                continue
            weight = consumer.weight.float()
            bias = consumer.bias.float() if consumer.bias is not None else 0.0
            units = width
            gram = torch.zeros(units, units, dtype=torch.float64)
            target_dot = torch.zeros(units, dtype=torch.float64)
            target_norm = 0.0
            for batch in batches:
                keep = batch["attention_mask"].reshape(-1).bool() if "attention_mask" in batch else None
                activation, _ = _capture(pruned, consumer, batch)
                _, dense_output = _capture(dense, _get(dense_layer, name), batch)
                activation = activation.reshape(-1, activation.shape[-1]).float()
                target = dense_output.reshape(-1, dense_output.shape[-1]).float() - bias
                if keep is not None:
                    activation, target = activation[keep], target[keep]
                if kind == "neurons":
                    projected = target @ weight  # [tokens, units]: <W[:, u], T_token>
                    gram += ((activation.t() @ activation) * (weight.t() @ weight)).double()
                    target_dot += (activation * projected).sum(0).double()
                else:
                    contributions = _contributions(kind, activation, weight, head_size)
                    flat = contributions.reshape(contributions.shape[0], -1).double()
                    gram += flat @ flat.t()
                    target_dot += flat @ target.reshape(-1).double()
                target_norm += float(target.double().pow(2).sum())
            ones = torch.ones(units, dtype=torch.float64)
            regularized = gram + damping * gram.diagonal().mean() * torch.eye(units, dtype=torch.float64)
            scales = torch.linalg.solve(regularized, target_dot)

            def error(m: Tensor) -> float:
                # ||A m - T||^2 = m'Gm - 2 m'c + ||T||^2, relative to ||T||^2.
                return float((m @ gram @ m - 2 * m @ target_dot + target_norm) / max(target_norm, 1e-12))

            before, after = error(ones), error(scales)
            errors["before"].append(before)
            if after < before:
                columns = scales.float() if kind == "neurons" else scales.float().repeat_interleave(head_size)
                consumer.weight.mul_(columns.to(consumer.weight.dtype)[None, :])
                errors["after"].append(after)
            else:
                errors["after"].append(before)
    return errors
