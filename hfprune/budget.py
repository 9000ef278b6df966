"""Costs and targets of heads/neurons pruning: unit costs, budgets and the mask searches that spend them.

One owner for what a unit costs (FLOPs and parameters from the family's adapter, measured milliseconds from a
`hfprune.latency.LatencyTable`) and for turning a target (``target_flops``, ``target_params``, ``target_latency``)
into kept counts. `structured` (one-shot plans) and `pruner` (pruning during training) both call it; neither calls
the other for costs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .adapters import ArchAdapter, get_adapter
from .adapters.base import unit_param_count
from .compaction import PruningPlan, compact_, encoder_structure
from .config import PruningConfig
from .errors import ConfigError
from .latency import (
    LatencyTable,
    cached_table,
    curves_from_savings,
    default_neuron_step,
    measure_savings,
    steady_allocator,
    table_key,
    width_grid,
)
from .selection import round_count
from .shrink import UnitGroup


KINDS = ("heads", "neurons")


@dataclass(frozen=True, eq=False)
class EncoderDims:
    """Sizes and unit costs of an encoder, from its adapter (`UnitGroup` slices and attention products).

    Every layer has the same widths before pruning, so the costs of one head and one neuron are read off the
    first layer.
    """

    adapter: ArchAdapter
    layer: nn.Module
    groups: dict[str, UnitGroup]
    num_layers: int
    num_heads: int
    intermediate_size: int
    model: nn.Module

    def _seq_len(self, seq_len: int) -> int:
        return self.adapter.sequence_length(self.model, seq_len)

    def head_flops(self, seq_len: int) -> int:
        """Forward FLOPs of one head: every weight it owns plus its attention products."""
        return self.adapter.unit_flops(self.model, self.groups["heads"], self.layer, self._seq_len(seq_len))

    def neuron_flops(self, seq_len: int) -> int:
        """Forward FLOPs of one FFN neuron: its rows of the input layer and column of the output layer."""
        return self.adapter.unit_flops(self.model, self.groups["neurons"], self.layer, self._seq_len(seq_len))

    def total_flops(self, seq_len: int) -> int:
        return int(self.total(self.head_flops(seq_len), self.neuron_flops(seq_len)))

    def head_params(self) -> int:
        """Parameters of one head: its weight slices and their bias entries."""
        return unit_param_count(self.groups["heads"], self.layer)

    def neuron_params(self) -> int:
        """Parameters of one FFN neuron: its input row(s) and bias and its output column."""
        return unit_param_count(self.groups["neurons"], self.layer)

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
    adapter, layers, groups = encoder_structure(model)
    return EncoderDims(
        adapter=adapter,
        layer=layers[0],
        groups=groups,
        num_layers=len(layers),
        num_heads=groups["heads"].num_units(layers[0]),
        intermediate_size=groups["neurons"].num_units(layers[0]),
        model=model,
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


def fisher_search(scores: dict[str, Tensor], budget: Budget, kinds: tuple) -> tuple[int, int]:
    """Kwon et al. 2022's mask search: choose how many heads and neurons (best first, globally) maximise the kept
    importance within the budget."""
    heads_sorted = torch.sort(scores["heads"].reshape(-1).double(), descending=True).values
    neurons_sorted = torch.sort(scores["neurons"].reshape(-1).double(), descending=True).values
    head_cum = torch.cat([torch.zeros(1, dtype=torch.float64), heads_sorted.cumsum(0)])
    neuron_cum = torch.cat([torch.zeros(1, dtype=torch.float64), neurons_sorted.cumsum(0)])
    best = best_counts(head_cum, neuron_cum, budget.amount, budget, kinds, min_heads=0)
    if best is None:
        raise ConfigError(
            f"No choice of {' and '.join(kinds)} fits {budget.fraction:.3f} of the {budget.unit}: the units that "
            f"are not pruned already cost more. Raise {budget.option} or prune more kinds."
        )
    return best


def uniform_fisher_search(
    scores: dict[str, Tensor], dims: EncoderDims, budget: Budget, kinds: tuple
) -> tuple[int, int]:
    """The mask search with one (heads, neurons) count for every layer: maximise the importance kept over all
    layers when each layer keeps its best ``heads`` heads and ``neurons`` neurons within its share of the budget."""
    per_layer = {}
    for kind in KINDS:
        ranked = torch.sort(scores[kind].double(), dim=1, descending=True).values
        per_layer[kind] = torch.cat([torch.zeros(1, dtype=torch.float64), ranked.cumsum(1).sum(0)])
    best = best_counts(per_layer["heads"], per_layer["neurons"], budget.amount / dims.num_layers, budget, kinds,
                        min_heads=1)  # fmt: skip
    if best is None:
        raise ConfigError(
            f"No per-layer choice of {' and '.join(kinds)} fits {budget.fraction:.3f} of the {budget.unit} with at "
            f"least one head per layer. Raise {budget.option} or set uniform=False."
        )
    return best


def best_counts(
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


def rounded_within_budget(
    kept: dict[str, list[list[int]]], neuron_scores: Tensor, budget: Budget, multiple: int, uniform: bool
) -> list[int]:
    """Kept neurons per layer as multiples of ``multiple`` that stay within ``budget``.

    Rounding to the nearest multiple can overshoot the target (a 0.5 FLOPs target ended at 0.65 with
    ``round_to=32`` on 37-wide layers); here each layer's count is rounded down (possibly to 0: the layer's FFN is
    then skipped), then the budget this frees is spent a multiple at a time on the layer whose next neurons score
    highest (on every layer at once when ``uniform``). The counts the budget search chose are within it, so the
    rounded ones are too.
    """
    width = neuron_scores.shape[1]
    ranked = torch.sort(neuron_scores.double(), dim=1, descending=True).values
    cumulative = torch.cat([torch.zeros(len(ranked), 1, dtype=torch.float64), ranked.cumsum(1)], dim=1)
    counts = [round_count(len(layer), width, multiple, down=True) for layer in kept["neurons"]]
    head_cost = sum(map(len, kept["heads"])) * budget.head

    def cost(values: list[int]) -> float:
        return head_cost + sum(values) * budget.neuron

    while True:
        grown = [min(width, count + multiple) for count in counts]
        if uniform:
            candidates = [grown] if grown != counts else []
        else:
            candidates = [counts[:layer] + [grown[layer]] + counts[layer + 1 :]
                          for layer in range(len(counts)) if grown[layer] != counts[layer]]  # fmt: skip
        candidates = [option for option in candidates if cost(option) <= budget.amount * (1 + 1e-9)]
        if not candidates:
            return counts
        counts = max(candidates, key=lambda option: float(sum(cumulative[i, c] for i, c in enumerate(option))))


# ------------------------------------------------------------------------------------------ measured latency
def latency_shape(config: PruningConfig) -> list[int]:
    """Batch x sequence at which ``config``'s latency target holds (default 1 x ``flops_seq_len``)."""
    return list(config.latency_shape) if config.latency_shape else [1, config.flops_seq_len]


