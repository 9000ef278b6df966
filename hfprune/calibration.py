"""Calibration data for the criteria that need it: taking batches, the loss of a batch, and a backward pass that
survives fp16 (loss scaling). Shared by the mask engine, head/neuron scoring and CNN channel scoring."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .adapters.base import check_text_length
from .errors import MissingDataError


def take_batches(
    dataloader: Iterable[Any], num_batches: int | None = None, model: nn.Module | None = None
) -> list[Any]:
    """The first ``num_batches`` batches of ``dataloader`` (all if ``None``); an empty result is an error. With
    ``model``, each batch is checked to fit it (`check_calibration_batch`)."""
    batches = []
    for index, batch in enumerate(dataloader):
        if num_batches is not None and index >= num_batches:
            break
        if model is not None:
            check_calibration_batch(model, batch, index)
        batches.append(batch)
    if not batches:
        raise MissingDataError("The calibration dataloader yielded no batches.")
    return batches


def check_calibration_batch(model: nn.Module, batch: Any, index: int) -> None:
    """Refuse a calibration batch the model cannot be scored on, naming it: one without rows, or one with longer
    token sequences than the model has positions for (both otherwise fail deep inside the model)."""
    inputs = next(iter(batch.values()), None) if isinstance(batch, Mapping) else batch
    if isinstance(batch, (tuple, list)) and batch:
        inputs = batch[0]
    if isinstance(inputs, Tensor) and inputs.dim() > 0 and inputs.shape[0] == 0:
        raise MissingDataError(
            f"Calibration batch {index} holds no rows (its inputs have shape {tuple(inputs.shape)}). Drop empty "
            "batches from the dataloader (e.g. a last batch cut to nothing, or a filter that removed every row)."
        )
    token_ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    if isinstance(token_ids, Tensor) and token_ids.dim() > 1:
        check_text_length(model, token_ids.shape[-1], f"Calibration batch {index}")


def initial_loss_scale(model: nn.Module) -> float:
    """Factor on the calibration loss: fp16 gradients below ~6e-8 round to zero (small models and confident
    predictions have many), so fp16 models start at 2**16 and halve it on overflow, as AMP's GradScaler does.
    bf16 has float32's exponent range and needs no scaling."""
    return 2.0**16 if any(param.dtype == torch.float16 for param in model.parameters()) else 1.0


def scaled_backward(
    model: nn.Module,
    batch: Any,
    loss_fn: Callable[..., Tensor] | None,
    scale: float,
    gradients: Callable[[], Iterable[Tensor | None]],
    before: Callable[[], None] | None = None,
) -> float:
    """Backward of ``scale`` x the calibration loss of ``batch``; while a gradient that ``gradients()`` returns is
    not finite (fp16 overflow), halve ``scale`` and redo the batch. Returns the scale the gradients carry.

    ``before`` runs ahead of every attempt (to drop what a failed attempt's hooks collected).
    """
    while True:
        if before is not None:
            before()
        model.zero_grad(set_to_none=True)
        (calibration_loss(model, batch, loss_fn) * scale).backward()
        if scale <= 1.0 or all(grad is None or bool(torch.isfinite(grad).all()) for grad in gradients()):
            return scale
        scale /= 2


def inputs_like_model(value: Any, model: nn.Module) -> Any:
    """A floating-point input tensor in the dtype (and on the device) of ``model``'s weights; anything else as is.

    Calibration images come as float32 whatever the model's precision, and a bf16/fp16 convolution refuses them.
    """
    if not isinstance(value, Tensor) or not value.is_floating_point():
        return value
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    return value if weight is None else value.to(device=weight.device, dtype=weight.dtype)


def calibration_loss(model: nn.Module, batch: Any, loss_fn: Callable[..., Tensor] | None) -> Tensor:
    """The loss of one calibration batch: a dict of model inputs with labels, or an ``(inputs, targets)`` pair.

    ``loss_fn`` replaces the model's own loss: for a dict batch it is called as ``loss_fn(model, batch)`` and runs
    the model itself (a label-free objective such as `hfprune.embeddings.EmbeddingObjective`); for a pair, as
    ``loss_fn(logits, targets)`` (default: cross-entropy).
    """
    if isinstance(batch, Mapping) and loss_fn is not None:
        return loss_fn(model, {key: inputs_like_model(value, model) for key, value in batch.items()})
    if isinstance(batch, Mapping):
        # Labels keep their dtype (regression targets stay float32); floating inputs follow the model.
        outputs = model(**{key: value if key == "labels" else inputs_like_model(value, model)
                           for key, value in batch.items()})  # fmt: skip
        loss = (
            outputs["loss"] if isinstance(outputs, Mapping) and "loss" in outputs else getattr(outputs, "loss", None)
        )
        if loss is None:
            raise MissingDataError(
                "The model returned no loss for a calibration batch. Include 'labels' in each batch, or pass loss_fn."
            )
        return loss
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, targets = batch
        logits = model(inputs_like_model(inputs, model))
        logits = getattr(logits, "logits", logits)
        # The loss in float32: a half-precision log-softmax over many classes loses the small probabilities.
        return (loss_fn or nn.functional.cross_entropy)(logits.float(), targets)
    raise MissingDataError(
        f"Calibration batches must be dicts of model inputs with labels, or (inputs, targets) pairs; got "
        f"{type(batch).__name__}."
    )


@torch.no_grad()
def calibration_forward(model: nn.Module, batch: Any) -> None:
    """Run the model on one calibration batch for what forward hooks observe; labels are not needed (dropped)."""
    if isinstance(batch, Mapping):
        model(**{key: inputs_like_model(value, model) for key, value in batch.items() if key != "labels"})
    elif isinstance(batch, (tuple, list)) and batch:
        model(inputs_like_model(batch[0], model))
    elif isinstance(batch, Tensor):
        model(inputs_like_model(batch, model))
    else:
        raise MissingDataError(
            f"Calibration batches must be dicts of model inputs, (inputs, targets) pairs or tensors; got "
            f"{type(batch).__name__}."
        )


def synaptic_flow_backward(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Leave in every parameter's ``.grad`` the gradient of SynFlow's objective (Tanaka et al. 2020): the sum of the
    outputs of the network with every weight, bias and BatchNorm statistic replaced by its absolute value, in
    eval mode, on one all-ones input of ``input_shape`` (no batch dimension). Needs no data. The pass runs in
    float64 (the product of absolute weights overflows float32 in deep nets) unless the model mixes float dtypes;
    weights, signs, dtype and mode are restored afterwards, so only ``.grad`` changes."""
    was_training = model.training
    floats = {t.dtype for t in model.state_dict(keep_vars=True).values() if t.is_floating_point()}
    dtype = floats.pop() if len(floats) == 1 else None
    signs: dict[str, Tensor] = {}
    model.eval()
    if dtype is not None:
        model.double()
    try:
        with torch.no_grad():
            for name, tensor in model.state_dict(keep_vars=True).items():
                if tensor.is_floating_point():
                    signs[name] = torch.sign(tensor)
                    tensor.abs_()
        model.zero_grad(set_to_none=True)
        weight = next(p for p in model.parameters() if p.is_floating_point())
        output = model(torch.ones((1, *input_shape), dtype=weight.dtype, device=weight.device))
        logits = output.logits if hasattr(output, "logits") else output
        logits.sum().backward()
    finally:
        with torch.no_grad():
            for name, tensor in model.state_dict(keep_vars=True).items():
                if name in signs:
                    tensor.mul_(signs[name])
        if dtype is not None:
            model.to(dtype)  # gradients too
        model.train(was_training)
