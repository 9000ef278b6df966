"""Channel (filter) pruning of CNNs: find coupled channel groups, score them, choose widths, compact, save/load.

Coupling (batch norms, next convolutions, depthwise convolutions, concatenations, residual additions, the
classifier's input) comes from Torch-Pruning's `DependencyGraph`: it traces the model once and already handles
the layer types of timm and torchvision CNNs, so hfprune does not re-derive it. hfprune owns the rest: criteria,
FLOPs targets, EagleEye candidate search, a JSON `ChannelPlan`, and plan-based reloading without pickles.
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .calibration import initial_loss_scale, inputs_like_model, scaled_backward, take_batches
from .config import PruningConfig
from .errors import ConfigError, HfPruneWarning, MissingDataError, UnsupportedArchitectureError
from .latency import (
    LatencyCurve,
    LatencyTable,
    LatencyTableMismatchError,
    aim_by_measuring,
    cached_table,
    curves_from_savings,
    measure_savings,
    measured_latency_fraction,
    steady_allocator,
    table_key,
)
from .plan import ChannelPlan, PlanMismatchError
from .selection import check_round_to, round_count
from .structures import Channels
from .targets import require_real_weights


def default_ignored_layers(model: nn.Module) -> list[str]:
    """Stem and classifier, from timm's ``pretrained_cfg`` when present, else the first conv and the last linear."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = []
    for key in ("first_conv", "classifier"):
        value = cfg.get(key)
        names += [value] if isinstance(value, str) else list(value or [])
    names = [name for name in names if _has_module(model, name)]
    if not names:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        names = convs[:1] + linears[-1:]
    return names


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _is_conv_out(dep: Any) -> bool:
    # Output channels of a conv/linear: two of them in one group means a residual addition couples them.
    module = dep.target.module
    if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.out_channels:
        return False  # a depthwise conv carries its input channels through; it is not a second producer
    return isinstance(module, (nn.Conv2d, nn.Linear)) and getattr(dep.handler, "__name__", "") == "prune_out_channels"


def channel_groups(
    model: nn.Module, example_inputs: Tensor, structure: Channels, ignored_layers: list[str] | None = None
) -> tuple[tp.DependencyGraph, dict[str, Any]]:
    """The dependency graph and the prunable channel groups of ``model``, keyed by root convolution name."""
    require_real_weights(model, "channel_groups")
    names = {module: name for name, module in model.named_modules()}
    ignored_names = default_ignored_layers(model) if ignored_layers is None else ignored_layers
    for name in ignored_names:
        if not _has_module(model, name):
            raise ConfigError(f"Ignored layer {name!r} is not a module of {type(model).__name__}.")
    ignored = [model.get_submodule(name) for name in ignored_names]
    try:
        with torch.enable_grad():
            example = inputs_like_model(example_inputs, model)
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as err:  # torch_pruning raises plain exceptions on ops it cannot trace
        raise UnsupportedArchitectureError(
            f"Could not trace {type(model).__name__} to find coupled channels ({type(err).__name__}: {err}). "
            "Exclude the module named in the error with ignored_layers, or prune with an unstructured config."
        ) from err
    groups: dict[str, Any] = {}
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
        root = group[0].dep.target.module
        if structure.keep_residual_width and sum(_is_conv_out(dep) for dep, _ in group) > 1:
            continue  # the group spans a residual addition
        groups[names[root]] = group
    if not groups:
        raise ConfigError(
            f"{type(model).__name__} has no prunable channel group (ignored: {ignored_names}). With "
            "keep_residual_width=True only channels inside residual blocks are pruned; set it to False to prune "
            "residual widths too."
        )
    return graph, groups


def _inputs_of(batch: Any, model: nn.Module) -> Tensor:
    """The images of ``batch``, in the model's dtype and on its device."""
    if isinstance(batch, (tuple, list)):
        images = batch[0]
    elif isinstance(batch, dict):
        images = batch["pixel_values"]
    else:
        images = batch
    return inputs_like_model(images, model)


@contextmanager
def _half_weights_in_float32(model: nn.Module) -> Iterator[None]:
    """Hold ``model``'s bf16/fp16 parameters, gradients and buffers in float32 for the duration, then round back.

    Torch-Pruning's criteria compute in the weights' dtype (a bf16 sum of a filter's 2,304 squares keeps ~3
    significant digits, enough to reorder close channels); upcasting is exact, and so is rounding the unchanged
    weights back. Buffers updated meanwhile (adaptive BN statistics) are rounded once, at the end.
    """
    half = (torch.float16, torch.bfloat16)
    changed: list[tuple[nn.Module, str, str, torch.dtype]] = []
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None and param.dtype in half:
                changed.append((module, "param", name, param.dtype))
                param.data = param.data.float()
                if param.grad is not None:
                    param.grad = param.grad.float()
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.dtype in half:
                changed.append((module, "buffer", name, buffer.dtype))
                module._buffers[name] = buffer.float()
    try:
        yield
    finally:
        for module, kind, name, dtype in changed:
            if kind == "param":
                param = module._parameters[name]
                param.data = param.data.to(dtype)  # type: ignore[union-attr]
                if param.grad is not None:  # type: ignore[union-attr]
                    param.grad = param.grad.to(dtype)  # type: ignore[union-attr]
            else:
                module._buffers[name] = module._buffers[name].to(dtype)  # type: ignore[union-attr]