def latency_table_for(model: nn.Module, config: PruningConfig, rebuild: bool = False) -> LatencyTable:
    """The encoder latency table for ``config``'s shape on the model's device: ``config.latency_table`` (checked
    against this model, device, torch, dtype and shape), else the cached one, else measured now and cached."""
    shape = latency_shape(config)
    if len(shape) != 2:
        raise ConfigError(f"latency_shape for a transformer is [batch, sequence length]; got {shape}.")
    key = table_key(model, shape)
    return cached_table(key, lambda: encoder_latency_table(model, *shape), config.latency_table, rebuild=rebuild)


def encoder_latency_table(
    model: nn.Module,
    batch_size: int = 1,
    seq_len: int = 128,
    *,
    neuron_step: int | None = None,
    rounds: int = 7,
    warmup: int = 2,
    min_seconds: float = 1.0,
) -> LatencyTable:
    """Measure a transformer encoder's heads and FFN-neuron curves at ``batch_size`` x ``seq_len`` (on the
    model's device and dtype). Every layer has the same widths, so each grid width is one copy with that width
    in every layer; heads are measured at every count, neurons every ``neuron_step`` (default: about 32 widths).
    """
    adapter = get_adapter(model)
    check_input_length(model, seq_len)
    dims = encoder_dims(model)
    example = adapter.example_inputs(model, batch_size, seq_len)
    step = neuron_step or default_neuron_step(dims.intermediate_size)
    model_type = model.config.model_type  # type: ignore[union-attr]
    full = {"heads": dims.num_heads, "neurons": dims.intermediate_size}

    def build_variant(kind: str, width: int) -> Callable[[], nn.Module]:
        def variant() -> nn.Module:
            kept = {k: [list(range(full[k] if k != kind else width))] * dims.num_layers for k in full}
            plan = PruningPlan(model_type=model_type, num_heads=dims.num_heads,
                               intermediate_size=dims.intermediate_size, heads=kept["heads"],
                               neurons=kept["neurons"])  # fmt: skip
            copied = copy.deepcopy(model)
            compact_(copied, plan)
            return copied.eval()

        return variant

    variants = [(kind, width, build_variant(kind, width), dims.num_layers)
                for kind, grid in (("heads", width_grid(dims.num_heads, 1)),
                                   ("neurons", width_grid(dims.intermediate_size, step)))
                for width in grid]  # fmt: skip
    allocator = steady_allocator()
    start = time.perf_counter()
    was_training = model.training
    dense_ms, saved, rounds = measure_savings(
        model.eval(), variants, example, rounds=rounds, warmup=warmup, min_seconds=min_seconds
    )
    model.train(was_training)
    layers = [str(index) for index in range(dims.num_layers)]
    return LatencyTable(
        key=table_key(model, [batch_size, seq_len]),
        dense_ms=dense_ms,
        curves=curves_from_savings(saved, full, {"heads": layers, "neurons": layers}),
        protocol={
            "rounds": rounds,
            "warmup": warmup,
            "allocator": allocator,
            "neuron_step": step,
            "seconds": round(time.perf_counter() - start, 1),
            "interleaved": "chunks of 6 with the dense model",
            "statistic": "median",
        },  # fmt: skip
    )


