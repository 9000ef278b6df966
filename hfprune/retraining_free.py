"""Retraining-free pruning (Kwon et al. 2022): after a Fisher mask search, rescale the kept heads and neurons so
each layer reproduces the dense layer's output, by linear least squares on calibration data.

For a sublayer whose output is ``sum_u m_u * Y_u + bias`` (``Y_u``: the contribution of kept head or neuron ``u``
through the output projection), the scales ``m`` minimising ``|| sum_u m_u Y_u - T ||^2`` over all calibration
tokens solve the normal equations ``G m = c`` with ``G[u, v] = <Y_u, Y_v>`` and ``c[u] = <Y_u, T>``. ``T`` is what
the following LayerNorm sees in the dense model (sublayer output + residual) minus the pruned model's residual and
the bias. Layers are processed in order, so each one also corrects the error that earlier pruned layers pass to
it, both through its input and through the residual stream. The scales are folded into the output projection's columns.
Kwon et al.'s mask rearrangement lives in `hfprune.structured.rearrange_` and runs inside the Fisher mask search.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .calibration import take_batches
from .compaction import encoder_structure
from .errors import ConfigError, MissingDataError
from .targets import require_real_weights


#: Tokens whose per-head contributions are materialized at once in the least squares.
TOKENS_PER_SLICE = 1024


class _Stop(Exception):
    """Raised from a hook to end a forward pass once the needed activation is captured."""


def _capture(
    model: nn.Module, consumer: nn.Module, norm: nn.Module, batch: dict[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """For ``batch``: the input of the output projection ``consumer``, and the residual added to its output (the
    input of the following LayerNorm ``norm`` minus the projection's output). The forward pass stops at ``norm``."""
    captured: dict[str, Tensor] = {}

    def consumer_hook(_: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        captured["input"], captured["output"] = inputs[0].detach(), output.detach()

    def norm_hook(_: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        # In float32: in a half-precision model the difference of two large activations loses most digits.
        captured["residual"] = inputs[0].detach().float() - captured["output"].float()
        raise _Stop

    _forward_until_stop(model, batch, [consumer.register_forward_hook(consumer_hook),
                                       norm.register_forward_pre_hook(norm_hook)])  # fmt: skip
    return captured["input"], captured["residual"]


def _forward_until_stop(model: nn.Module, batch: dict[str, Tensor], handles: list[Any]) -> None:
    """Run ``model`` on ``batch`` (labels dropped) until a hook raises `_Stop`; then remove the hooks."""
    try:
        model(**{k: v for k, v in batch.items() if k != "labels"})
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def _dense_stream(dense: nn.Module, name: str, batch: dict[str, Tensor]) -> Tensor:
    """For one batch: the input of module ``name`` (the residual stream after a sublayer) in the dense model, as
    ``[tokens, hidden]`` without padding tokens. The forward pass stops there."""
    captured: list[Tensor] = []

    def hook(_: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        captured.append(inputs[0].detach())
        raise _Stop

    _forward_until_stop(dense, batch, [dense.get_submodule(name).register_forward_pre_hook(hook)])
    return _real_tokens(captured[0], batch)


def _exact_dtype(device: torch.device) -> torch.dtype:
    """float64 for the normal equations where the device has it (Apple's MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _relative_error(scales: Tensor, gram: Tensor, target_dot: Tensor, target_norm: float) -> float:
    """``||A m - T||^2 / ||T||^2`` from the normal-equation terms: ``(m'Gm - 2 m'c + ||T||^2) / ||T||^2``."""
    return float((scales @ gram @ scales - 2 * scales @ target_dot + target_norm) / max(target_norm, 1e-12))


def _contributions(activation: Tensor, weight: Tensor, head_size: int) -> Tensor:
    """Per-unit contributions to the sublayer output: ``[units, tokens, hidden]``."""
    if head_size == 1:
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
    max_scale: float = 10.0,
) -> dict[str, list[float]]:
    """Rescale the kept units of a compacted ``pruned`` model so every sublayer matches ``dense`` (in place).

    Args:
        pruned (`nn.Module`): The compacted model (`hfprune.compact_`).
        dense (`nn.Module`): The unpruned model it came from.
        dataloader (`Iterable[dict]`): Calibration batches of model inputs (labels are ignored).
        num_batches (`int`, *optional*): Use at most this many batches.
        damping (`float`, defaults to 1e-6): Ridge term, relative to the mean diagonal of ``G``, for stability.
        max_scale (`float`, defaults to 10.0): A sublayer whose solved scales exceed this in magnitude is left as is.

    Returns:
        `dict`: the relative reconstruction error of each sublayer before and after (``"before"``, ``"after"``;
        a sublayer left unchanged reports its ``before`` error as ``after``).
    """
    require_real_weights(pruned, "reconstruct_ (the pruned model)")
    require_real_weights(dense, "reconstruct_ (the dense model)")
    adapter, layers, groups = encoder_structure(pruned)
    dense_layers = encoder_structure(dense)[1]
    if len(layers) != len(dense_layers):
        raise ConfigError(f"pruned has {len(layers)} layers but dense has {len(dense_layers)}.")
    batches = take_batches(dataloader, num_batches, pruned)
    masks = [batch["attention_mask"] for batch in batches if isinstance(batch, dict) and "attention_mask" in batch]
    if len(masks) == len(batches) and not any(bool(mask.any()) for mask in masks):
        # The objective counts real tokens only: with none, every sublayer's system would be all zeros.
        raise MissingDataError(
            "The calibration batches hold only padding (every attention_mask is 0), so there is nothing to "
            "reconstruct from. Pass batches of real, tokenized examples."
        )
    pruned.eval()
    dense.eval()
    pruned_sublayers = adapter.sublayers(pruned)
    dense_sublayers = adapter.sublayers(dense)
    errors: dict[str, list[float]] = {"before": [], "after": []}
    # Streaming: the dense targets of one sublayer at a time (a partial forward per batch, real tokens only),
    # never all of them.
    for sublayer, dense_sublayer in zip(pruned_sublayers, dense_sublayers, strict=True):
        group = groups[sublayer.kind]
        width = group.num_units(layers[sublayer.layer])
        if width == 0:
            continue
        dense_targets = [_dense_stream(dense, dense_sublayer.stream, batch) for batch in batches]
        consumer = pruned.get_submodule(sublayer.consumer)
        norm = pruned.get_submodule(sublayer.stream)
        before, after = _reconstruct_sublayer(consumer, norm, pruned, batches, dense_targets, width, group.unit_size,
                                              damping, max_scale)  # fmt: skip
        errors["before"].append(before)
        errors["after"].append(after)
        del dense_targets
    return errors


def _real_tokens(values: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """``values`` (``[batch, seq, width]``) as ``[tokens, width]``, without padding tokens (not part of the
    objective)."""
    flat = values.reshape(-1, values.shape[-1])
    if "attention_mask" not in batch:
        return flat
    return flat[batch["attention_mask"].reshape(-1).bool().to(flat.device)]


def _reconstruct_sublayer(
    consumer: nn.Module,
    norm: nn.Module,
    pruned: nn.Module,
    batches: list[dict[str, Tensor]],
    dense_targets: list[Tensor],
    width: int,
    head_size: int,
    damping: float,
    max_scale: float,
) -> tuple[float, float]:
    """Solve and apply one sublayer's scales; returns its relative error before and after."""
    # Least squares in float32/float64 whatever the model's dtype; only the solved scales return to it.
    weight = consumer.weight.detach().float()
    bias = consumer.bias.detach().float() if consumer.bias is not None else 0.0
    exact = _exact_dtype(weight.device)
    gram = torch.zeros(width, width, dtype=torch.float64)
    target_dot = torch.zeros(width, dtype=torch.float64)
    target_norm = 0.0
    for batch_index, batch in enumerate(batches):
        # The pruned model's input to this sublayer already includes the corrections of earlier layers. The
        # target is the dense residual stream: the kept units also make up for the drift of the pruned
        # model's residual input (what the following LayerNorm sees is what matters).
        activation, residual = _capture(pruned, consumer, norm, batch)
        activation = _real_tokens(activation, batch).float()
        residual = _real_tokens(residual, batch)
        target = dense_targets[batch_index].float().to(residual.device) - residual - bias
        if head_size == 1:
            projected = target @ weight  # [tokens, units]: <W[:, u], T_token>
            gram += ((activation.t() @ activation) * (weight.t() @ weight)).cpu().double()
            target_dot += (activation * projected).sum(0).cpu().double()
        else:
            # Per-head contributions are [heads, tokens, hidden]: built a slice of tokens at a time, so memory does
            # not grow with the batch's length.
            for start in range(0, activation.shape[0], TOKENS_PER_SLICE):
                rows = slice(start, start + TOKENS_PER_SLICE)
                contributions = _contributions(activation[rows], weight, head_size)
                flat = contributions.reshape(contributions.shape[0], -1).to(exact)
                gram += (flat @ flat.t()).cpu().double()
                target_dot += (flat @ target[rows].reshape(-1).to(exact)).cpu().double()
        target_norm += float(target.to(exact).pow(2).sum())
    ones = torch.ones(width, dtype=torch.float64)
    regularized = gram + damping * gram.diagonal().mean() * torch.eye(width, dtype=torch.float64)
    scales = torch.linalg.solve(regularized, target_dot)

    before = _relative_error(ones, gram, target_dot, target_norm)
    after = _relative_error(scales, gram, target_dot, target_norm)
    # Scales far from 1 fit calibration noise rather than a lost signal (Kwon et al. stop at |scale| > 10).
    applied = after < before and float(scales.abs().max()) <= max_scale
    if applied:
        columns = scales.repeat_interleave(head_size)
        # Scale in float32, round once to the model's dtype, on the weight's device.
        scaled = consumer.weight.detach().float() * columns.to(device=consumer.weight.device, dtype=torch.float32)
        consumer.weight.copy_(scaled.to(consumer.weight.dtype))
    return before, after if applied else before