@torch.no_grad()
def _apoz_scores(model: nn.Module, groups: dict[str, Any], batches: list[Any]) -> dict[str, Tensor]:
    """1 - fraction of non-positive values after the group's batch norm (= zeros after the following ReLU)."""
    counts: dict[str, Tensor] = {}
    totals: dict[str, int] = {}
    handles = []
    for name, group in groups.items():
        root = model.get_submodule(name)
        norm = next((dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.BatchNorm2d)
                     and dep.target.module.num_features == root.out_channels), root)  # fmt: skip

        def hook(_: nn.Module, __: Any, output: Tensor, name: str = name) -> None:
            zeros = (output <= 0).float().sum(dim=(0, 2, 3))
            counts[name] = counts.get(name, 0) + zeros
            totals[name] = totals.get(name, 0) + output.numel() // output.shape[1]

        handles.append(norm.register_forward_hook(hook))
    model.eval()
    try:
        for batch in batches:
            model(_inputs_of(batch, model))
    finally:
        for handle in handles:
            handle.remove()
    return {name: 1.0 - counts[name] / totals[name] for name in groups}


class ChannelStatistics:
    """What scoring CNN channels can gather, computed when a criterion asks for it (`Importance.channel_scores`);
    results are one score per output channel of each group, by the group's conv name."""

    def __init__(
        self,
        model: nn.Module,
        groups: dict[str, Any],
        seed: int,
        dataloader: Iterable[Any] | None,
        num_batches: int | None,
        loss_fn: Callable[..., Tensor] | None,
    ) -> None:
        self.model, self.groups, self.seed = model, groups, seed
        self.dataloader, self.num_batches, self.loss_fn = dataloader, num_batches, loss_fn

    def weight_norms(self, p: int) -> dict[str, Tensor]:
        """Group L1/L2 norms of every weight coupled to each channel (Torch-Pruning's group magnitude)."""
        criterion = tp.importance.GroupMagnitudeImportance(p=p, normalizer=None)
        with _half_weights_in_float32(self.model):
            return {name: criterion(group).detach().float() for name, group in self.groups.items()}

    def bn_scales(self) -> dict[str, Tensor]:
        """|gamma| of the BatchNorm after each pruned conv."""
        criterion = tp.importance.BNScaleImportance(normalizer=None)
        with _half_weights_in_float32(self.model):
            scores = {name: criterion(group) for name, group in self.groups.items()}
        missing = [name for name, value in scores.items() if value is None]
        if missing:
            raise ConfigError(f"bn_scale needs a BatchNorm after each pruned conv; none follows {missing[:3]}.")
        return {name: value.detach().float() for name, value in scores.items()}

    def random(self) -> dict[str, Tensor]:
        """Uniform draws, seeded from the config."""
        generator = torch.Generator().manual_seed(self.seed)
        return {name: torch.rand(self.model.get_submodule(name).out_channels, generator=generator)
                for name in self.groups}  # fmt: skip

    def nonzero_rates(self) -> dict[str, Tensor]:
        """Fraction of positive post-BN activations per channel on the data (``1 - APoZ``)."""
        return _apoz_scores(self.model, self.groups, take_batches(self.dataloader, self.num_batches, self.model))  # type: ignore

    def gradient_weight_products(self) -> dict[str, Tensor]:
        """``|sum over the group of w * dL/dw|`` with gradients summed over the data (group Taylor)."""
        model = self.model
        was_training = model.training
        model.eval()
        summed = _summed_gradients(model, take_batches(self.dataloader, self.num_batches, self.model), self.loss_fn)  # type: ignore
        criterion = tp.importance.GroupTaylorImportance(normalizer=None)
        # The backward ran in the model's dtype (that is the network being pruned); weight x gradient is summed
        # per channel in float32.
        with _half_weights_in_float32(model):
            for param, grad in summed.items():
                param.grad = grad
            scores = {name: criterion(group).detach().float().abs() for name, group in self.groups.items()}
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        return scores


def score_channels(
    model: nn.Module,
    groups: dict[str, Any],
    config: PruningConfig,
    dataloader: Iterable[Any] | None = None,
    *,
    num_batches: int | None = None,
    loss_fn: Callable[..., Tensor] | None = None,
) -> dict[str, Tensor]:
    """One score per output channel of each group (higher = keep)."""
    importance = config.importance
    if importance.needs_data and dataloader is None:  # type: ignore[union-attr]
        raise MissingDataError(
            f"Importance {importance.registered_name!r} is measured on data: pass a dataloader of (images, labels) "  # type: ignore
            "batches."
        )
    stats = ChannelStatistics(model, groups, config.seed, dataloader, num_batches, loss_fn)
    return importance.channel_scores(stats)  # type: ignore[union-attr]


