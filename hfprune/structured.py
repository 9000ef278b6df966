"""Structured pruning of transformer encoders: score heads and FFN neurons, choose which to keep, build a plan.

`plan_structured` is pure (it reads the model and data, and returns a `PruningPlan`); `compaction.compact_` then
removes the units, and `apply_plan_masks_` zeroes them instead (same outputs, dense shapes) when a run needs masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .calibration import initial_loss_scale, scaled_backward
from .compaction import PlanMismatchError, PruningPlan, _encoder, _get
from .config import PruningConfig
from .errors import ConfigError, MissingDataError
from .importance import FisherImportance, MagnitudeImportance, RandomImportance, TaylorImportance
from .masks import set_mask_
from .structures import ColumnGroups, EncoderUnits
from .targets import require_real_weights


KINDS = ("heads", "neurons")


@dataclass(frozen=True)
class EncoderDims:
    """Sizes that set the cost of a head and of a neuron."""

    num_layers: int
    num_heads: int
    head_size: int
    hidden_size: int
    intermediate_size: int

    def head_flops(self, seq_len: int) -> int:
        """Forward FLOPs of one head: q/k/v and output projections plus the two attention matmuls."""
        return 2 * seq_len * self.hidden_size * self.head_size * 4 + 2 * 2 * seq_len * seq_len * self.head_size

    def neuron_flops(self, seq_len: int) -> int:
        """Forward FLOPs of one FFN neuron: its row of the input layer and column of the output layer."""
        return 2 * 2 * seq_len * self.hidden_size

    def total_flops(self, seq_len: int) -> int:
        return int(self.total(self.head_flops(seq_len), self.neuron_flops(seq_len)))

    def head_params(self) -> int:
        """Parameters of one head: its q/k/v rows and biases and its columns of the output projection."""
        return 4 * self.hidden_size * self.head_size + 3 * self.head_size

    def neuron_params(self) -> int:
        """Parameters of one FFN neuron: its input row and bias and its output column."""
        return 2 * self.hidden_size + 1

    def total(self, head_cost: float, neuron_cost: float) -> float:
        """Cost of every head and neuron of the encoder, given the cost of one of each."""
        return self.num_layers * (self.num_heads * head_cost + self.intermediate_size * neuron_cost)


@dataclass(frozen=True)
class Budget:
    """A structured target: keep ``fraction`` of the cost of all heads and neurons, counted in ``unit``."""

    option: str
    unit: str
    head: float
    neuron: float
    total: float
    fraction: float

    @property
    def amount(self) -> float:
        return self.fraction * self.total


def budget_of(config: PruningConfig, dims: EncoderDims) -> Budget | None:
    """The FLOPs (at ``flops_seq_len``) or parameter target of ``config``; ``None`` when it sets neither."""
    if config.target_params is not None:
        head, neuron, fraction = dims.head_params(), dims.neuron_params(), config.target_params
        option, unit = "target_params", "head/FFN parameters"
    elif config.target_flops is not None:
        seq_len = config.flops_seq_len
        head, neuron, fraction = dims.head_flops(seq_len), dims.neuron_flops(seq_len), config.target_flops
        option, unit = "target_flops", "encoder FLOPs"
    else:
        return None
    return Budget(option, unit, head, neuron, dims.total(head, neuron), fraction)


def encoder_dims(model: nn.Module) -> EncoderDims:
    _, layout, layers = _encoder(model)
    attention = _get(layers[0], layout.self_attention)
    ffn_in = _get(layers[0], layout.ffn_in)
    return EncoderDims(
        num_layers=len(layers),
        num_heads=getattr(attention, layout.num_heads_attribute),
        head_size=attention.attention_head_size,
        hidden_size=ffn_in.in_features,
        intermediate_size=ffn_in.out_features,
    )


def _plan_cost(plan: PruningPlan, head_cost: float, neuron_cost: float) -> float:
    return sum(map(len, plan.heads)) * head_cost + sum(map(len, plan.neurons)) * neuron_cost


def plan_flops(plan: PruningPlan, dims: EncoderDims, seq_len: int) -> int:
    """Encoder FLOPs of the heads and neurons ``plan`` keeps."""
    return int(_plan_cost(plan, dims.head_flops(seq_len), dims.neuron_flops(seq_len)))


def plan_params_fraction(plan: PruningPlan, dims: EncoderDims) -> float:
    """Fraction of the encoder's head and FFN parameters that ``plan`` keeps."""
    head, neuron = dims.head_params(), dims.neuron_params()
    return _plan_cost(plan, head, neuron) / dims.total(head, neuron)


