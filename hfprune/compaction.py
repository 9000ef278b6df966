"""Physically remove pruned heads and neurons, and record what was kept as a JSON `PruningPlan`.

transformers 5 removed ``prune_heads``/``config.pruned_heads``, so a model with shrunk layers no longer reloads
with ``from_pretrained``. hfprune keeps the structure in ``pruning_plan.json``; reloading builds the base
architecture from ``config.json``, applies the plan (`compact_`) and then loads the weights (`load_pruned`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .adapters import encoder_structure
from .masks import remove_mask_
from .plan import (  # noqa: F401  (the plan's names stay importable from here)
    PLAN_NAME,
    PLAN_VERSION,
    ChannelPlan,
    PlanMismatchError,
    PruningPlan,
    checked_indices,
    is_integer_value,
    read_plan_json,
)
from .shrink import shrink_layer_, slice_problem
from .targets import require_real_weights


def _unmask_(module: nn.Module) -> None:
    for param_name in ("weight", "bias"):
        remove_mask_(module, param_name, merge=True)


def current_plan_shape(model: nn.Module) -> tuple[list[int], list[int]]:
    """Heads and neurons each layer of ``model`` has now."""
    _, layers, groups = encoder_structure(model)
    return ([groups["heads"].num_units(layer) for layer in layers],
            [groups["neurons"].num_units(layer) for layer in layers])  # fmt: skip


@torch.no_grad()
def compact_(model: nn.Module, plan: PruningPlan | ChannelPlan | None = None, example_inputs: Any = None) -> Any:
    """Shrink ``model`` in place to the heads and neurons ``plan`` keeps, fixing every dependent attribute.

    Every parameter slice the family's adapter lists for a removed unit goes (`hfprune.shrink`). Masks attached to
    the affected layers are merged first, so a masked model and its compacted copy compute the same outputs.
    Without ``plan``, the plan is read off the zeroed units (`PruningPlan.from_zeros`), e.g. after ``prune_`` with
    a structured config.

    A `ChannelPlan` (CNN channels) is applied through Torch-Pruning's dependency graph, which needs
    ``example_inputs`` to trace the model (`hfprune.channels.apply_channel_plan_`).

    Returns:
        the plan applied; save it with the weights (``save_pruned(..., plan=plan)``).

    Raises:
        PlanMismatchError: the plan was made for another architecture or size, or the model is already compacted.
    """
    require_real_weights(model, "compact_")
    if isinstance(plan, ChannelPlan):
        # CNN channels: Torch-Pruning's dependency graph, traced with example inputs, removes coupled channels.
        if example_inputs is None:
            raise PlanMismatchError(
                "A channel plan is applied by tracing the model: pass example_inputs (a batch of images, e.g. "
                "torch.zeros(1, 3, 224, 224))."
            )
        from .channels import apply_channel_plan_

        apply_channel_plan_(model, plan, example_inputs)
        return plan
    if plan is None:
        plan = PruningPlan.from_zeros(model)
    elif not isinstance(plan, PruningPlan):
        raise PlanMismatchError(
            f"compact_ needs a PruningPlan; got {type(plan).__name__}. Build one with PruningPlan.from_dict(...) or "
            "PruningPlan.from_pretrained(folder)."
        )
    shrink_to_plan_(model, plan)
    return plan


def shrink_to_plan_(model: nn.Module, plan: PruningPlan) -> None:
    """`compact_`'s shrinking step, which needs only the model's shapes: check that ``plan`` fits the full-size
    ``model``, remove the units it drops and record it in ``config.hfprune_plan``.

    Unlike `compact_` it also runs on a model whose weights are still on the meta device, as inside
    ``from_pretrained`` (`hfprune.load_pruned` builds the compacted architecture there, so that transformers'
    own loading, key conversion included, fills in the saved weights).
    """
    _, layers, groups = encoder_structure(model)
    # The plan's lists may have been edited since it was built: check them again before indexing weights.
    plan.validate()
    model_type = model.config.model_type  # type: ignore[attr-defined]
    if plan.model_type != model_type or plan.num_layers != len(layers):
        raise PlanMismatchError(
            f"The plan is for a {plan.model_type} with {plan.num_layers} layers; this model is a {model_type} with "
            f"{len(layers)} layers."
        )
    if getattr(model.config, "hfprune_plan", None) is not None:  # type: ignore[union-attr]
        raise PlanMismatchError(
            "This model is already compacted (config.hfprune_plan is set). Apply a plan only to the unpruned base "
            "model; to reload a compacted folder use hfprune.load_pruned."
        )
    heads_now, neurons_now = current_plan_shape(model)
    if set(heads_now) != {plan.num_heads} or set(neurons_now) != {plan.intermediate_size}:
        raise PlanMismatchError(
            f"The plan expects {plan.num_heads} heads and {plan.intermediate_size} neurons in every layer; the model "
            f"has heads {heads_now} and neurons {neurons_now}. Apply a plan only to the unpruned base model."
        )
    kept = {"heads": plan.heads, "neurons": plan.neurons}
    for index, layer in enumerate(layers):
        for group in groups.values():
            problem = slice_problem(layer, group, group.num_units(layer))
            if problem is not None:
                raise PlanMismatchError(f"Layer {index}: {problem}. The adapter does not match this model.")
    for index, layer in enumerate(layers):
        for group in groups.values():
            if len(kept[group.kind][index]) < group.num_units(layer):
                # Masks are merged first, so the masked model and its compacted copy compute the same outputs.
                for piece in group.present_slices(layer):
                    _unmask_(layer.get_submodule(piece.module))
            shrink_layer_(layer, group, kept[group.kind][index])
    # The plan travels in config.json, so transformers' own save_pretrained/push_to_hub keep what load_pruned needs
    # (and the remote-code export reads the same key).
    model.config.hfprune_plan = plan.config_entry()  # type: ignore[union-attr]