def _summed_gradients(
    model: nn.Module, batches: list[Any], loss_fn: Callable[..., Tensor] | None
) -> dict[nn.Parameter, Tensor]:
    """Parameter gradients summed over ``batches``, in float32 for bf16/fp16 parameters.

    fp16 models scale the loss (`initial_loss_scale`, halved and the batch redone on overflow), so that small
    gradients do not round to zero; the sum is unscaled.
    """
    scale = initial_loss_scale(model)
    summed: dict[nn.Parameter, Tensor] = {}
    for batch in batches:
        scale = scaled_backward(model, batch, loss_fn, scale, lambda: [param.grad for param in model.parameters()])
        grads = [(param, param.grad) for param in model.parameters() if param.grad is not None]
        for param, grad in grads:
            grad = grad.to(torch.promote_types(grad.dtype, torch.float32)) / scale
            summed[param] = summed[param] + grad if param in summed else grad
    model.zero_grad(set_to_none=True)
    return summed


def _kept_count(num: int, ratio: float, round_to: int) -> int:
    return round_count(max(1, num - int(round(ratio * num))), num, round_to)


def plan_from_ratios(scores: dict[str, Tensor], ratios: dict[str, float], round_to: int = 1) -> ChannelPlan:
    """Keep the best ``1 - ratio`` channels of each group."""
    kept = {}
    for name, score in scores.items():
        if ratios.get(name, 0.0) > 0:
            check_round_to(round_to, score.numel(), f"the pruned group {name!r}", "channels")
        count = _kept_count(score.numel(), ratios.get(name, 0.0), round_to)
        kept[name] = sorted(torch.sort(score, descending=True, stable=True).indices[:count].tolist())
    return ChannelPlan(num_channels={name: s.numel() for name, s in scores.items()}, kept=kept)


def plan_from_counts(scores: dict[str, Tensor], counts: dict[str, int]) -> ChannelPlan:
    """Keep the best ``counts[name]`` channels of each group (all of a group not in ``counts``)."""
    kept = {}
    for name, score in scores.items():
        count = counts.get(name, score.numel())
        kept[name] = sorted(torch.sort(score, descending=True, stable=True).indices[:count].tolist())
    return ChannelPlan(num_channels={name: s.numel() for name, s in scores.items()}, kept=kept)


# ------------------------------------------------------------------------------------------ latency budgets
def latency_inputs(config: PruningConfig, example_inputs: Tensor) -> Tensor:
    """Images of ``config.latency_shape`` (default: the shape of ``example_inputs``)."""
    shape = config.latency_shape or list(example_inputs.shape)
    if len(shape) != 4:
        raise ConfigError(f"latency_shape for a CNN is [batch, channels, height, width]; got {shape}.")
    if list(shape) == list(example_inputs.shape):
        return example_inputs
    return torch.zeros(shape, dtype=example_inputs.dtype, device=example_inputs.device)


def channel_latency_table(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    ignored_layers: list[str] | None = None,
    keep_residual_width: bool = True,
    steps: int = 8,
    rounds: int = 7,
    warmup: int = 2,
    min_seconds: float = 1.0,
) -> LatencyTable:
    """Measure a CNN's channel groups at the shape of ``example_inputs`` (a batch of images).

    Groups whose root convolutions have the same shape, stride and output size form one class (one curve: the
    blocks of a ResNet stage); each class is measured at ``steps - 1`` widths (1/steps ... of its channels) with
    every member cut to that width.
    """
    _, groups = channel_groups(model, example_inputs, Channels(keep_residual_width=keep_residual_width),
                               ignored_layers)  # fmt: skip
    key = channel_table_key(model, list(example_inputs.shape), list(groups))
    classes = channel_classes(model, example_inputs, list(groups))
    num_channels = {name: model.get_submodule(name).out_channels for name in groups}

    def build_variant(members: list[str], width: int) -> Callable[[], nn.Module]:
        def variant() -> nn.Module:
            kept = {name: list(range(width if name in members else count)) for name, count in num_channels.items()}
            plan = ChannelPlan(num_channels=dict(num_channels), kept=kept)
            return apply_channel_plan_(copy.deepcopy(model), plan, example_inputs).eval()

        return variant

    variants = []
    full = {}
    for name, members in classes.items():
        full[name] = num_channels[members[0]]
        step = max(1, full[name] // steps)
        for width in range(step, full[name], step):
            variants.append((name, width, build_variant(members, width), len(members)))
    allocator = steady_allocator()
    start = time.perf_counter()
    was_training = model.training
    dense_ms, saved, rounds = measure_savings(
        model.eval(), variants, example_inputs, rounds=rounds, warmup=warmup, min_seconds=min_seconds
    )
    model.train(was_training)
    return LatencyTable(
        key=key,
        dense_ms=dense_ms,
        curves=curves_from_savings(saved, full, classes),
        protocol={
            "rounds": rounds,
            "warmup": warmup,
            "allocator": allocator,
            "steps": steps,
            "keep_residual_width": keep_residual_width,
            "ignored_layers": ignored_layers,
            "seconds": round(time.perf_counter() - start, 1),
            "interleaved": "chunks of 6 with the dense model",
            "statistic": "median",
        },  # fmt: skip
    )


@torch.no_grad()
def channel_classes(model: nn.Module, example_inputs: torch.Tensor, roots: list[str]) -> dict[str, list[str]]:
    """Group the root convolutions ``roots`` by shape, stride, groups and output size: ``{class name: roots}``."""
    outputs: dict[str, tuple[int, ...]] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda _, __, output, name=name: outputs.__setitem__(name, tuple(output.shape[2:]))
        )
        for name in roots
    ]
    was_training = model.training
    model.eval()
    try:
        model(inputs_like_model(example_inputs[:1], model))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    classes: dict[str, list[str]] = {}
    for name in roots:
        conv = model.get_submodule(name)
        size = "x".join(map(str, outputs.get(name, ())))
        label = (f"conv {conv.in_channels}->{conv.out_channels} k{'x'.join(map(str, conv.kernel_size))} "
                 f"s{conv.stride[0]} g{conv.groups} @{size}")  # fmt: skip
        classes.setdefault(label, []).append(name)
    return classes


