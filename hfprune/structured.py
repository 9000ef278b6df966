"""Structured pruning of transformer encoders: score heads and FFN neurons, choose which to keep, build a plan.

`plan_structured` is pure (it reads the model and data, and returns a `PruningPlan`); `compaction.compact_` then
removes the units, and `apply_plan_masks_` zeroes them instead (same outputs, dense shapes) when a run needs masks.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .adapters import get_adapter
from .budget import (
    KINDS,
    EncoderDims,
    budget_of,
    encoder_dims,
    fisher_search,
    kept_fraction,
    latency_counts,
    latency_table_for,
    plan_flops,
    plan_params_fraction,
    predicted_latency_fraction,
    rounded_within_budget,
    uniform_fisher_search,
)
from .calibration import check_calibration_batch, initial_loss_scale, scaled_backward
from .compaction import PlanMismatchError, PruningPlan, compact_, encoder_structure
from .config import PruningConfig
from .errors import ConfigError, MissingDataError
from .latency import LatencyTable, aim_by_measuring, measured_latency_fraction
from .masks import masked_weight, set_mask_
from .selection import check_round_to, round_count
from .shrink import unit_mask
from .structures import ColumnGroups, EncoderUnits, HybridBlocks
from .targets import require_real_weights


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
    _, layers, groups = encoder_structure(model)
    layer_names = {id(layer): name for name, layer in model.named_modules()}
    targets = {}
    for index, layer in enumerate(layers):
        for kind in kinds:
            group = groups[kind]
            targets[f"{layer_names[id(layer)]}.{group.consumer}"] = UnitTarget(
                kind, index, layer.get_submodule(group.consumer), ColumnGroups(group.unit_size)
            )
    return targets


# ------------------------------------------------------------------------------------------------------ scoring
class UnitStatistics:
    """What one-shot scoring of heads and neurons can gather, computed when a criterion asks for it.

    Each `Importance` turns these into scores (`Importance.unit_scores`); which one it calls follows from its
    `Importance.needs`, so this engine never asks which criterion it runs. Results are ``{kind: [layers, units]}``.
    """

    def __init__(
        self,
        model: nn.Module,
        seed: int,
        dataloader: Iterable[Any] | None,
        num_batches: int | None,
        loss_fn: Callable[..., Tensor] | None,
        matrices: dict[tuple[str, int], Tensor] | None,
    ) -> None:
        self.model = model
        self.seed = seed
        self.dataloader = dataloader
        self.num_batches = num_batches
        self.loss_fn = loss_fn
        self.matrices = matrices
        self.dims = encoder_dims(model)
        self.layers, self.groups = self.dims.adapter.layers(model), self.dims.groups

    @torch.no_grad()
    def weight_norms(self, p: int) -> dict[str, Tensor]:
        """``sum |w|^p`` over every weight each unit owns (all slices, all parts)."""
        result = {}
        for kind, group in self.groups.items():
            per_layer = []
            for layer in self.layers:
                num_units = group.num_units(layer)
                total: Tensor | float = 0.0
                for piece in group.present_slices(layer):
                    weight = masked_weight(layer.get_submodule(piece.module)).detach().float()
                    norms = weight.abs().pow(p).sum(1 - piece.dim)
                    total = total + norms.reshape(piece.parts, num_units * group.unit_size).sum(0)
                per_layer.append(total.reshape(num_units, group.unit_size).sum(1))  # type: ignore[union-attr]
            result[kind] = torch.stack(per_layer)
        return result

    def random(self) -> dict[str, Tensor]:
        """Uniform draws, seeded from the config."""
        generator = torch.Generator().manual_seed(self.seed)
        return {
            "heads": torch.rand(self.dims.num_layers, self.dims.num_heads, generator=generator),
            "neurons": torch.rand(self.dims.num_layers, self.dims.intermediate_size, generator=generator),
        }

    def mask_gradient_sums(self) -> dict[str, Tensor]:
        """``sum over examples of dL_i/dm`` for a mask ``m`` on each unit's output (Taylor)."""
        return self._mask_gradients(fisher=False)

    def mask_gradient_squares(self) -> dict[str, Tensor]:
        """``sum over examples of (dL_i/dm)^2`` (diagonal Fisher); fills ``matrices`` with each layer's block."""
        return self._mask_gradients(fisher=True)

    def _mask_gradients(self, fisher: bool) -> dict[str, Tensor]:
        """Mask gradients via hooks on the consumers' inputs.

        The gradient of the loss with respect to a mask on a unit's output equals the sum over tokens of the
        activation entering the consumer projection times its gradient, so hooks give it without changing the
        model.
        """
        if self.dataloader is None:
            raise MissingDataError("Gradient-based unit scores need a dataloader of labelled calibration batches.")
        model, dims = self.model, self.dims
        widths = {"heads": dims.num_heads, "neurons": dims.intermediate_size}
        totals = {kind: torch.zeros(dims.num_layers, width, dtype=torch.float64) for kind, width in widths.items()}
        handles = []
        #: Per-example mask gradients of the current batch, kept until the batch's backward proved finite.
        pending: list[tuple[str, int, Tensor]] = []

        def make_hook(kind: str, index: int, unit_size: int) -> Callable:
            def forward_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
                activation = inputs[0]
                if not activation.requires_grad:
                    return
                # The hook closes over a detached view, not over the tensor it is registered on: that would be a
                # reference cycle, freed only by the garbage collector, and every batch's activations would pile
                # up until it ran (gigabytes over a calibration set).
                detached = activation.detach()

                def backward_hook(grad: Tensor) -> None:
                    # Half-precision models: multiply and sum over tokens in float32 (a bf16 sum of hundreds of
                    # products keeps ~3 significant digits); the totals are float64 on the CPU, whatever the device.
                    per_token = detached.float() * grad.float()  # [batch, (seq,) width]
                    per_example = per_token.reshape(per_token.shape[0], -1, per_token.shape[-1]).sum(1)
                    if unit_size > 1:
                        per_example = per_example.reshape(per_example.shape[0], -1, unit_size).sum(-1)
                    pending.append((kind, index, per_example.cpu().double()))

                activation.register_hook(backward_hook)

            return forward_hook

        for index, layer in enumerate(self.layers):
            for kind, group in self.groups.items():
                consumer = layer.get_submodule(group.consumer)
                handles.append(consumer.register_forward_hook(make_hook(kind, index, group.unit_size)))
        # Only activation gradients are needed: weights get no .grad (no weight-gradient matmuls, no gradient
        # buffers); the first layer's input is made to require grad so the backward pass reaches every layer.
        handles.append(self.layers[0].register_forward_pre_hook(_input_requires_grad, with_kwargs=True))
        trainable = [param for param in model.parameters() if param.requires_grad]
        was_training = model.training
        model.eval()
        seen = 0
        scale = initial_loss_scale(model)
        try:
            for param in trainable:
                param.requires_grad_(False)
            for batch in self.dataloader:
                if self.num_batches is not None and seen >= self.num_batches:
                    break
                check_calibration_batch(model, batch, seen)
                for chunk, share in token_chunks(batch, MAX_TOKENS_PER_BACKWARD):
                    scale = self._accumulate(chunk, share, scale, pending, totals, fisher)
                seen += 1
        finally:
            for handle in handles:
                handle.remove()
            for param in trainable:
                param.requires_grad_(True)
            model.zero_grad(set_to_none=True)
            model.train(was_training)
        if seen == 0:
            raise MissingDataError("The calibration dataloader yielded no batches.")
        return {kind: value.float() for kind, value in totals.items()}

    def _accumulate(
        self,
        batch: Any,
        share: float,
        scale: float,
        pending: list[tuple[str, int, Tensor]],
        totals: dict[str, Tensor],
        fisher: bool,
    ) -> float:
        """One backward pass over ``batch`` (``share`` of a calibration batch), folded into the totals."""
        matrices = self.matrices
        scale = scaled_backward(self.model, batch, self.loss_fn, scale, lambda: [value for *_, value in pending],
                                before=pending.clear)  # fmt: skip
        for kind, index, per_example in pending:
            # A chunk's loss is its own mean: ``share`` rescales its gradients to the whole batch's mean loss.
            per_example = per_example * (share / scale)
            if fisher:
                totals[kind][index] += per_example.pow(2).sum(0)
                if matrices is not None:
                    # Block-diagonal (per-layer) Fisher for mask rearrangement.
                    key = (kind, index)
                    if key not in matrices:
                        matrices[key] = torch.zeros(per_example.shape[1], per_example.shape[1], dtype=torch.float64)
                    matrices[key].addmm_(per_example.t(), per_example)
            else:
                totals[kind][index] += per_example.sum(0)
        pending.clear()
        return scale