def check_input_length(model: nn.Module, seq_len: int) -> None:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and seq_len > limit:
        raise ConfigError(
            f"A latency shape of {seq_len} tokens is longer than this model takes ({limit} positions). Measure at "
            f"a sequence length of at most {limit} (latency_shape / --seq-len)."
        )


def _unreachable(table: LatencyTable, target: float, smallest_ms: float, what: str) -> ConfigError:
    return ConfigError(
        f"target_latency={target} cannot be met: {what} runs at {smallest_ms / table.dense_ms:.3f} of the dense "
        f"model's {table.dense_ms:.2f} ms at {'x'.join(map(str, table.key['shape']))} on {table.key['device']} "
        "(embeddings, norms and the head do not shrink). Raise target_latency, or prune more kinds."
    )


def latency_counts(
    scores: dict[str, Tensor], table: LatencyTable, target: float, kinds: tuple[str, ...], *, uniform: bool,
    additive: bool, multiple: int = 1,
) -> dict[str, list[int]]:  # fmt: skip
    """Kept heads and neurons per layer within ``target`` x the dense latency, predicted from ``table``.

    Widths are the table's friendly ones (each saves measurably more than the next wider one; multiples of
    ``multiple`` for neurons). With additive scores (Fisher), the counts maximise the kept importance, a layer's
    importance being the sum of its best units (Kwon et al.'s latency-aware search, solved exactly per layer by
    dynamic programming over the budget instead of their flat-then-linear fit); with ``uniform`` every layer gets
    the same counts. Other scores are not comparable across kinds, so both kinds keep the same share of units.
    """
    num_layers = scores["heads"].shape[0]
    options, values, costs = {}, {}, {}
    for kind in KINDS:
        curve = table.curve(kind)
        full = curve.full_width
        if kind in kinds:
            friendly = curve.friendly_widths(table.tolerance_ms, multiple if kind == "neurons" else 1)
            if kind == "heads" and (uniform or not additive):  # one width for every layer: never no attention
                friendly = [width for width in friendly if width > 0] or [full]
        else:
            friendly = [full]
        options[kind] = friendly
        ranked = torch.sort(scores[kind].double(), dim=1, descending=True).values
        cumulative = torch.cat([torch.zeros(num_layers, 1, dtype=torch.float64), ranked.cumsum(1)], dim=1)
        values[kind] = cumulative[:, friendly]  # [layers, options]
        smallest = curve.saving(friendly[0])
        costs[kind] = torch.tensor([smallest - curve.saving(width) for width in friendly], dtype=torch.float64)
    base_ms = table.dense_ms - num_layers * sum(table.curve(k).saving(options[k][0]) for k in KINDS)
    budget = target * table.dense_ms - base_ms
    if budget < 0:
        raise _unreachable(table, target, base_ms, "the smallest plan its widths allow")
    if not additive:
        return _same_share_counts(table, options, budget, num_layers, costs)
    if uniform:
        best = None
        for h, head_cost in enumerate(costs["heads"].tolist()):
            for n, neuron_cost in enumerate(costs["neurons"].tolist()):
                if num_layers * (head_cost + neuron_cost) > budget + 1e-12:
                    continue
                value = float(values["heads"][:, h].sum() + values["neurons"][:, n].sum())
                if best is None or value > best[0]:
                    best = (value, h, n)
        if best is None:
            raise _unreachable(table, target, base_ms, "one head and the fewest neurons in every layer")
        return {kind: [options[kind][best[index]]] * num_layers for index, kind in enumerate(KINDS, start=1)}
    items = [(kind, layer) for kind in KINDS for layer in range(num_layers)]
    choice = _knapsack([costs[kind] for kind, _ in items], [values[kind][layer] for kind, layer in items], budget)
    counts: dict[str, list[int]] = {kind: [0] * num_layers for kind in KINDS}
    for (kind, layer), option in zip(items, choice, strict=True):
        counts[kind][layer] = options[kind][option]
    return counts