def channel_table_key(model: nn.Module, shape: Sequence[int], roots: Sequence[str]) -> dict[str, Any]:
    """`table_key` plus the pruned groups (ignored layers and residual widths decide which there are)."""
    key = table_key(model, shape)
    key["groups"] = hashlib.sha1("\n".join(sorted(roots)).encode()).hexdigest()[:12]
    return key


def channel_widths(table: LatencyTable, kept_counts: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """``{curve: {group: kept channels}}`` for `LatencyTable.predict_ms`, from kept counts per group."""
    widths: dict[str, dict[str, int]] = {}
    for curve_name, curve in table.curves.items():
        widths[curve_name] = {group: kept_counts[group] for group in curve.blocks if group in kept_counts}
    return widths


def latency_table_for_channels(
    model: nn.Module, config: PruningConfig, example_inputs: Tensor, ignored_layers: list[str] | None = None,
    rebuild: bool = False,
) -> LatencyTable:  # fmt: skip
    """The channel latency table for ``config``'s shape on the model's device: ``config.latency_table`` (checked
    against this model, its groups, device, torch, dtype and shape), else the cached one, else measured now."""
    structure = config.structure
    if not isinstance(structure, Channels):
        raise ConfigError("A channel latency table needs structure='channels'.")
    inputs = latency_inputs(config, example_inputs)
    if inputs is not example_inputs:
        _check_takes(model, inputs, example_inputs)
    _, groups = channel_groups(model, inputs, structure, ignored_layers)
    key = channel_table_key(model, list(inputs.shape), list(groups))

    def build() -> LatencyTable:
        return channel_latency_table(model, inputs, ignored_layers=ignored_layers,
                                     keep_residual_width=structure.keep_residual_width)  # fmt: skip

    return cached_table(key, build, config.latency_table, rebuild=rebuild)


@torch.no_grad()
def _check_takes(model: nn.Module, inputs: Tensor, example_inputs: Tensor) -> None:
    """Refuse a ``latency_shape`` the model cannot run, before any table work."""
    was_training = model.training
    model.eval()
    try:
        model(inputs_like_model(inputs[:1], model))
    except RuntimeError as err:
        raise ConfigError(
            f"The model cannot take inputs of latency_shape {list(inputs.shape)} ({_first_line(err)}). Give a shape "
            f"it accepts, e.g. [batch, {', '.join(map(str, example_inputs.shape[1:]))}] like the example inputs."
        ) from None
    finally:
        model.train(was_training)


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def _friendly_count(curve: LatencyCurve, count: int, smallest: int, tolerance_ms: float, round_to: int) -> int:
    """The widest friendly width of ``curve`` at or below ``count`` (not below ``smallest`` when one exists)."""
    friendly = curve.friendly_widths(tolerance_ms, round_to)
    below = [width for width in friendly if smallest <= width <= count]
    if below:
        return below[-1]
    return min((width for width in friendly if width >= smallest), default=curve.full_width)


def _counts_for_latency(
    relative: dict[str, float], scores: dict[str, Tensor], table: LatencyTable, target: float, max_ratio: float,
    round_to: int,
) -> dict[str, int]:  # fmt: skip
    """Kept channels per group: relative per-group ratios times the factor that brings the latency predicted by
    ``table`` to ``target`` x dense, each count snapped to a width the hardware likes (`LatencyCurve`)."""
    curve_of = {group: table.curve(name) for name, curve in table.curves.items() for group in curve.blocks}
    missing = sorted(set(scores) - set(curve_of))
    if missing:
        raise LatencyTableMismatchError(
            f"The latency table does not cover the channel groups {missing[:4]}: it was measured with other "
            "ignored_layers or keep_residual_width. Build it with the same settings (or leave latency_table unset)."
        )

    def counts(factor: float) -> dict[str, int]:
        result = {}
        for name, score in scores.items():
            width = score.numel()
            smallest = width - int(math.floor(max_ratio * width))
            count = _kept_count(width, min(max_ratio, factor * relative[name]), 1)
            result[name] = _friendly_count(curve_of[name], count, smallest, table.tolerance_ms, round_to)
        return result

    def predicted(factor: float) -> float:
        return table.predict_ms(channel_widths(table, counts(factor))) / table.dense_ms

    if predicted(1e6) > target:
        raise ConfigError(
            f"target_latency={target} cannot be met: pruning every prunable group to {max_ratio:.0%} is predicted "
            f"to run at {predicted(1e6):.3f} of the dense {table.dense_ms:.2f} ms at "
            f"{'x'.join(map(str, table.key['shape']))} (the stem, the classifier and the residual widths do not "
            "shrink). Raise target_latency, or set keep_residual_width=False / fewer ignored layers."
        )
    low, high = 0.0, 1e6
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if predicted(middle) > target else (low, middle)
    return counts(high)


def count_flops(model: nn.Module, example_inputs: Tensor) -> int:
    """Forward FLOPs for ``example_inputs`` (torch.utils.flop_counter)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(inputs_like_model(example_inputs, model))
    model.train(was_training)
    return int(counter.get_total_flops())


def apply_channel_plan_(model: nn.Module, plan: ChannelPlan, example_inputs: Tensor) -> nn.Module:
    """Physically remove the channels ``plan`` drops (and everything coupled to them), in place.

    Raises:
        PlanMismatchError: the plan is invalid, or names a layer the model lacks or with another width.
    """
    require_real_weights(model, "apply_channel_plan_")
    if not isinstance(plan, ChannelPlan):
        raise PlanMismatchError(
            f"apply_channel_plan_ needs a ChannelPlan; got {type(plan).__name__}. Build one with "
            "ChannelPlan.from_dict(...) or ChannelPlan.from_pretrained(folder)."
        )
    plan.validate()  # its lists may have been edited since it was built
    for name, count in plan.num_channels.items():
        if not _has_module(model, name):
            raise PlanMismatchError(f"The plan prunes {name!r}, which this {type(model).__name__} does not have.")
        module = model.get_submodule(name)
        if not isinstance(module, nn.Conv2d):
            raise PlanMismatchError(
                f"The plan prunes output channels of {name!r}, but that is a {type(module).__name__}, not a Conv2d: "
                "the plan was made for another architecture."
            )
        if module.out_channels != count:
            raise PlanMismatchError(
                f"{name} has {module.out_channels} output channels; the plan was made for {count}. Apply a plan only "
                "to the unpruned base model."
            )
    # Tracing needs autograd on; the pruning itself only rewrites parameters.
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs_like_model(example_inputs, model))
    for name, kept in plan.kept.items():
        module = model.get_submodule(name)
        removed = sorted(set(range(plan.num_channels[name])) - set(kept))
        if removed:
            graph.get_pruning_group(module, tp.prune_conv_out_channels, idxs=removed).prune()
    _check_forward(model, example_inputs, list(plan.kept))
    return model


@torch.no_grad()
def _check_forward(model: nn.Module, example_inputs: Tensor, pruned: list[str]) -> None:
    """Run the pruned model once; if it fails, name the module where it broke and what to do about it.

    Torch-Pruning treats ops it does not know (einsum, a parameter used outside a layer, a reshape that mixes
    channels with other dimensions) as elementwise, so a plan can shrink one side of such an op only. That shows
    up as a shape error in the first forward pass.
    """
    names = {module: name or type(model).__name__ for name, module in model.named_modules()}
    running: list[str] = []
    finished: list[str] = []
    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(lambda m, _: running.append(names[m])))
        handles.append(module.register_forward_hook(lambda m, _, __: finished.append(running.pop())))
    was_training = model.training
    model.eval()
    try:
        model(inputs_like_model(example_inputs, model))
    except RuntimeError as err:
        if "out of memory" in str(err):  # not a graph problem
            raise
        failing = running[-1] if running else type(model).__name__
        after = next((name for name in reversed(finished) if name in pruned), finished[-1] if finished else None)
        raise UnsupportedArchitectureError(
            f"The channel-pruned {type(model).__name__} fails in the forward of {failing!r}, after {after!r} ran "
            f"({type(err).__name__}: {err}). Torch-Pruning's dependency graph could not follow an op there (an "
            "einsum, a parameter used outside a layer, or a reshape that mixes channels): the pruned layer before "
            f"it must keep its channels. Pass ignored_layers=[..., {after!r}] (add it to the model's defaults from "
            "hfprune.channels.default_ignored_layers), or prune with an unstructured config."
        ) from err
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def _pruned_flops(model: nn.Module, plan: ChannelPlan, example_inputs: Tensor) -> int:
    return count_flops(apply_channel_plan_(copy.deepcopy(model), plan, example_inputs), example_inputs)


def _linear_flops_model(
    model: nn.Module, scores: dict[str, Tensor], example_inputs: Tensor
) -> tuple[int, dict[str, float]]:
    """Dense FLOPs and the FLOPs saved per removed channel of each group (measured by halving each group)."""
    dense = count_flops(model, example_inputs)
    per_channel = {}
    for name, score in scores.items():
        plan = plan_from_ratios({name: score}, {name: 0.5})
        removed = score.numel() - len(plan.kept[name])
        per_channel[name] = (dense - _pruned_flops(model, plan, example_inputs)) / max(removed, 1)
    return dense, per_channel


def _global_ratios(
    scores: dict[str, Tensor], saved: Callable[[dict[str, float]], float], need: float, max_ratio: float,
    dense: int | None = None,
) -> dict[str, float]:  # fmt: skip
    """Per-group ratios from one score threshold for every group (network slimming's global threshold on BN
    scales): the lowest threshold whose removed channels (at most ``max_ratio`` of a group) save ``need``, as
    ``saved(ratios)`` counts it (FLOPs under the linear model, or channels)."""
    values = torch.cat([score.float().flatten() for score in scores.values()]).sort().values

    def ratios_at(count: int) -> dict[str, float]:
        if count >= len(values):
            return {name: max_ratio for name in scores}
        threshold = values[count]
        return {
            name: min(max_ratio, float((score.float() < threshold).float().mean())) for name, score in scores.items()
        }

    if saved(ratios_at(len(values))) < need:
        what = f"a FLOPs target of {1 - need / dense:.3g}" if dense else "this sparsity"
        raise ConfigError(
            f"With scope='global', {what} cannot be met: removing {max_ratio:.0%} of every prunable group is not "
            "enough. Raise the target, or make more channels prunable (keep_residual_width=False)."
        )
    low, high = 0, len(values)
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if saved(ratios_at(middle)) < need else (low, middle)
    return ratios_at(low)


def _scale_to_budget(
    relative: dict[str, float], scores: dict[str, Tensor], dense: int, per_channel: dict[str, float],
    target: float, max_ratio: float,
) -> dict[str, float]:  # fmt: skip
    """Multiply relative per-group ratios by the factor that meets the FLOPs target under the linear model."""

    def saved(factor: float) -> float:
        return sum(per_channel[n] * min(max_ratio, factor * r) * scores[n].numel() for n, r in relative.items())

    need = (1.0 - target) * dense
    if saved(1e6) < need:
        raise ConfigError(
            f"A FLOPs target of {target} cannot be met: pruning every prunable group to {max_ratio:.0%} saves only "
            f"{saved(1e6) / dense:.1%} of the FLOPs. Raise target_flops, or set keep_residual_width=False / fewer "
            "ignored layers to make more channels prunable."
        )
    low, high = 0.0, 1e6
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if saved(mid) < need else (low, mid)
    return {name: min(max_ratio, high * ratio) for name, ratio in relative.items()}


def plan_channels(
    model: nn.Module,
    config: PruningConfig,
    example_inputs: Tensor,
    dataloader: Iterable[Any] | None = None,
    *,
    ignored_layers: list[str] | None = None,
    num_batches: int | None = None,
    loss_fn: Callable[..., Tensor] | None = None,
    max_ratio: float = 0.9,
) -> ChannelPlan:
    """Score channels and return the plan for ``config`` (uniform ``sparsity`` per group, ``target_flops`` or
    ``target_latency``).

    With ``target_flops`` every group is pruned at the same ratio, chosen so the measured FLOPs meet the target;
    with ``target_latency`` at the same ratio too, chosen so the latency predicted from the measured table meets
    it, each width snapped to one the hardware likes. The model is not modified.
    """
    require_real_weights(model, "plan_channels")
    structure = config.structure
    if not isinstance(structure, Channels):
        raise ConfigError("plan_channels needs structure='channels'.")
    # The latency table is measured (or read) before scoring: a foreign table or a bad shape fails first.
    table = None
    if config.target_latency is not None:
        table = latency_table_for_channels(model, config, example_inputs, ignored_layers)
    _, groups = channel_groups(model, example_inputs, structure, ignored_layers)
    scores = score_channels(model, groups, config, dataloader, num_batches=num_batches, loss_fn=loss_fn)
    if table is not None:
        plan = _measured_latency_plan(model, config, example_inputs, scores, table, max_ratio)
        plan.extra["flops_fraction"] = _pruned_flops(model, plan, example_inputs) / count_flops(model, example_inputs)
        return plan
    if config.target_flops is None:
        ratios = (_global_ratios(scores, lambda r: sum(r[n] * scores[n].numel() for n in r),
                                 config.sparsity * sum(s.numel() for s in scores.values()), max_ratio)
                  if config.scope == "global" else {name: config.sparsity for name in scores})  # fmt: skip
        plan = plan_from_ratios(scores, ratios, structure.round_to)
        apply_channel_plan_(copy.deepcopy(model), plan, example_inputs)  # fails early if the plan breaks the model
        return plan
    dense, per_channel = _linear_flops_model(model, scores, example_inputs)
    # The linear FLOPs model over-counts savings when coupled groups shrink both sides of a layer: re-aim a few
    # times at the measured FLOPs.
    target = config.target_flops
    aim, best = target, None
    for _ in range(4):
        try:
            if config.scope == "global":
                saved = lambda r: sum(per_channel[n] * r[n] * scores[n].numel() for n in r)  # noqa: E731
                ratios = _global_ratios(scores, saved, (1.0 - aim) * dense, max_ratio, dense)
            else:
                ratios = _scale_to_budget({n: 1.0 for n in scores}, scores, dense, per_channel, aim, max_ratio)
        except ConfigError:
            if best is None:  # the target itself is out of reach: the error names it
                raise
            break  # a re-aimed target is out of reach: keep the closest plan so far
        plan = plan_from_ratios(scores, ratios, structure.round_to)
        achieved = _pruned_flops(model, plan, example_inputs) / dense
        if best is None or abs(achieved - target) < abs(best[1] - target):
            best = (plan, achieved)
        if abs(achieved - target) <= 0.01:
            break
        aim = min(1.0, max(1e-3, aim + (target - achieved)))
    plan, achieved = best
    if abs(achieved - target) > 0.01:
        if structure.round_to > 1:
            why = (f"round_to={structure.round_to} keeps multiples of {structure.round_to} channels per group, which "
                   "is too coarse here; lower round_to")  # fmt: skip
        else:
            why = f"the prunable groups cannot get closer (at most {max_ratio:.0%} of a group is removed)"
        warnings.warn(
            f"target_flops={target} was missed: the plan keeps {achieved:.3f} of the FLOPs, because {why}.",
            HfPruneWarning,
            stacklevel=2,
        )
    plan.extra["flops_fraction"] = achieved
    return plan


def _measured_latency_plan(
    model: nn.Module, config: PruningConfig, example_inputs: Tensor, scores: dict[str, Tensor], table: LatencyTable,
    max_ratio: float,
) -> ChannelPlan:  # fmt: skip
    """The same ratio in every group, aimed at ``config.target_latency`` by the table, then timed against the dense
    model at the latency shape and re-aimed while it misses (`hfprune.latency.aim_by_measuring`)."""
    inputs = latency_inputs(config, example_inputs)
    relative = {name: 1.0 for name in scores}

    def plan_for(aim: float) -> ChannelPlan:
        counts = _counts_for_latency(relative, scores, table, aim, max_ratio, config.structure.round_to)  # type: ignore
        plan = plan_from_counts(scores, counts)
        _record_latency(plan, table, counts)
        return plan

    def measure(plan: ChannelPlan) -> float:
        pruned = apply_channel_plan_(copy.deepcopy(model), plan, example_inputs)
        return measured_latency_fraction(model, pruned, inputs)

    return aim_by_measuring(config.target_latency, plan_for, measure)  # type: ignore[arg-type]


def _record_latency(plan: ChannelPlan, table: LatencyTable, counts: dict[str, int]) -> None:
    plan.extra["latency_shape"] = table.key["shape"]
    plan.extra["latency_device"] = table.key["device"]
    plan.extra["predicted_latency_fraction"] = table.predict_ms(channel_widths(table, counts)) / table.dense_ms


@torch.no_grad()
def adaptive_bn_(model: nn.Module, batches: Iterable[Any]) -> nn.Module:
    """Re-estimate BatchNorm statistics on ``batches`` (EagleEye's adaptive BN): reset, then cumulative average.

    A half-precision model runs these passes in float32, so the averages accumulate in float32 and are rounded to
    the model's dtype once (a bf16 running mean over many batches drifts).
    """
    require_real_weights(model, "adaptive_bn_")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    try:
        with _half_weights_in_float32(model):
            for batch in batches:
                model(_inputs_of(batch, model))
    finally:
        for norm, momentum in saved:
            norm.momentum = momentum
        model.eval()
    return model


@torch.no_grad()
def top1(model: nn.Module, batches: Iterable[Any]) -> float:
    """Top-1 accuracy over ``(images, labels)`` batches."""
    model.eval()
    correct = total = 0
    for batch in batches:
        images, labels = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch["pixel_values"],
                                                                                         batch["labels"])  # fmt: skip
        logits = model(inputs_like_model(images, model))
        correct += int((getattr(logits, "logits", logits).argmax(-1).cpu() == labels.cpu()).sum())
        total += int(labels.numel())
    return correct / max(total, 1)


def eagleeye_search(
    model: nn.Module,
    config: PruningConfig,
    example_inputs: Tensor,
    bn_batches: list[Any],
    eval_batches: list[Any],
    *,
    num_candidates: int = 20,
    max_ratio: float = 0.8,
    ignored_layers: list[str] | None = None,
    seed: int = 0,
) -> tuple[ChannelPlan, list[dict[str, Any]]]:
    """EagleEye (Li et al. 2020): random per-layer ratios meeting the FLOPs or latency target, each scored after
    adaptive BN.

    Every candidate draws a random relative ratio per group, scaled so the (linear) FLOPs model meets
    ``config.target_flops``, or so the latency predicted from the measured table (`hfprune.latency`) meets
    ``config.target_latency`` with widths the hardware likes; the pruned copy's BN statistics are re-estimated on
    ``bn_batches`` and its top-1 is measured on ``eval_batches``. The best candidate's plan is returned with all
    candidates' results.
    """
    require_real_weights(model, "eagleeye_search")
    if config.target_flops is None and config.target_latency is None:
        raise ConfigError("EagleEye searches under a FLOPs or latency constraint: set target_flops or target_latency.")
    structure = config.structure
    if not isinstance(structure, Channels):
        raise ConfigError("eagleeye_search needs structure='channels'.")
    table = None
    if config.target_latency is not None:
        table = latency_table_for_channels(model, config, example_inputs, ignored_layers)
    _, groups = channel_groups(model, example_inputs, structure, ignored_layers)
    scores = score_channels(model, groups, config)
    dense, per_channel = _linear_flops_model(model, scores, example_inputs)
    rng = random.Random(seed)
    results = []
    best: tuple[float, ChannelPlan] | None = None
    for index in range(num_candidates):
        relative = {name: rng.uniform(0.05, 1.0) for name in scores}
        if table is not None:
            counts = _counts_for_latency(relative, scores, table, config.target_latency, max_ratio,  # type: ignore[arg-type]
                                         structure.round_to)  # fmt: skip
            plan = plan_from_counts(scores, counts)
            _record_latency(plan, table, counts)
        else:
            ratios = _scale_to_budget(relative, scores, dense, per_channel, config.target_flops, max_ratio)  # type: ignore[arg-type]
            plan = plan_from_ratios(scores, ratios, structure.round_to)
        candidate = apply_channel_plan_(copy.deepcopy(model), plan, example_inputs)
        flops = count_flops(candidate, example_inputs) / dense
        adaptive_bn_(candidate, bn_batches)
        accuracy = top1(candidate, eval_batches)
        results.append(
            {
                "candidate": index,
                "top1": accuracy,
                "flops_fraction": flops,
                **({"predicted_latency_fraction": plan.extra["predicted_latency_fraction"]} if table else {}),
            }
        )
        if best is None or accuracy > best[0]:
            plan.extra.update({"flops_fraction": flops, "adaptive_bn_top1": accuracy, "candidate": index})
            best = (accuracy, plan)
    return best[1], results  # type: ignore[index]


# ------------------------------------------------------------------------------------------------- persistence
def create_base_model(architecture: str, num_classes: int) -> nn.Module:
    """``timm.create_model(architecture)`` or, for ``torchvision:<name>``, ``torchvision.models.get_model``."""
    if architecture.startswith("torchvision:"):
        import torchvision

        return torchvision.models.get_model(architecture.split(":", 1)[1], weights=None, num_classes=num_classes)
    import huggingface_hub
    import timm

    from . import models  # noqa: F401 - registers the CIFAR ResNets with timm

    on_hub = architecture.startswith("hf-hub:")
    hub_advice = (
        f"timm builds {architecture!r} from a config it downloads from the Hugging Face Hub. Connect once (timm "
        "caches it), or name the timm architecture itself (e.g. 'resnet50' instead of 'hf-hub:timm/resnet50.a1_in1k')."
    )
    if on_hub and huggingface_hub.is_offline_mode():
        # Said before trying: offline, timm would fail deep in the Hub client.
        raise UnsupportedArchitectureError(f"The Hub is offline (HF_HUB_OFFLINE=1), and {hub_advice}")
    try:
        return timm.create_model(architecture, pretrained=False, num_classes=num_classes)
    except RuntimeError as err:
        raise UnsupportedArchitectureError(f"Unknown model architecture {architecture!r}: {err}") from err
    except (OSError, huggingface_hub.errors.HfHubHTTPError) as err:
        if not on_hub:
            raise
        raise UnsupportedArchitectureError(
            f"The Hub could not be reached ({type(err).__name__}), and {hub_advice}"
        ) from err