#: Tokens per backward pass in one-shot unit scoring; longer calibration batches are split (same gradients, as
#: the model is in eval mode, and a fraction of the activation memory).
MAX_TOKENS_PER_BACKWARD = 512


def token_chunks(batch: Any, max_tokens: int) -> Iterator[tuple[Any, float]]:
    """``batch`` split along its first dimension into pieces of at most ``max_tokens`` tokens, each with its share
    of the examples. Only dict batches of token ids are split; anything else is one piece."""
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.numel() <= max_tokens:
        yield batch, 1.0
        return
    size = ids.shape[0]
    step = max(1, max_tokens // ids.shape[1])
    for start in range(0, size, step):
        stop = min(size, start + step)
        piece = {key: value[start:stop] if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == size
                 else value for key, value in batch.items()}  # fmt: skip
        yield piece, (stop - start) / size


def _input_requires_grad(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Forward pre-hook: the layer's hidden states become a leaf that requires grad (weights do not)."""
    if args and isinstance(args[0], Tensor) and args[0].is_floating_point():
        args = (args[0].detach().requires_grad_(), *args[1:])
    elif isinstance(kwargs.get("hidden_states"), Tensor):
        kwargs = {**kwargs, "hidden_states": kwargs["hidden_states"].detach().requires_grad_()}
    return args, kwargs


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
    if importance.needs_data and dataloader is None:  # type: ignore[union-attr]
        raise MissingDataError(
            f"Importance {importance.registered_name!r} needs gradients: pass a dataloader of labelled "  # type: ignore
            "calibration batches (a few hundred to two thousand examples)."
        )
    stats = UnitStatistics(model, config.seed, dataloader, num_batches, loss_fn, matrices)
    return importance.unit_scores(stats)  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------------ selection
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


def select_units(
    scores: dict[str, Tensor], config: PruningConfig, dims: EncoderDims, model_type: str,
    table: LatencyTable | None = None,
) -> PruningPlan:  # fmt: skip
    """Decide which heads and neurons to keep, per layer (local) or across layers (global / FLOPs target), or per
    layer within a latency budget (``target_latency``, spent from ``table``)."""
    structure = config.structure
    if not isinstance(structure, EncoderUnits):
        raise ConfigError(f"select_units needs a structured kind; got {structure.registered_name!r}.")  # type: ignore
    kinds = structure.kinds
    widths = {"heads": dims.num_heads, "neurons": dims.intermediate_size}
    kept: dict[str, list[list[int]]] = {
        kind: [list(range(widths[kind])) for _ in range(dims.num_layers)] for kind in KINDS
    }
    budget = budget_of(config, dims)
    fisher = config.importance.additive_unit_scores  # type: ignore[union-attr]
    if config.target_latency is not None:
        if table is None:
            raise ConfigError("target_latency needs a latency table (hfprune.budget.latency_table_for).")
        counts = latency_counts(scores, table, config.target_latency, kinds, uniform=structure.uniform,
                                additive=fisher, multiple=structure.round_to)  # fmt: skip
        for kind in kinds:
            kept[kind] = [_top(scores[kind][layer], counts[kind][layer]) for layer in range(dims.num_layers)]
    elif budget is not None and structure.uniform:
        if fisher:
            counts = dict(zip(KINDS, uniform_fisher_search(scores, dims, budget, kinds), strict=True))
        else:
            fraction = kept_fraction(config, dims)
            counts = {k: int(math.floor(fraction * widths[k])) for k in kinds}
        for kind in kinds:
            kept[kind] = [_top(scores[kind][layer], counts[kind]) for layer in range(dims.num_layers)]
    elif budget is not None:
        if fisher:
            counts = dict(zip(KINDS, fisher_search(scores, budget, kinds), strict=True))
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
    if structure.round_to > 1 and "neurons" in kinds and config.target_latency is None:
        if budget is None:
            counts = [round_count(len(layer_kept), widths["neurons"], structure.round_to)
                      for layer_kept in kept["neurons"]]  # fmt: skip
        else:
            counts = rounded_within_budget(kept, scores["neurons"], budget, structure.round_to, structure.uniform)
        kept["neurons"] = [_top(scores["neurons"][layer], count) for layer, count in enumerate(counts)]
    if "heads" in kinds and not any(kept["heads"]):
        raise ConfigError(
            "This pruning would remove every attention head of every layer, leaving no attention at all. Lower the "
            "sparsity or raise target_flops / target_params / target_latency (with uniform=True, each layer's share "
            "is rounded down)."
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
    structure = config.structure
    if isinstance(structure, HybridBlocks):
        raise ConfigError("The hybrid structure (attention blocks, FFN neurons) is learned during fine-pruning: use "
                          "PruningTrainer (or `hfprune train`) with importance movement; one-shot plans take heads, "
                          "neurons or heads_and_neurons.")  # fmt: skip
    if isinstance(structure, EncoderUnits) and "neurons" in structure.kinds:
        check_round_to(structure.round_to, encoder_dims(model).intermediate_size)  # before any calibration work
    # The latency table is measured (or read from the cache) before any calibration work: a shape the model cannot
    # take, or a foreign table, fails first.
    table = latency_table_for(model, config) if config.target_latency is not None else None
    importance = config.importance
    matrices: dict[tuple[str, int], Tensor] | None = {} if importance.wants_unit_interactions() else None  # type: ignore
    scores = score_units(model, config, dataloader, num_batches=num_batches, loss_fn=loss_fn, matrices=matrices)
    if table is not None:
        plan = _measured_latency_plan(model, config, scores, matrices, table)
    else:
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


def _measured_latency_plan(
    model: nn.Module, config: PruningConfig, scores: dict[str, Tensor], matrices: dict | None, table: LatencyTable
) -> PruningPlan:
    """The plan for ``config.target_latency`` from the table, compacted, timed against the dense model at the
    latency shape and re-aimed while it misses (`hfprune.latency.aim_by_measuring`)."""
    example = get_adapter(model).example_inputs(model, *table.key["shape"])

    def plan_for(aim: float) -> PruningPlan:
        plan = select_units(scores, dataclasses.replace(config, target_latency=aim), encoder_dims(model),
                            model.config.model_type, table)  # type: ignore[attr-defined]  # fmt: skip
        if matrices:
            plan.extra["rearranged_swaps"] = rearrange_(plan, matrices)  # same counts per layer: same latency
        plan.extra.update({"latency_shape": table.key["shape"], "latency_device": table.key["device"],
                           "predicted_latency_fraction": predicted_latency_fraction(plan, table)})  # fmt: skip
        return plan

    def measure(plan: PruningPlan) -> float:
        pruned = copy.deepcopy(model)
        compact_(pruned, plan)
        return measured_latency_fraction(model, pruned, example)

    return aim_by_measuring(config.target_latency, plan_for, measure)  # type: ignore[arg-type]


@torch.no_grad()
def apply_plan_masks_(model: nn.Module, plan: PruningPlan) -> None:
    """Zero the removed heads and neurons with masks instead of removing them (dense shapes, same outputs)."""
    require_real_weights(model, "apply_plan_masks_")
    _, layers, groups = encoder_structure(model)
    plan.validate()
    dims = encoder_dims(model)
    if (plan.num_layers, plan.num_heads, plan.intermediate_size) != (
        dims.num_layers,
        dims.num_heads,
        dims.intermediate_size,
    ):
        raise PlanMismatchError(
            f"The plan is for {plan.num_layers} layers of {plan.num_heads} heads and {plan.intermediate_size} "
            f"neurons; this model has {dims.num_layers} layers of {dims.num_heads} heads and "
            f"{dims.intermediate_size} neurons. Apply a plan only to the model it was made for."
        )
    kept = {"heads": plan.heads, "neurons": plan.neurons}
    for index, layer in enumerate(layers):
        for kind, group in groups.items():
            num_units = group.num_units(layer)
            for piece in group.present_slices(layer):
                linear = layer.get_submodule(piece.module)
                keep = unit_mask(kept[kind][index], num_units, group.unit_size, piece.parts)
                if piece.dim == 0:
                    set_mask_(linear, keep[:, None].expand_as(linear.weight))
                    if linear.bias is not None:
                        set_mask_(linear, keep, param_name="bias")
                else:
                    set_mask_(linear, keep[None, :].expand_as(linear.weight))
