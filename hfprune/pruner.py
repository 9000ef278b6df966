"""`Pruner` (gradual pruning state) and `prune_` (one-shot pruning).

The pruner composes a `PruningConfig` with the model: it resolves target modules through the architecture
adapter, keeps importance accumulators, computes masks at the sparsity the schedule asks for and attaches them.
Everything that changes during a run is in `state_dict()`, the way `torch.optim` does it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .adapters import get_adapter
from .config import PruningConfig
from .errors import ConfigError, MissingDataError
from .masks import find_mask, get_raw_weight, remove_mask_, set_mask_
from .selection import select_global, select_local
from .targets import resolve_overrides, resolve_targets


class Pruner:
    """Holds the masks and importance statistics of one model being pruned.

    Args:
        model (`nn.Module`): The model, pruned in place.
        config (`PruningConfig`): What to prune and how.

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

    def __init__(self, model: nn.Module, config: PruningConfig) -> None:
        if not isinstance(config, PruningConfig):
            raise ConfigError(f"config must be a PruningConfig; got {type(config).__name__}.")
        self.model = model
        self.config = config
        target_modules = config.target_modules
        if target_modules is None:
            target_modules = get_adapter(model).default_target_modules  # type: ignore[union-attr]
        self.modules: dict[str, nn.Module] = resolve_targets(model, target_modules, config.exclude_modules)
        for name, module in self.modules.items():
            config.structure.check(name, module.weight.shape)  # type: ignore[union-attr]
        self.overrides = resolve_overrides(self.modules, config.sparsity_overrides)
        generator = torch.Generator().manual_seed(config.seed)
        self.importance_state: dict[str, dict[str, Tensor]] = {
            name: config.importance.init_state(get_raw_weight(module), generator=generator)  # type: ignore[union-attr]
            for name, module in self.modules.items()
        }
        self.global_step = 0
        #: Sparsity each module was last pruned to (``None`` until the first mask update).
        self.applied_sparsity: dict[str, float] | None = None

    # ----------------------------------------------------------------------------------------------- schedule
    def target_sparsity(self, step: int) -> dict[str, float]:
        """Per-module sparsity the schedule asks for at ``step``."""
        schedule = self.config.schedule
        return {
            name: schedule(step, self.overrides.get(name, self.config.sparsity))  # type: ignore[operator]
            for name in self.modules
        }

    def step(self, step: int | None = None) -> bool:
        """Advance to ``step`` (or by one) and update the masks if the scheduled sparsity changed.

        Returns:
            `bool`: whether the masks were recomputed.
        """
        self.global_step = self.global_step + 1 if step is None else int(step)
        target = self.target_sparsity(self.global_step)
        if target == self.applied_sparsity:
            return False
        self.apply_sparsity_(target)
        return True

    # ----------------------------------------------------------------------------------------------- scoring
    @property
    def requires_grad(self) -> bool:
        """Whether the importance criterion needs gradients (call `accumulate` after each backward)."""
        return self.config.importance.requires_grad  # type: ignore[union-attr]

    @torch.no_grad()
    def accumulate(self) -> None:
        """Fold the current gradients into the importance statistics (a no-op for data-free criteria)."""
        if not self.requires_grad:
            return
        for name, module in self.modules.items():
            raw = get_raw_weight(module)
            if raw.grad is None:
                continue
            self.config.importance.update(self.importance_state[name], module.weight, raw.grad)  # type: ignore

    @torch.no_grad()
    def scores(self) -> dict[str, Tensor]:
        """Unit scores per module (flat); already-removed units score as their masked weights do."""
        structure = self.config.structure
        return {
            name: structure.reduce(self.config.importance.score(self.importance_state[name], module.weight))  # type: ignore
            for name, module in self.modules.items()
        }

    @torch.no_grad()
    def compute_masks(self, sparsity: Mapping[str, float]) -> dict[str, Tensor]:
        """Boolean keep-masks (weight-shaped) at the given per-module sparsity."""
        unit_scores = self.scores()
        keep: dict[str, Tensor] = {}
        if self.config.scope == "global":
            # Modules with an override are ranked on their own; the rest share one ranking.
            pooled = [name for name in self.modules if name not in self.overrides]
            pool_sparsity = {sparsity[name] for name in pooled}
            if len(pool_sparsity) > 1:
                raise ConfigError(f"Global scope needs one sparsity for the pooled modules; got {pool_sparsity}.")
            if pooled:
                keep.update(select_global({name: unit_scores[name] for name in pooled}, pool_sparsity.pop()))
        for name in self.modules:
            if name not in keep:
                keep[name] = select_local(unit_scores[name], sparsity[name])
        structure = self.config.structure
        return {name: structure.expand(keep[name], module.weight.shape) for name, module in self.modules.items()}

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

    def make_permanent_(self) -> None:
        """Write the zeros into plain ``weight`` parameters and drop the masks (no leftovers in state dicts)."""
        for module in self.modules.values():
            remove_mask_(module, merge=True)

    # ----------------------------------------------------------------------------------------------- reporting
    @torch.no_grad()
    def sparsity(self) -> dict[str, float]:
        """Measured fraction of zero weights per pruned module."""
        return {name: float((module.weight == 0).float().mean()) for name, module in self.modules.items()}

    @torch.no_grad()
    def overall_sparsity(self) -> float:
        """Measured fraction of zero weights over all pruned modules."""
        zeros = sum(int((m.weight == 0).sum()) for m in self.modules.values())
        total = sum(m.weight.numel() for m in self.modules.values())
        return zeros / total

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Masks, importance statistics and the schedule position: all a resumed run needs."""
        return {
            "global_step": self.global_step,
            "applied_sparsity": None if self.applied_sparsity is None else dict(self.applied_sparsity),
            "masks": self.masks(),
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
        applied = state_dict.get("applied_sparsity")
        self.applied_sparsity = None if applied is None else dict(applied)
        for name, state in state_dict["importance_state"].items():
            device = get_raw_weight(self.modules[name]).device
            self.importance_state[name] = {key: value.to(device) for key, value in state.items()}
        self.set_masks_(state_dict["masks"])


def _calibration_loss(model: nn.Module, batch: Any, loss_fn: Callable[..., Tensor] | None) -> Tensor:
    if isinstance(batch, Mapping):
        outputs = model(**batch)
        loss = outputs["loss"] if isinstance(outputs, Mapping) and "loss" in outputs else getattr(outputs, "loss", None)
        if loss is None:
            raise MissingDataError(
                "The model returned no loss for a calibration batch. Include 'labels' in each batch, or pass loss_fn."
            )
        return loss
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, targets = batch
        logits = model(inputs)
        logits = getattr(logits, "logits", logits)
        return (loss_fn or nn.functional.cross_entropy)(logits, targets)
    raise MissingDataError(
        f"Calibration batches must be dicts of model inputs with labels, or (inputs, targets) pairs; got "
        f"{type(batch).__name__}."
    )


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
        loss_fn (`Callable`, *optional*): Loss for ``(inputs, targets)`` batches (default: cross-entropy).

    Returns:
        `nn.Module`: the same ``model``, for chaining.

    Example:
        ```python
        import hfprune
        hfprune.prune_(model, hfprune.PruningConfig(sparsity=0.5, scope="global"))
        ```
    """
    pruner = Pruner(model, config)
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
        for batch in dataloader:
            if num_batches is not None and seen >= num_batches:
                break
            model.zero_grad(set_to_none=True)
            _calibration_loss(model, batch, loss_fn).backward()
            pruner.accumulate()
            seen += 1
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        if seen == 0:
            raise MissingDataError("The calibration dataloader yielded no batches.")
    pruner.apply_sparsity_(config.sparsity)
    pruner.make_permanent_()
    return model