@dataclass(frozen=True)
class UnitTarget:
    """One consumer projection through which `Pruner` masks a layer's heads or neurons during training."""

    kind: str
    layer: int
    module: nn.Module
    structure: ColumnGroups


def unit_targets(model: nn.Module, kinds: tuple[str, ...]) -> dict[str, UnitTarget]:
    """The attention-output (heads) and FFN-output (neurons) projections of every encoder layer, by module name.

    Masking a unit's input columns of these layers removes the unit (see `ColumnGroups`); the plan read back from
    those masks (`Pruner.plan`) then compacts the query/key/value rows and FFN input rows too.
    """
    _, layout, layers = _encoder(model)
    dims = encoder_dims(model)
    layer_names = {id(layer): name for name, layer in model.named_modules()}
    paths = {"heads": (layout.attention_output, dims.head_size), "neurons": (layout.ffn_out, 1)}
    targets = {}
    for index, layer in enumerate(layers):
        for kind in kinds:
            path, size = paths[kind]
            targets[f"{layer_names[id(layer)]}.{path}"] = UnitTarget(
                kind, index, _get(layer, path), ColumnGroups(size)
            )
    return targets


def kept_fraction(config: PruningConfig, dims: EncoderDims) -> float:
    """Fraction of the pruned kinds' units to keep so the encoder meets ``config``'s FLOPs or parameter target
    (same fraction for heads and neurons, as scores of the two kinds are not on one scale)."""
    structure = config.structure
    budget = budget_of(config, dims)
    assert budget is not None
    cost = {
        "heads": dims.num_layers * dims.num_heads * budget.head,
        "neurons": dims.num_layers * dims.intermediate_size * budget.neuron,
    }
    fixed = sum(cost[kind] for kind in KINDS if kind not in structure.kinds)  # type: ignore[union-attr]
    fraction = (budget.amount - fixed) / (budget.total - fixed)
    if fraction < 0:
        raise ConfigError(
            f"{budget.option}={budget.fraction} cannot be met by pruning only {structure.kinds}: the other units "  # type: ignore
            f"already use {fixed / budget.total:.3f} of the {budget.unit}. Raise {budget.option} or prune heads and "
            "neurons."
        )
    return fraction


# ------------------------------------------------------------------------------------------------------ scoring
def _weight(module: nn.Module) -> Tensor:
    return module.weight.detach().float()


def _magnitude_scores(model: nn.Module, p: int) -> dict[str, Tensor]:
    _, layout, layers = _encoder(model)
    dims = encoder_dims(model)
    heads, neurons = [], []
    for layer in layers:
        rows = sum(_weight(_get(layer, name)).abs().pow(p).sum(1) for name in (layout.query, layout.key, layout.value))
        cols = _weight(_get(layer, layout.attention_output)).abs().pow(p).sum(0)
        heads.append((rows + cols).reshape(dims.num_heads, dims.head_size).sum(1))
        neurons.append(
            _weight(_get(layer, layout.ffn_in)).abs().pow(p).sum(1)
            + _weight(_get(layer, layout.ffn_out)).abs().pow(p).sum(0)
        )
    return {"heads": torch.stack(heads), "neurons": torch.stack(neurons)}


