"""`Pruner` (gradual pruning state) and `prune_` (one-shot pruning).

The pruner composes a `PruningConfig` with the model: it resolves target modules through the architecture
adapter, keeps importance accumulators, computes masks at the sparsity the schedule asks for and attaches them.
Everything that changes during a run is in `state_dict()`, the way `torch.optim` does it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .adapters import get_adapter
from .budget import encoder_dims, kept_fraction, latency_kept_fraction, plan_flops
from .calibration import (
    calibration_forward,
    check_calibration_batch,
    initial_loss_scale,
    scaled_backward,
    synaptic_flow_backward,
)
from .config import PruningConfig
from .errors import ConfigError, MissingDataError, NoPrunableModulesError
from .masks import find_mask, get_raw_weight, masked_weight, merge_masks_, remove_mask_, set_mask_
from .selection import check_round_to, round_count, select_global, select_local
from .sharding import copy_whole_, full_tensor, is_sharded, whole_grad
from .structures import Channels, EncoderUnits, HybridBlocks
from .targets import require_real_weights, resolve_overrides, resolve_targets


if TYPE_CHECKING:
    from .compaction import PruningPlan


#: What a criterion may need to prune heads/neurons during training (per-example gradients are one-shot only).
_TRAINING_NEEDS = ("weights", "seed", "gradients", "learned_scores")


class Pruner:
    """Holds the masks and importance statistics of one model being pruned.

    Args:
        model (`nn.Module`): The model, pruned in place.
        config (`PruningConfig`): What to prune and how.
        total_steps (`int`, *optional*): The run's optimizer steps; needed when the schedule's ``start_step`` /
            ``end_step`` are shares of the run (``0.1``), and given by `PruningTrainer` itself.

    Example:
        ```python
        pruner = Pruner(model, PruningConfig(sparsity=0.9, schedule=CubicSchedule(end_step=1000)))
        for step, batch in enumerate(loader, start=1):
            model(**batch).loss.backward()
            pruner.accumulate()          # only needed for gradient-based importance
            optimizer.step(); optimizer.zero_grad()
            pruner.step(step)            # recomputes masks when the schedule's sparsity changes
        pruner.make_permanent_()         # plain weights with zeros, no parametrizations left
        ```
    """

    def __init__(self, model: nn.Module, config: PruningConfig, *, total_steps: int | None = None) -> None:
        if not isinstance(config, PruningConfig):
            raise ConfigError(f"config must be a PruningConfig; got {type(config).__name__}.")
        require_real_weights(model, "Pruner")
        if isinstance(config.structure, Channels):
            raise ConfigError(
                "Channel pruning removes channels physically and traces the model with example inputs, so it has no "
                "masks for Pruner or prune_: use plan = hfprune.channels.plan_channels(model, config, example_inputs) "
                "then hfprune.channels.apply_channel_plan_(model, plan, example_inputs) (or `hfprune train` with an "
                "image recipe)."
            )
        self.model = model
        self.config = config
        #: Heads/neurons pruning: kind ("heads"/"neurons") and layer index of each masked consumer projection.
        self.units: dict[str, tuple[str, int]] = {}
        #: Hybrid block pruning: layer index and head size of each blocked attention output projection.
        self.head_outputs: dict[str, tuple[int, int]] = {}
        if isinstance(config.structure, EncoderUnits):
            self.modules, self.structures = self._resolve_units(model, config)
        else:
            target_modules = config.target_modules
            if target_modules is None:
                target_modules = get_adapter(model).default_target_modules  # type: ignore[union-attr]
            self.modules = resolve_targets(model, target_modules, config.exclude_modules)
            self.structures = {name: config.structure for name in self.modules}  # type: ignore[misc]
        for name, module in self.modules.items():
            self.structures[name].check(name, get_raw_weight(module).shape)  # type: ignore[union-attr]
            if is_sharded(get_raw_weight(module)):
                # Masks are parametrizations: registered on an already sharded module they would take the
                # parameter FSDP2 swaps in and out, and every forward would fail.
                raise ConfigError(
                    f"{name} is already sharded (FSDP2 fully_shard). Create the Pruner (and load its state, when "
                    "resuming) and call pruner.attach_() before fully_shard, so masks, scores and statistics exist "
                    "whole when the parameters are sharded."
                )
        self.overrides = resolve_overrides(self.modules, config.sparsity_overrides)
        # Global scope ranks each pool together: every module for weights, heads and neurons apart (their scores
        # are not on one scale). Modules with a sparsity override are ranked on their own.
        pools: dict[str, list[str]] = {}
        for name in self.modules:
            if name not in self.overrides:
                pools.setdefault(self.units[name][0] if name in self.units else "weights", []).append(name)
        self.pools = pools
        #: Final sparsity (of units; from ``target_flops``/``target_params`` for heads/neurons when set).
        self.final_sparsity = self._unit_sparsity(model, config) if self.units else config.sparsity
        generator = torch.Generator().manual_seed(config.seed)
        self.importance_state: dict[str, dict[str, Tensor]] = {
            name: config.importance.init_state(get_raw_weight(module), generator=generator)  # type: ignore[union-attr]
            for name, module in self.modules.items()
        }
        self.global_step = 0
        #: The run's optimizer steps, which a schedule given in shares of the run needs (`set_total_steps`).
        self.total_steps = total_steps
        self.schedule = config.schedule.resolved(total_steps) if total_steps is not None else config.schedule  # type: ignore[union-attr]
        #: Sparsity each module was last pruned to (``None`` until the first mask update).
        self.applied_sparsity: dict[str, float] | None = None

    def _resolve_units(self, model: nn.Module, config: PruningConfig) -> tuple[dict[str, nn.Module], dict]:
        """Heads/neurons: mask the units' columns of each layer's consumer projection (see `ColumnGroups`)."""
        from .structured import unit_targets

        importance = config.importance
        if importance.needs not in _TRAINING_NEEDS:  # type: ignore[union-attr]
            raise ConfigError(
                f"Importance {importance.registered_name!r} cannot prune heads/neurons during training. Use "  # type: ignore
                "movement, soft_movement, magnitude, l2, taylor or random with PruningTrainer; 'fisher' ranks units "
                "once from calibration data: prune_(model, config, dataloader) or `hfprune prune --method fisher`."
            )
        targets = unit_targets(model, config.structure.kinds)  # type: ignore[union-attr]
        if config.target_modules is not None or config.exclude_modules is not None:
            # Select layers: a pattern keeps a layer's heads (neurons) if it matches the layer's attention (FFN)
            # output projection.
            selected = resolve_targets(
                model,
                config.target_modules if config.target_modules is not None else list(targets),
                config.exclude_modules,
            )
            targets = {name: target for name, target in targets.items() if name in selected}
            if not targets:
                raise NoPrunableModulesError(
                    f"With structure {config.structure.registered_name!r}, target_modules/exclude_modules select "  # type: ignore
                    "layers by their attention and FFN output projections; none matched. Candidates: "
                    f"{', '.join(list(unit_targets(model, config.structure.kinds))[:4])} ..."  # type: ignore[union-attr]
                )
        self.units = {name: (target.kind, target.layer) for name, target in targets.items()}
        modules = {name: target.module for name, target in targets.items()}
        structures = {name: target.structure for name, target in targets.items()}
        if isinstance(config.structure, HybridBlocks):
            if config.target_modules is not None or config.exclude_modules is not None:
                raise ConfigError(
                    "The hybrid structure prunes every encoder layer; spare modules with sparsity_overrides "
                    "(sparsity 0) instead of target_modules/exclude_modules."
                )
            blocks = self._attention_blocks(model, config.structure)
            modules.update({name: module for name, (module, _) in blocks.items()})
            structures.update({name: config.structure.attention_blocks for name in blocks})
        return modules, structures

    def _attention_blocks(self, model: nn.Module, structure: HybridBlocks) -> dict[str, tuple[nn.Module, int]]:
        """Every projection a head owns (query/key/value rows and the output columns), blocked; the output
        projections are remembered (`head_outputs`), since their empty column groups are the heads to remove."""
        from .adapters.base import encoder_structure

        _, layers, groups = encoder_structure(model)
        names = {id(layer): name for name, layer in model.named_modules()}
        heads = groups["heads"]
        blocks: dict[str, tuple[nn.Module, int]] = {}
        for index, layer in enumerate(layers):
            for path in dict.fromkeys([*(piece.module for piece in heads.slices), heads.consumer]):
                try:
                    module = layer.get_submodule(path)
                except AttributeError:  # an optional projection this config does not have
                    continue
                if isinstance(module, nn.Linear):
                    blocks[f"{names[id(layer)]}.{path}"] = (module, index)
            self.head_outputs[f"{names[id(layer)]}.{heads.consumer}"] = (index, heads.unit_size)
        return blocks

    def _unit_sparsity(self, model: nn.Module, config: PruningConfig) -> float:
        """Final sparsity of heads/neurons (from a FLOPs/parameter target if set); refuses one that removes every
        head."""
        sparsity = config.sparsity
        targets = {"target_flops": config.target_flops, "target_params": config.target_params,
                   "target_latency": config.target_latency}  # fmt: skip
        budget = next((name for name, value in targets.items() if value is not None), None)
        if isinstance(config.structure, HybridBlocks) and budget is not None:
            raise ConfigError(f"The hybrid structure takes sparsity (of attention blocks and FFN neurons), not "
                              f"{budget}: how many heads empty out is only known at the end.")  # fmt: skip
        if budget is not None:
            dims = encoder_dims(model)
            # One masked projection per layer and pruned kind: anything less means layers were left out.
            every_layer = len(self.modules) == dims.num_layers * len(config.structure.kinds)  # type: ignore[union-attr]
            whole_encoder = every_layer and not self.overrides
            if not whole_encoder:
                raise ConfigError(
                    f"{budget} is a fraction of the whole encoder, but target_modules/exclude_modules/"
                    "sparsity_overrides leave some layers out. Use sparsity for a subset of layers, or drop the "
                    "layer selection."
                )
            if not config.importance.follows_sparsity:  # type: ignore[union-attr]
                raise ConfigError(
                    f"{config.importance.registered_name} keeps what its threshold keeps, so it cannot aim at "  # type: ignore
                    f"{budget}. Use movement (top-k) with a FLOPs/parameter target, or tune soft_movement's "
                    "final_lambda."
                )
            share = latency_kept_fraction(config, dims) if budget == "target_latency" else kept_fraction(config, dims)
            sparsity = 1.0 - share
        if config.structure.uniform and config.scope == "global":  # type: ignore[union-attr]
            raise ConfigError(
                "uniform=True keeps the same widths in every layer, but scope='global' ranks units across layers. "
                "During training, scope='local' prunes every layer to the same fraction; use that."
            )
        round_to = config.structure.round_to  # type: ignore[union-attr]
        for name, (kind, _) in self.units.items():
            if kind == "neurons" and round_to > 1:
                width = self.structures[name].reduce(get_raw_weight(self.modules[name])).numel()
                check_round_to(round_to, width, f"the FFN of {name}")
        heads = [name for name, (kind, _) in self.units.items() if kind == "heads"]
        if heads and config.importance.follows_sparsity:  # type: ignore[union-attr]
            widths = [self.structures[name].reduce(get_raw_weight(self.modules[name])).numel() for name in heads]
            final = {name: self.overrides.get(name, sparsity) for name in heads}
            if config.scope == "global" and "heads" in self.pools:
                pooled = self.pools["heads"]
                total = sum(w for name, w in zip(heads, widths, strict=True) if name in pooled)
                kept = total - round(final[pooled[0]] * total)
                kept += sum(w - round(final[n] * w) for n, w in zip(heads, widths, strict=True) if n not in pooled)
            else:
                kept = sum(width - round(final[name] * width) for name, width in zip(heads, widths, strict=True))
            if kept <= 0:
                raise ConfigError(
                    f"Sparsity {sparsity:.3f} would remove every attention head of every layer, leaving no attention "
                    "at all. Lower the sparsity (or raise target_flops / target_params)."
                )
        return sparsity

    # ----------------------------------------------------------------------------------------------- schedule
    def set_total_steps(self, total_steps: int) -> None:
        """Tell the pruner how many optimizer steps the run has (a trainer does, when training begins), which
        resolves a schedule given in shares of the run."""
        self.total_steps = int(total_steps)
        self.schedule = self.config.schedule.resolved(self.total_steps)  # type: ignore[union-attr]

    def target_sparsity(self, step: int) -> dict[str, float]:
        """Per-module sparsity the schedule asks for at ``step``."""
        schedule = self.schedule
        return {
            name: schedule(step, self.overrides.get(name, self.final_sparsity))  # type: ignore[operator]
            for name in self.modules
        }

    def step(self, step: int | None = None) -> bool:
        """Advance to ``step`` (or by one) and update the masks if the scheduled sparsity changed.

        Learned-score criteria (movement) also re-rank every ``update_every`` steps, since their scores move.

        Returns:
            `bool`: whether the masks were recomputed.
        """
        self.global_step = self.global_step + 1 if step is None else int(step)
        importance = self.config.importance
        if importance.learned:  # type: ignore[union-attr]
            self.attach_()
            if not importance.follows_sparsity:  # type: ignore[union-attr]
                if self.applied_sparsity is not None and self.global_step % importance.update_every:
                    return False
                self.set_masks_(self._soft_masks(self.threshold()))
                self.applied_sparsity = {name: 1.0 - float(mask.float().mean()) for name, mask in self.masks().items()}
                return True
        target = self.target_sparsity(self.global_step)
        rerank = importance.learned and self.global_step % importance.update_every == 0  # type: ignore[union-attr]
        if target == self.applied_sparsity and not rerank:
            return False
        self.apply_sparsity_(target)
        return True

    def attach_(self) -> None:
        """Attach all-ones masks (and learned scores) to modules that have none yet.

        A trainer calls this before building its optimizer, so score parameters exist and checkpoints always have
        the same keys.
        """
        importance = self.config.importance
        for name, module in self.modules.items():
            if find_mask(module) is not None:
                continue
            weight = full_tensor(get_raw_weight(module))
            scores = reduce = None
            if importance.learned:  # type: ignore[union-attr]
                reduce = self.structures[name].reduce  # type: ignore[union-attr]
                with torch.no_grad():
                    sizes = reduce(torch.ones_like(weight, dtype=torch.float32)).reshape(-1)
                    magnitudes = reduce(weight.detach().float().abs()).reshape(-1) / sizes
                scores = importance.initial_scores(magnitudes)  # type: ignore[union-attr]
            set_mask_(module, torch.ones_like(weight, dtype=torch.bool), scores=scores, reduce=reduce)

    def threshold(self) -> float | None:
        """The criterion's current score threshold (soft movement's sigmoid threshold; ``None`` for most)."""
        progress = self.schedule.progress(self.global_step)
        return self.config.importance.threshold(progress)  # type: ignore[union-attr]

    def regularization_lambda(self) -> float | None:
        """The criterion's current penalty weight on learned scores (soft movement's L1; ``None`` for most)."""
        progress = self.schedule.progress(self.global_step)
        return self.config.importance.regularization_weight(progress)  # type: ignore[union-attr]

    def regularization_loss(self) -> Tensor | None:
        """``lambda * mean over modules of mean(sigmoid(scores))`` when the criterion has a penalty (soft
        movement); add it to the training loss."""
        lam = self.regularization_lambda()
        if lam is None:
            return None
        terms = [torch.sigmoid(full_tensor(find_mask(module).scores)).mean() for module in self.modules.values()]  # type: ignore
        return lam * torch.stack(terms).mean()

    def score_parameters(self) -> list[nn.Parameter]:
        """Learned score parameters (empty unless the importance is learned); give them their own learning rate."""
        return list(self.named_score_parameters().values())

    def named_score_parameters(self) -> dict[str, nn.Parameter]:
        """Learned score parameters by pruned module name."""
        params = {}
        for name, module in self.modules.items():
            mask = find_mask(module)
            if mask is not None and mask.scores is not None:
                params[name] = mask.scores
        return params

    @torch.no_grad()
    def _soft_masks(self, threshold: float | None) -> dict[str, Tensor]:
        importance = self.config.importance
        keep, unit_scores = {}, {}
        for name, module in self.modules.items():
            scores = unit_scores[name] = full_tensor(find_mask(module).scores.detach()).reshape(-1)  # type: ignore[union-attr]
            keep[name] = torch.sigmoid(scores) > threshold
            min_kept = math.ceil(importance.min_density * scores.numel())  # type: ignore[union-attr]
            if int(keep[name].sum()) < min_kept:
                keep[name] = select_local(scores, 1.0 - min_kept / scores.numel())
        if self.units:
            keep = self._fix_unit_counts(keep, unit_scores)
        return {
            name: self.structures[name].expand(keep[name], get_raw_weight(m).shape) for name, m in self.modules.items()
        }

    # ----------------------------------------------------------------------------------------------- scoring
    @property
    def requires_grad(self) -> bool:
        """Whether the importance criterion needs gradients (call `accumulate` after each backward)."""
        return self.config.importance.requires_grad  # type: ignore[union-attr]

    @property
    def accumulates_gradients(self) -> bool:
        """Whether `accumulate` folds gradients into statistics: criteria that score from gradients (Taylor).
        Learned scores (movement) also need backward passes, but the optimizer trains them: nothing to fold in."""
        return self.requires_grad and not self.config.importance.learned  # type: ignore[union-attr]

    @torch.no_grad()
    def accumulate(self, loss_scale: float = 1.0) -> None:
        """Fold the current gradients into the importance statistics (a no-op for data-free criteria).

        Args:
            loss_scale (`float`, defaults to 1.0): The factor the loss was multiplied by before ``backward()``
                (fp16 loss scaling, e.g. ``GradScaler.get_scale()``); gradients are divided by it in float32.
        """
        # Learned scores have nothing to fold in; under FSDP2 reading each weight and gradient whole would cost a
        # gather of every pruned weight per step for nothing.
        if not self.accumulates_gradients:
            return
        for name, module in self.modules.items():
            grad = whole_grad(get_raw_weight(module))
            if grad is None:
                continue
            grad = grad if loss_scale == 1.0 else grad.float() / loss_scale
            state = self.importance_state[name]
            if any(value.device != grad.device for value in state.values()):
                # Built where the model was (often the CPU) before a trainer or fully_shard moved it.
                state = self.importance_state[name] = {key: value.to(grad.device) for key, value in state.items()}
            self.config.importance.update(state, masked_weight(module), grad)  # type: ignore

    @torch.no_grad()
    def scores(self) -> dict[str, Tensor]:
        """Unit scores per module (flat); already-removed units score as their masked weights do. Under FSDP2 a
        collective (weights or scores are gathered): call it on every rank."""
        importance = self.config.importance
        if importance.learned:  # type: ignore[union-attr]
            return {name: full_tensor(find_mask(m).scores.detach()).reshape(-1) for name, m in self.modules.items()}  # type: ignore
        if self.units and importance.needs == "weights":  # type: ignore[union-attr]
            # A unit's magnitude includes its query/key/value (FFN input) rows, as in one-shot structured pruning.
            from .structured import UnitStatistics

            stats = UnitStatistics(self.model, self.config.seed, None, None, None, None)
            groups = importance.unit_scores(stats)  # type: ignore[union-attr]
            return {name: groups[kind][layer] for name, (kind, layer) in self.units.items()}
        return {
            name: self.structures[name].reduce(importance.score(self.importance_state[name], masked_weight(module)))  # type: ignore
            for name, module in self.modules.items()
        }

    @torch.no_grad()
    def compute_masks(self, sparsity: Mapping[str, float]) -> dict[str, Tensor]:
        """Boolean keep-masks (weight-shaped) at the given per-module sparsity."""
        if all(value == 0.0 for value in sparsity.values()):
            # Nothing to remove: no scores needed (gradient criteria may not have seen data yet).
            return {name: torch.ones(get_raw_weight(m).shape, dtype=torch.bool, device=get_raw_weight(m).device)
                    for name, m in self.modules.items()}  # fmt: skip
        unit_scores = self.scores()
        keep: dict[str, Tensor] = {}
        if self.config.scope == "global":
            for pooled in self.pools.values():
                pool_sparsity = {sparsity[name] for name in pooled}
                if len(pool_sparsity) > 1:
                    raise ConfigError(f"Global scope needs one sparsity for the pooled modules; got {pool_sparsity}.")
                keep.update(select_global({name: unit_scores[name] for name in pooled}, pool_sparsity.pop()))
        for name in self.modules:
            if name not in keep:
                keep[name] = self.structures[name].select(unit_scores[name], sparsity[name])
        min_density = getattr(self.config.importance, "min_density", 0.0)
        for name, kept in keep.items():
            # Soft movement's floor (as with its threshold): a global top-k must not cut a module off entirely.
            least = math.ceil(min_density * kept.numel())
            if int(kept.sum()) < least:
                keep[name] = select_local(unit_scores[name], 1.0 - least / kept.numel())
        if self.units:
            keep = self._fix_unit_counts(keep, unit_scores)
        return {
            name: self.structures[name].expand(keep[name], get_raw_weight(module).shape)
            for name, module in self.modules.items()
        }

    def _fix_unit_counts(self, keep: dict[str, Tensor], unit_scores: dict[str, Tensor]) -> dict[str, Tensor]:
        """Round kept neurons per layer to ``round_to``, and never remove the last attention head of the model."""
        round_to = self.config.structure.round_to  # type: ignore[union-attr]
        # Under a FLOPs/parameter target, rounding up could overshoot it: round down instead.
        config = self.config
        down = any(target is not None for target in (config.target_flops, config.target_params, config.target_latency))
        for name, (kind, _) in self.units.items():
            count = int(keep[name].sum())
            width = keep[name].numel()
            if kind == "neurons" and round_to > 1:
                rounded = round_count(count, width, round_to, down=down)
                if rounded != count:
                    keep[name] = select_local(unit_scores[name], 1.0 - rounded / width)
        heads = [name for name, (kind, _) in self.units.items() if kind == "heads"]
        if heads and not any(bool(keep[name].any()) for name in heads):
            best = max(heads, key=lambda name: float(unit_scores[name].max()))
            keep[best] = keep[best].clone()
            keep[best][int(unit_scores[best].argmax())] = True
        return keep

    def apply_sparsity_(self, sparsity: Mapping[str, float] | float) -> None:
        """Recompute and attach masks at ``sparsity`` (one value for all modules, or per module)."""
        if not isinstance(sparsity, Mapping):
            sparsity = {name: self.overrides.get(name, float(sparsity)) for name in self.modules}
        self.set_masks_(self.compute_masks(sparsity))
        self.applied_sparsity = dict(sparsity)

    def set_masks_(self, masks: Mapping[str, Tensor]) -> None:
        """Attach the given masks (e.g. restored from a checkpoint)."""
        for name, mask in masks.items():
            if name not in self.modules:
                raise ConfigError(f"Mask for {name!r}, which is not a pruned module of this model.")
            module = self.modules[name]
            if tuple(mask.shape) != tuple(get_raw_weight(module).shape):
                raise ConfigError(
                    f"Mask for {name!r} has shape {tuple(mask.shape)}, but the weight has shape "
                    f"{tuple(get_raw_weight(module).shape)}. Was the state saved from another model?"
                )
            set_mask_(module, mask)

    def masks(self) -> dict[str, Tensor]:
        """The attached boolean masks, by module name."""
        result = {}
        for name, module in self.modules.items():
            mask = find_mask(module)
            if mask is not None:
                result[name] = mask.mask.clone()
        return result

    @property
    def structured(self) -> bool:
        """Whether whole heads/neurons are pruned (the model can then be compacted with `plan`)."""
        return bool(self.units) or bool(self.head_outputs)

    @torch.no_grad()
    def plan(self) -> PruningPlan:
        """The heads and neurons the current masks keep, as a `PruningPlan` for `compact_`.

        Raises:
            ConfigError: the structure is not heads/neurons.
        """
        from .compaction import PruningPlan

        if not self.units:
            raise ConfigError(
                "Only heads/neurons structures have a plan; this pruner uses "
                f"{self.config.structure.registered_name!r}."  # type: ignore[union-attr]
            )
        plan = PruningPlan.dense(self.model)
        consumers = {name: (kind, layer, self.structures[name].size) for name, (kind, layer) in self.units.items()}  # type: ignore[attr-defined]
        consumers.update({name: ("heads", layer, size) for name, (layer, size) in self.head_outputs.items()})
        for name, (kind, layer, size) in consumers.items():
            mask = find_mask(self.modules[name])
            if mask is None:
                continue
            # A unit whose columns of the consumer are all masked adds nothing to the layer's output.
            kept = mask.mask.any(0).reshape(-1, size).any(1).nonzero().reshape(-1).tolist()
            (plan.heads if kind == "heads" else plan.neurons)[layer] = kept
        return plan

    def make_permanent_(self) -> None:
        """Write the zeros into plain ``weight`` parameters and drop the masks (no leftovers in state dicts)."""
        if any(is_sharded(get_raw_weight(module)) for module in self.modules.values()):
            raise ConfigError(
                "make_permanent_() cannot run on an FSDP2-sharded model: removing a mask replaces the parameter "
                "fully_shard manages. Gather the whole weights (get_model_state_dict with full_state_dict=True) into "
                "an unsharded copy with a Pruner of the same config, and make that permanent (README, 'FSDP2')."
            )
        for module in self.modules.values():
            remove_mask_(module, merge=True)

    # ----------------------------------------------------------------------------------------------- reporting
    @torch.no_grad()
    def sparsity(self) -> dict[str, float]:
        """Measured fraction of zero weights per pruned module. Under FSDP2 a collective: call it on every rank."""
        return {name: float((masked_weight(module) == 0).float().mean()) for name, module in self.modules.items()}

    def mask_sparsity(self) -> float:
        """Fraction of weights the attached masks remove, over all pruned modules (cheap: reads the masks)."""
        masks = [find_mask(module) for module in self.modules.values()]
        if any(mask is None for mask in masks):
            return 0.0
        removed = sum(int((~mask.mask).sum()) for mask in masks)  # type: ignore[union-attr]
        return removed / sum(mask.mask.numel() for mask in masks)  # type: ignore[union-attr]

    def metrics(self) -> dict[str, float]:
        """What a trainer logs: mask sparsity, plus threshold and lambda for soft movement."""
        result = {"sparsity": self.mask_sparsity()}
        if self.units and all(find_mask(module) is not None for module in self.modules.values()):
            plan, dims = self.plan(), encoder_dims(self.model)
            result.update({f"{kind}_kept": value for kind, value in plan.remaining_fraction().items()})
            seq_len = self.config.flops_seq_len
            result["encoder_flops"] = plan_flops(plan, dims, seq_len) / dims.total_flops(seq_len)
        threshold, lam = self.threshold(), self.regularization_lambda()
        if threshold is not None:
            result["threshold"] = threshold
        if lam is not None:
            result["lambda"] = lam
        return result

    @torch.no_grad()
    def overall_sparsity(self) -> float:
        """Measured fraction of zero weights over all pruned modules. Under FSDP2 a collective: call it on every
        rank (`mask_sparsity` reads only the masks)."""
        zeros = sum(int((masked_weight(m) == 0).sum()) for m in self.modules.values())
        total = sum(get_raw_weight(m).numel() for m in self.modules.values())
        return zeros / total

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Masks, importance statistics and the schedule position: all a resumed run needs. Under FSDP2 a collective
        (learned scores are gathered): call it on every rank, save it from one."""
        return {
            "global_step": self.global_step,
            "total_steps": self.total_steps,
            "applied_sparsity": None if self.applied_sparsity is None else dict(self.applied_sparsity),
            "masks": self.masks(),
            "scores": {
                name: full_tensor(param.detach()).clone() for name, param in self.named_score_parameters().items()
            },
            "importance_state": {name: dict(state) for name, state in self.importance_state.items()},
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what `state_dict` saved; masks are re-attached to the model."""
        missing = {"global_step", "masks", "importance_state"} - set(state_dict)
        if missing:
            raise ConfigError(f"Not a Pruner state dict: missing keys {sorted(missing)}.")
        unknown = set(state_dict["importance_state"]) - set(self.modules)
        if unknown:
            raise ConfigError(
                f"Pruner state refers to modules that this pruner does not prune: {sorted(unknown)[:4]}. "
                "Was it saved with a different config or model?"
            )
        self.global_step = int(state_dict["global_step"])
        if state_dict.get("total_steps") is not None and self.total_steps is None:
            self.set_total_steps(int(state_dict["total_steps"]))
        applied = state_dict.get("applied_sparsity")
        self.applied_sparsity = None if applied is None else dict(applied)
        for name, state in state_dict["importance_state"].items():
            device = get_raw_weight(self.modules[name]).device
            self.importance_state[name] = {key: value.to(device) for key, value in state.items()}
        if self.config.importance.learned:  # type: ignore[union-attr]
            self.attach_()
            for name, param in self.named_score_parameters().items():
                if name in state_dict.get("scores", {}):
                    copy_whole_(param, state_dict["scores"][name])
        self.set_masks_(state_dict["masks"])


def prune_(
    model: nn.Module,
    config: PruningConfig,
    dataloader: Iterable[Any] | None = None,
    *,
    num_batches: int | None = None,
    loss_fn: Callable[..., Tensor] | None = None,
) -> nn.Module:
    """Prune ``model`` in place, once, to ``config.sparsity``, and make the zeros permanent.

    Args:
        model (`nn.Module`): Model to prune.
        config (`PruningConfig`): What to prune and how; its schedule is ignored (one-shot).
        dataloader (`Iterable`, *optional*): Calibration batches, needed only when the importance uses gradients
            (``taylor``). Batches are dicts of model inputs including ``labels``, or ``(inputs, targets)`` pairs.
        num_batches (`int`, *optional*): Use at most this many batches (default: all).
        loss_fn (`Callable`, *optional*): Loss for ``(inputs, targets)`` batches (``loss_fn(logits, targets)``,
            default: cross-entropy), or the objective of dict batches (``loss_fn(model, batch)``, e.g. a label-free
            `hfprune.embeddings.EmbeddingObjective`; default: the model's own loss).

    Returns:
        `nn.Module`: the same ``model``, for chaining.

    With a structured kind (``heads``, ``neurons``, ``heads_and_neurons``) the removed units are zeroed, so the
    model keeps its shapes and still loads with ``from_pretrained``; ``hfprune.compact_(model)`` then removes
    them physically and returns the `PruningPlan` to save with it.

    Example:
        ```python
        import hfprune
        hfprune.prune_(model, hfprune.PruningConfig(sparsity=0.5, scope="global"))
        ```
    """
    require_real_weights(model, "prune_")
    if isinstance(config.structure, EncoderUnits):
        # Heads/neurons: plan, zero the removed units; `compact_(model)` then removes them physically.
        from .structured import apply_plan_masks_, plan_structured

        plan = plan_structured(model, config, dataloader, num_batches=num_batches, loss_fn=loss_fn)
        apply_plan_masks_(model, plan)
        merge_masks_(model)
        return model
    pruner = Pruner(model, config)
    if config.importance.learned:  # type: ignore[union-attr]
        raise ConfigError(
            f"Importance {config.importance.registered_name!r} learns its scores during training, so it cannot "  # type: ignore
            "prune in one shot. Use PruningTrainer (or Pruner in your training loop), or 'taylor' for one-shot "
            "pruning."
        )
    if config.importance.needs == "synaptic_flow":  # type: ignore[union-attr]
        _prune_by_synaptic_flow_(pruner, _synaptic_flow_input_shape(model, config, dataloader))
        pruner.make_permanent_()
        return model
    if config.importance.needs == "activations":  # type: ignore[union-attr]
        _observe_inputs(pruner, dataloader, num_batches)
    if pruner.requires_grad:
        if dataloader is None:
            raise MissingDataError(
                f"Importance {config.importance.registered_name!r} needs gradients: pass a dataloader of labelled "  # type: ignore
                "batches to prune_(), or use a data-free importance such as 'magnitude'."
            )
        was_training = model.training
        # Dropout off: scores should reflect the network that will be used, not a random sub-network.
        model.eval()
        seen = 0
        scale = initial_loss_scale(model)
        for batch in dataloader:
            if num_batches is not None and seen >= num_batches:
                break
            check_calibration_batch(model, batch, seen)
            scale = scaled_backward(model, batch, loss_fn, scale,
                                    lambda: [get_raw_weight(m).grad for m in pruner.modules.values()])  # fmt: skip
            pruner.accumulate(loss_scale=scale)
            seen += 1
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        if seen == 0:
            raise MissingDataError("The calibration dataloader yielded no batches.")
    pruner.apply_sparsity_(config.sparsity)
    pruner.make_permanent_()
    return model


def _synaptic_flow_input_shape(model: nn.Module, config: PruningConfig, dataloader: Iterable[Any] | None) -> tuple:
    """One input's shape for SynFlow's all-ones pass: the importance's ``input_shape``, else the first batch's."""
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    if isinstance(embeddings, nn.Embedding):
        raise ConfigError(
            f"SynFlow feeds the network an all-ones float input, which {type(model).__name__} (it takes token ids) "
            "has no use for. Use it on models that take images or feature vectors, or use 'magnitude', 'random' or "
            "'snip' at initialization."
        )
    shape = config.importance.input_shape  # type: ignore[union-attr]
    if shape is not None:
        return tuple(shape)
    if dataloader is None:
        raise MissingDataError(
            "SynFlow needs no data, only the shape of one input: set it in the importance, e.g. "
            "{'type': 'synflow', 'input_shape': [3, 32, 32]}, or pass a dataloader (only its first batch's shape is "
            "read)."
        )
    batch = next(iter(dataloader), None)
    inputs = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if isinstance(inputs, Mapping):
        inputs = next((v for v in inputs.values() if isinstance(v, Tensor) and v.is_floating_point()), None)
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point() or inputs.dim() < 2:
        raise ConfigError(
            "SynFlow reads one input's shape from the dataloader's first batch, which holds no batched float tensor "
            f"(got {type(inputs).__name__}). Set input_shape in the importance instead."
        )
    return tuple(inputs.shape[1:])


def _prune_by_synaptic_flow_(pruner: Pruner, input_shape: tuple[int, ...]) -> None:
    """Iterative SynFlow: re-score the masked network and prune a little more, ``iterations`` times, the kept share
    of each module shrinking exponentially to its final density (Tanaka et al. 2020, Algorithm 1)."""
    config = pruner.config
    final = {name: pruner.overrides.get(name, float(config.sparsity)) for name in pruner.modules}
    iterations = config.importance.iterations  # type: ignore[union-attr]
    for iteration in range(1, iterations + 1):
        synaptic_flow_backward(pruner.model, input_shape)
        for name, module in pruner.modules.items():
            config.importance.update(pruner.importance_state[name], module.weight, get_raw_weight(module).grad)  # type: ignore
        share = iteration / iterations
        pruner.apply_sparsity_({name: 1.0 - (1.0 - sparsity) ** share for name, sparsity in final.items()})
    pruner.model.zero_grad(set_to_none=True)


def _observe_inputs(pruner: Pruner, dataloader: Iterable[Any] | None, num_batches: int | None) -> None:
    """Show the criterion each pruned layer's inputs over the calibration batches (forward passes only, eval mode)."""
    importance = pruner.config.importance
    if dataloader is None:
        raise MissingDataError(
            f"Importance {importance.registered_name!r} scores weights by the inputs they multiply: pass calibration "  # type: ignore
            "batches to prune_(model, config, dataloader) (labels are not needed)."
        )
    hooks = [
        module.register_forward_pre_hook(
            lambda _module, args, _name=name: importance.observe(pruner.importance_state[_name], args[0])  # type: ignore
        )
        for name, module in pruner.modules.items()
    ]
    was_training = pruner.model.training
    pruner.model.eval()
    seen = 0
    try:
        for batch in dataloader:
            if num_batches is not None and seen >= num_batches:
                break
            check_calibration_batch(pruner.model, batch, seen)
            calibration_forward(pruner.model, batch)
            seen += 1
    finally:
        for hook in hooks:
            hook.remove()
        pruner.model.train(was_training)
    if seen == 0:
        raise MissingDataError("The calibration dataloader yielded no batches.")