def _knapsack(costs: list[Tensor], values: list[Tensor], budget: float, max_points: int = 100_000) -> list[int]:
    """One option per item maximising the total value with total cost <= ``budget`` (a multiple-choice knapsack).

    Exact: it carries the Pareto frontier of (cost, value) over the items so far, dropping every point that costs
    more than a cheaper one without being worth more. Should the frontier outgrow ``max_points`` (very many
    items), it keeps the best point per 1/``max_points`` of the budget; chosen costs are never rounded, so the
    result stays within the budget either way.
    """
    frontier_cost = torch.zeros(1, dtype=torch.float64)
    frontier_value = torch.zeros(1, dtype=torch.float64)
    parents: list[tuple[Tensor, Tensor]] = []  # per item: (frontier index before it, option) of each new point
    tolerance = 1e-9 * max(budget, 1e-12)
    for cost, value in zip(costs, values, strict=True):
        total_cost = (frontier_cost[:, None] + cost[None, :]).reshape(-1)
        total_value = (frontier_value[:, None] + value[None, :]).reshape(-1)
        within = (total_cost <= budget + tolerance).nonzero().reshape(-1)
        order = within[torch.argsort(total_cost[within], stable=True)]
        # Sorted by cost, a point stays if it is worth more than every cheaper one.
        best_before = torch.cummax(total_value[order], dim=0).values
        keep = torch.ones(len(order), dtype=torch.bool)
        keep[1:] = total_value[order][1:] > best_before[:-1]
        order = order[keep]
        if len(order) > max_points:
            bins = torch.floor(total_cost[order] / (budget / max_points)).long()
            last_of_bin = torch.ones(len(order), dtype=torch.bool)
            last_of_bin[:-1] = bins[1:] != bins[:-1]  # values rise with cost: a bin's last point is its best
            order = order[last_of_bin]
        frontier_cost, frontier_value = total_cost[order], total_value[order]
        parents.append((order // len(cost), order % len(cost)))
    point = int(torch.argmax(frontier_value))
    picked = []
    for parent, option in reversed(parents):
        picked.append(int(option[point]))
        point = int(parent[point])
    return list(reversed(picked))


def _same_share_counts(
    table: LatencyTable, options: dict[str, list[int]], budget: float, num_layers: int, costs: dict[str, Tensor]
) -> dict[str, list[int]]:
    """The largest share of every layer's units (the same for heads and neurons, on the friendly widths at or
    below it) whose predicted latency fits ``budget``."""

    def pick(share: float) -> dict[str, int]:
        picked = {}
        for kind, widths in options.items():
            limit = share * widths[-1]
            picked[kind] = max((i for i, w in enumerate(widths) if w <= limit + 1e-9), default=0)
        return picked

    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        chosen = pick(middle)
        cost = num_layers * sum(float(costs[kind][i]) for kind, i in chosen.items())
        low, high = (middle, high) if cost <= budget + 1e-12 else (low, middle)
    chosen = pick(low)
    return {kind: [options[kind][i]] * num_layers for kind, i in chosen.items()}


def predicted_latency_fraction(plan: PruningPlan, table: LatencyTable) -> float:
    """The plan's latency predicted from ``table``, as a fraction of the dense latency."""
    widths = {"heads": [len(kept) for kept in plan.heads], "neurons": [len(kept) for kept in plan.neurons]}
    return table.predict_ms(widths) / table.dense_ms


def latency_kept_fraction(config: PruningConfig, dims: EncoderDims) -> float:
    """The share of the pruned kinds' units (the same in every layer) whose predicted latency meets
    ``config.target_latency`` (for pruning during training, where masks follow one share)."""
    table = latency_table_for(dims.model, config)
    kinds = config.structure.kinds  # type: ignore[union-attr]
    full = {"heads": dims.num_heads, "neurons": dims.intermediate_size}

    def predicted(share: float) -> float:
        widths = {k: [share * full[k] if k in kinds else full[k]] * dims.num_layers for k in KINDS}
        return table.predict_ms(widths)

    target_ms = config.target_latency * table.dense_ms  # type: ignore[operator]
    if predicted(0.0) > target_ms:
        raise _unreachable(table, config.target_latency, predicted(0.0), f"removing every unit of {kinds}")  # type: ignore
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if predicted(middle) <= target_ms else (low, middle)
    return low