def _gradient_scores(
    model: nn.Module,
    fisher: bool,
    dataloader: Iterable[Any],
    num_batches: int | None,
    loss_fn: Callable[..., Tensor] | None,
    matrices: dict[tuple[str, int], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Fisher (squared per-example mask gradients) or Taylor (|sum of mask gradients|) scores, via hooks.

    The gradient of the loss with respect to a mask on a unit's output equals the sum over tokens of the
    activation entering the consumer projection times its gradient, so hooks on the consumer inputs give it
    without changing the model.
    """
    _, layout, layers = _encoder(model)
    dims = encoder_dims(model)
    totals = {
        "heads": torch.zeros(dims.num_layers, dims.num_heads, dtype=torch.float64),
        "neurons": torch.zeros(dims.num_layers, dims.intermediate_size, dtype=torch.float64),
    }
    handles = []
    #: Per-example mask gradients of the current batch, kept until the batch's backward proved finite.
    pending: list[tuple[str, int, Tensor]] = []

    def make_hook(kind: str, index: int) -> Callable:
        def forward_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            activation = inputs[0]
            if not activation.requires_grad:
                return

            def backward_hook(grad: Tensor) -> None:
                # Half-precision models: multiply and sum over tokens in float32 (a bf16 sum of hundreds of
                # products keeps ~3 significant digits); the totals are float64 on the CPU, whatever the device.
                per_token = activation.detach().float() * grad.float()  # [batch, seq, width]
                per_example = per_token.sum(1)
                if kind == "heads":
                    per_example = per_example.reshape(per_example.shape[0], dims.num_heads, dims.head_size).sum(-1)
                pending.append((kind, index, per_example.cpu().double()))

            activation.register_hook(backward_hook)

        return forward_hook

    for index, layer in enumerate(layers):
        handles.append(_get(layer, layout.attention_output).register_forward_hook(make_hook("heads", index)))
        handles.append(_get(layer, layout.ffn_out).register_forward_hook(make_hook("neurons", index)))
    was_training = model.training
    model.eval()
    seen = 0
    scale = initial_loss_scale(model)
    try:
        for batch in dataloader:
            if num_batches is not None and seen >= num_batches:
                break
            scale = scaled_backward(model, batch, loss_fn, scale, lambda: [value for *_, value in pending],
                                    before=pending.clear)  # fmt: skip
            for kind, index, per_example in pending:
                per_example = per_example / scale
                if fisher:
                    totals[kind][index] += per_example.pow(2).sum(0)
                    if matrices is not None:
                        # Block-diagonal (per-layer) Fisher for mask rearrangement.
                        key = (kind, index)
                        matrices[key] = matrices.get(key, 0) + per_example.t() @ per_example
                else:
                    totals[kind][index] += per_example.sum(0)
            seen += 1
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if seen == 0:
        raise MissingDataError("The calibration dataloader yielded no batches.")
    if not fisher:
        # Taylor: first-order loss change of removing the unit, accumulated over the data.
        totals = {kind: value.abs() for kind, value in totals.items()}
    return {kind: value.float() for kind, value in totals.items()}


def score_units(
    model: nn.Module,
    config: PruningConfig,
    dataloader: Iterable[Any] | None = None,
    *,
    num_batches: int | None = None,
    loss_fn: Callable[..., Tensor] | None = None,
    matrices: dict[tuple[str, int], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Importance of every head (``[layers, heads]``) and FFN neuron (``[layers, neurons]``); higher = keep."""
    require_real_weights(model, "score_units")
    importance = config.importance
    if importance.requires_grad and dataloader is None:  # type: ignore[union-attr]
        raise MissingDataError(
            f"Importance {importance.registered_name!r} needs gradients: pass a dataloader of labelled "  # type: ignore
            "calibration batches (a few hundred to two thousand examples)."
        )
    if isinstance(importance, MagnitudeImportance):
        return _magnitude_scores(model, importance.p)
    if isinstance(importance, RandomImportance):
        dims = encoder_dims(model)
        generator = torch.Generator().manual_seed(config.seed)
        return {
            "heads": torch.rand(dims.num_layers, dims.num_heads, generator=generator),
            "neurons": torch.rand(dims.num_layers, dims.intermediate_size, generator=generator),
        }
    if isinstance(importance, (FisherImportance, TaylorImportance)):
        return _gradient_scores(
            model,
            isinstance(importance, FisherImportance),
            dataloader,
            num_batches,
            loss_fn,
            matrices,  # type: ignore
        )
    raise ConfigError(
        f"Importance {importance.registered_name!r} cannot score heads and neurons in one shot; use magnitude, l2, "  # type: ignore
        "random, taylor or fisher."
    )


# ------------------------------------------------------------------------------------------------------ selection
def _round_count(count: int, total: int, multiple: int) -> int:
    if multiple <= 1 or count == 0:
        return count
    return min(total, max(multiple, int(round(count / multiple)) * multiple))


def _top(scores: Tensor, count: int) -> list[int]:
    if count <= 0:
        return []
    order = torch.sort(scores.reshape(-1).float(), descending=True, stable=True).indices
    return sorted(order[:count].tolist())


def _global_keep(scores: Tensor, count: int) -> list[list[int]]:
    """Keep the ``count`` best units across all layers; per-layer index lists."""
    num_layers, width = scores.shape
    kept = [[] for _ in range(num_layers)]  # type: list[list[int]]
    for flat in _top(scores, count):
        kept[flat // width].append(flat % width)
    return [sorted(layer) for layer in kept]


def _fisher_search(scores: dict[str, Tensor], budget: Budget, kinds: tuple) -> tuple[int, int]:
    """Kwon et al. 2022's mask search: choose how many heads and neurons (best first, globally) maximise the kept
    importance within the budget."""
    heads_sorted = torch.sort(scores["heads"].reshape(-1).double(), descending=True).values
    neurons_sorted = torch.sort(scores["neurons"].reshape(-1).double(), descending=True).values
    head_cum = torch.cat([torch.zeros(1, dtype=torch.float64), heads_sorted.cumsum(0)])
    neuron_cum = torch.cat([torch.zeros(1, dtype=torch.float64), neurons_sorted.cumsum(0)])
    best = _best_counts(head_cum, neuron_cum, budget.amount, budget, kinds, min_heads=0)
    if best is None:
        raise ConfigError(
            f"No choice of {' and '.join(kinds)} fits {budget.fraction:.3f} of the {budget.unit}: the units that "
            f"are not pruned already cost more. Raise {budget.option} or prune more kinds."
        )
    return best


def _uniform_fisher_search(
    scores: dict[str, Tensor], dims: EncoderDims, budget: Budget, kinds: tuple
) -> tuple[int, int]:
    """The mask search with one (heads, neurons) count for every layer: maximise the importance kept over all
    layers when each layer keeps its best ``heads`` heads and ``neurons`` neurons within its share of the budget."""
    per_layer = {}
    for kind in KINDS:
        ranked = torch.sort(scores[kind].double(), dim=1, descending=True).values
        per_layer[kind] = torch.cat([torch.zeros(1, dtype=torch.float64), ranked.cumsum(1).sum(0)])
    best = _best_counts(per_layer["heads"], per_layer["neurons"], budget.amount / dims.num_layers, budget, kinds,
                        min_heads=1)  # fmt: skip
    if best is None:
        raise ConfigError(
            f"No per-layer choice of {' and '.join(kinds)} fits {budget.fraction:.3f} of the {budget.unit} with at "
            f"least one head per layer. Raise {budget.option} or set uniform=False."
        )
    return best


def _best_counts(
    head_cum: Tensor, neuron_cum: Tensor, amount: float, budget: Budget, kinds: tuple, min_heads: int
) -> tuple[int, int] | None:
    """The (heads, neurons) counts within ``amount`` that maximise the kept importance; ``*_cum[k]`` is the
    importance of the best ``k`` units. Kinds not pruned keep all their units."""
    total_heads, total_neurons = head_cum.numel() - 1, neuron_cum.numel() - 1
    head_options = range(min_heads, total_heads + 1) if "heads" in kinds else [total_heads]
    best: tuple[float, int, int] | None = None
    for num_heads in head_options:
        remaining = amount - num_heads * budget.head
        if remaining < 0:
            break
        if "neurons" in kinds:
            num_neurons = min(total_neurons, int(remaining // budget.neuron))
        elif remaining < total_neurons * budget.neuron:
            continue
        else:
            num_neurons = total_neurons
        value = float(head_cum[num_heads] + neuron_cum[num_neurons])
        if best is None or value > best[0]:
            best = (value, num_heads, num_neurons)
    return None if best is None else (best[1], best[2])


def select_units(scores: dict[str, Tensor], config: PruningConfig, dims: EncoderDims, model_type: str) -> PruningPlan:
    """Decide which heads and neurons to keep, per layer (local) or across layers (global / FLOPs target)."""
    structure = config.structure
    if not isinstance(structure, EncoderUnits):
        raise ConfigError(f"select_units needs a structured kind; got {structure.registered_name!r}.")  # type: ignore
    kinds = structure.kinds
    widths = {"heads": dims.num_heads, "neurons": dims.intermediate_size}
    kept: dict[str, list[list[int]]] = {
        kind: [list(range(widths[kind])) for _ in range(dims.num_layers)] for kind in KINDS
    }
    budget = budget_of(config, dims)
    fisher = isinstance(config.importance, FisherImportance)
    if budget is not None and structure.uniform:
        if fisher:
            counts = dict(zip(KINDS, _uniform_fisher_search(scores, dims, budget, kinds), strict=True))
        else:
            fraction = kept_fraction(config, dims)
            counts = {k: int(math.floor(fraction * widths[k])) for k in kinds}
        for kind in kinds:
            kept[kind] = [_top(scores[kind][layer], counts[kind]) for layer in range(dims.num_layers)]
    elif budget is not None:
        if fisher:
            counts = dict(zip(KINDS, _fisher_search(scores, budget, kinds), strict=True))
        else:
            fraction = kept_fraction(config, dims)
            counts = {k: int(math.floor(fraction * widths[k] * dims.num_layers)) for k in kinds}
        for kind in kinds:
            kept[kind] = _global_keep(scores[kind], counts[kind])
    else:
        for kind in kinds:
            if config.scope == "global":
                count = widths[kind] * dims.num_layers - int(round(config.sparsity * widths[kind] * dims.num_layers))
                kept[kind] = _global_keep(scores[kind], count)
            else:
                count = widths[kind] - int(round(config.sparsity * widths[kind]))
                kept[kind] = [_top(scores[kind][layer], count) for layer in range(dims.num_layers)]
    if structure.round_to > 1 and "neurons" in kinds:
        kept["neurons"] = [
            _top(scores["neurons"][layer], _round_count(len(layer_kept), widths["neurons"], structure.round_to))
            for layer, layer_kept in enumerate(kept["neurons"])
        ]
    if "heads" in kinds and not any(kept["heads"]):
        raise ConfigError(
            "This pruning would remove every attention head of every layer, leaving no attention at all. Lower the "
            "sparsity or raise target_flops / target_params (with uniform=True, each layer's share is rounded down)."
        )
    return PruningPlan(
        model_type=model_type,
        num_heads=dims.num_heads,
        intermediate_size=dims.intermediate_size,
        heads=kept["heads"],
        neurons=kept["neurons"],
    )


def rearrange_(plan: PruningPlan, matrices: dict[tuple[str, int], Tensor], max_swaps: int = 1000) -> int:
    """Kwon et al. 2022's mask rearrangement: within each layer, swap kept and removed units while that lowers
    the second-order loss estimate ``r' F r`` (``r``: 1 for removed units, ``F``: the layer's Fisher block).

    The mask search ranks units by the Fisher diagonal alone; this accounts for interactions within a layer while
    keeping the number of units per layer (hence the FLOPs). Returns the number of swaps made.
    """
    swaps = 0
    for (kind, index), fisher in matrices.items():
        kept_list = plan.heads[index] if kind == "heads" else plan.neurons[index]
        width = fisher.shape[0]
        if not kept_list or len(kept_list) == width:
            continue
        removed = torch.ones(width, dtype=torch.float64)
        removed[kept_list] = 0.0
        diagonal = fisher.diagonal()
        for _ in range(max_swaps):
            kept_idx = (removed == 0).nonzero().reshape(-1)
            removed_idx = (removed == 1).nonzero().reshape(-1)
            fr = fisher @ removed
            # Change of r'Fr when kept unit i is removed and removed unit j is kept: r' = r + e_i - e_j.
            delta = (
                (2 * fr[kept_idx] + diagonal[kept_idx])[:, None]
                + (diagonal[removed_idx] - 2 * fr[removed_idx])[None, :]
                - 2 * fisher[kept_idx][:, removed_idx]
            )
            best = int(torch.argmin(delta))
            if float(delta.reshape(-1)[best]) >= -1e-12 * float(diagonal.abs().max()):
                break
            i, j = kept_idx[best // len(removed_idx)], removed_idx[best % len(removed_idx)]
            removed[i], removed[j] = 1.0, 0.0
            swaps += 1
        new_kept = sorted((removed == 0).nonzero().reshape(-1).tolist())
        if kind == "heads":
            plan.heads[index] = new_kept
        else:
            plan.neurons[index] = new_kept
    return swaps


def plan_structured(
    model: nn.Module,
    config: PruningConfig,
    dataloader: Iterable[Any] | None = None,
    *,
    num_batches: int | None = None,
    loss_fn: Callable[..., Tensor] | None = None,
) -> PruningPlan:
    """Score heads/neurons of ``model`` and return the `PruningPlan` that ``config`` asks for (model unchanged).

    Example:
        ```python
        config = PruningConfig(importance="fisher", structure="heads_and_neurons", target_flops=0.5)
        plan = plan_structured(model, config, calibration_loader)
        compact_(model, plan)
        ```
    """
    require_real_weights(model, "plan_structured")
    importance = config.importance
    rearrange = isinstance(importance, FisherImportance) and importance.rearrange
    matrices: dict[tuple[str, int], Tensor] | None = {} if rearrange else None
    scores = score_units(model, config, dataloader, num_batches=num_batches, loss_fn=loss_fn, matrices=matrices)
    plan = select_units(scores, config, encoder_dims(model), model.config.model_type)  # type: ignore[attr-defined]
    if matrices:
        plan.extra["rearranged_swaps"] = rearrange_(plan, matrices)
    dims = encoder_dims(model)
    plan.extra["flops_seq_len"] = config.flops_seq_len
    plan.extra["encoder_flops_fraction"] = plan_flops(plan, dims, config.flops_seq_len) / dims.total_flops(
        config.flops_seq_len
    )
    plan.extra["encoder_params_fraction"] = plan_params_fraction(plan, dims)
    return plan


@torch.no_grad()
def apply_plan_masks_(model: nn.Module, plan: PruningPlan) -> None:
    """Zero the removed heads and neurons with masks instead of removing them (dense shapes, same outputs)."""
    require_real_weights(model, "apply_plan_masks_")
    _, layout, layers = _encoder(model)
    plan.validate()
    dims = encoder_dims(model)
    if (plan.num_layers, plan.num_heads, plan.intermediate_size) != (
        dims.num_layers, dims.num_heads, dims.intermediate_size
    ):
        raise PlanMismatchError(
            f"The plan is for {plan.num_layers} layers of {plan.num_heads} heads and {plan.intermediate_size} "
            f"neurons; this model has {dims.num_layers} layers of {dims.num_heads} heads and "
            f"{dims.intermediate_size} neurons. Apply a plan only to the model it was made for."
        )
    for index, layer in enumerate(layers):
        heads = torch.zeros(dims.num_heads, dtype=torch.bool)
        heads[plan.heads[index]] = True
        head_rows = heads.repeat_interleave(dims.head_size)
        neurons = torch.zeros(dims.intermediate_size, dtype=torch.bool)
        neurons[plan.neurons[index]] = True
        for name, rows in ((layout.query, head_rows), (layout.key, head_rows), (layout.value, head_rows),
                           (layout.ffn_in, neurons)):  # fmt: skip
            linear = _get(layer, name)
            set_mask_(linear, rows[:, None].expand_as(linear.weight))
            if linear.bias is not None:
                set_mask_(linear, rows, param_name="bias")
        for name, cols in ((layout.attention_output, head_rows), (layout.ffn_out, neurons)):
            linear = _get(layer, name)
            set_mask_(linear, cols[None, :].expand_as(linear.weight))
