"""Physically remove pruned heads and neurons, and record what was kept as a JSON `PruningPlan`.

transformers 5 removed ``prune_heads``/``config.pruned_heads``, so a model with shrunk layers no longer reloads
with ``from_pretrained``. hfprune keeps the structure in ``pruning_plan.json``; reloading builds the base
architecture from ``config.json``, applies the plan (`compact_`) and then loads the weights (`load_pruned`).
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import ArchAdapter, get_encoder_adapter
from .errors import HfPruneError
from .masks import remove_mask_
from .shrink import UnitGroup, shrink_layer_, slice_problem
from .targets import require_real_weights


PLAN_NAME = "pruning_plan.json"
PLAN_VERSION = 1


class PlanMismatchError(HfPruneError, ValueError):
    """A `PruningPlan` does not fit the model it is applied to."""


@dataclass
class PruningPlan:
    """Kept attention heads and FFN neurons of every encoder layer, as indices into the original model.

    Args:
        model_type (`str`): ``config.model_type`` of the model the plan was made for.
        num_heads (`int`): Heads per layer in the original model.
        intermediate_size (`int`): FFN neurons per layer in the original model.
        heads (`list[list[int]]`): Kept head indices, one sorted list per layer (empty = attention skipped).
        neurons (`list[list[int]]`): Kept neuron indices, one sorted list per layer (empty = FFN skipped).
    """

    model_type: str
    num_heads: int
    intermediate_size: int
    heads: list[list[int]]
    neurons: list[list[int]]
    plan_version: int = PLAN_VERSION
    hfprune_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()
        if self.hfprune_version is None:
            from . import __version__

            self.hfprune_version = __version__

    def validate(self) -> None:
        """Check every field's type and every index (sorting the index lists); called on construction and again
        by `compact_`, since a plan's lists can be edited after it was built.

        Raises:
            PlanMismatchError: naming the field or the layer and what is wrong with it.
        """
        if not isinstance(self.model_type, str) or not self.model_type:
            raise PlanMismatchError(f"Plan field model_type must be a non-empty string; got {self.model_type!r}.")
        for name in ("num_heads", "intermediate_size"):
            value = getattr(self, name)
            if not is_integer_value(value) or value < 1:
                raise PlanMismatchError(f"Plan field {name} must be a positive integer; got {value!r}.")
        for name in ("heads", "neurons"):
            if not isinstance(getattr(self, name), (list, tuple)):
                raise PlanMismatchError(
                    f"Plan field {name} must be a list with one list of kept indices per layer; got "
                    f"{type(getattr(self, name)).__name__}."
                )
        if len(self.heads) != len(self.neurons):
            raise PlanMismatchError(
                f"Plan has {len(self.heads)} head lists but {len(self.neurons)} neuron lists: it needs one of each "
                "per encoder layer."
            )
        if not is_integer_value(self.plan_version):
            raise PlanMismatchError(f"Plan field plan_version must be an integer; got {self.plan_version!r}.")
        if not isinstance(self.extra, dict):
            raise PlanMismatchError(f"Plan field extra must be a dict; got {type(self.extra).__name__}.")
        self.heads = [checked_indices(kept, f"Layer {layer}: kept heads", self.num_heads)
                      for layer, kept in enumerate(self.heads)]  # fmt: skip
        self.neurons = [checked_indices(kept, f"Layer {layer}: kept neurons", self.intermediate_size)
                        for layer, kept in enumerate(self.neurons)]  # fmt: skip

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    @classmethod
    def dense(cls, model: nn.Module) -> PruningPlan:
        """The plan that keeps everything in ``model``."""
        _, layers, groups = encoder_structure(model)
        num_heads, intermediate = groups["heads"].num_units(layers[0]), groups["neurons"].num_units(layers[0])
        return cls(
            model_type=model.config.model_type,  # type: ignore[attr-defined]
            num_heads=num_heads,
            intermediate_size=intermediate,
            heads=[list(range(num_heads)) for _ in layers],
            neurons=[list(range(intermediate)) for _ in layers],
        )

    @classmethod
    @torch.no_grad()
    def from_zeros(cls, model: nn.Module) -> PruningPlan:
        """Read the plan off a full-size model whose removed heads/neurons are zeroed (masked or merged).

        A unit is removed when its input columns of the consumer (attention output or FFN output projection) are
        all zero. Those columns are the only path from the unit to the output, so this is exactly what compaction
        may drop without changing outputs.
        """
        plan = cls.dense(model)
        _, layers, groups = encoder_structure(model)
        kept = {"heads": plan.heads, "neurons": plan.neurons}
        for index, layer in enumerate(layers):
            for group in groups.values():
                columns = layer.get_submodule(group.consumer).weight.detach().ne(0).any(0)
                alive = columns.reshape(-1, group.unit_size).any(1)
                kept[group.kind][index] = alive.nonzero().reshape(-1).tolist()
        return plan

    def config_entry(self) -> dict[str, Any]:
        """What ``config.hfprune_plan`` holds: enough to rebuild the shapes (no versions, no extras)."""
        return {"num_heads": self.num_heads, "intermediate_size": self.intermediate_size, "heads": self.heads,
                "neurons": self.neurons}  # fmt: skip

    @classmethod
    def from_config(cls, config: Any) -> PruningPlan | None:
        """The plan stored in a model config by `compact_` (``config.hfprune_plan``), if any."""
        entry = getattr(config, "hfprune_plan", None)
        if entry is None:
            return None
        if not isinstance(entry, dict):
            raise PlanMismatchError(
                f"config.hfprune_plan must be a dict (written by hfprune.compact_); got {type(entry).__name__}."
            )
        try:
            return cls.from_dict({**entry, "model_type": config.model_type})
        except PlanMismatchError as err:
            raise PlanMismatchError(f"config.hfprune_plan: {err}") from err

    def remaining_fraction(self) -> dict[str, float]:
        """Fraction of heads and of neurons kept over all layers."""
        return {
            "heads": sum(map(len, self.heads)) / (self.num_heads * self.num_layers),
            "neurons": sum(map(len, self.neurons)) / (self.intermediate_size * self.num_layers),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        """Build and validate a plan from `to_dict`'s output (e.g. parsed ``pruning_plan.json``).

        Raises:
            PlanMismatchError: the data is not a plan (wrong types, missing fields, bad indices) or is too new.
        """
        if not isinstance(data, dict):
            raise PlanMismatchError(f"A pruning plan must be a JSON object (dict); got {type(data).__name__}.")
        version = data.get("plan_version", PLAN_VERSION)
        if not is_integer_value(version):
            raise PlanMismatchError(f"Plan field plan_version must be an integer; got {version!r}.")
        if version > PLAN_VERSION:
            raise PlanMismatchError(f"Plan version {version} is newer than this hfprune understands ({PLAN_VERSION}).")
        required = ("model_type", "num_heads", "intermediate_size", "heads", "neurons")
        missing = [key for key in required if key not in data]
        if missing:
            raise PlanMismatchError(
                f"The pruning plan lacks the fields {missing} (it has {sorted(data)}): it is not a head/neuron plan "
                "written by hfprune, or it is truncated."
            )
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / PLAN_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> PruningPlan:
        path = Path(directory) / PLAN_NAME
        if not path.is_file():
            raise PlanMismatchError(f"No {PLAN_NAME} in {directory}: it is not a structurally pruned hfprune model.")
        try:
            return cls.from_dict(read_plan_json(path))
        except PlanMismatchError as err:
            raise PlanMismatchError(f"{path}: {err}") from err


def read_plan_json(path: Path) -> Any:
    """The parsed contents of a plan file; corrupt JSON is a `PlanMismatchError` naming the file."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PlanMismatchError(
            f"{path} is not valid JSON ({err}). The plan file is corrupt or was cut short: copy it again from where "
            "the pruned model was saved, or prune the base model again."
        ) from err


def is_integer_value(value: Any) -> bool:
    """A whole number given as one (an ``int``, numpy integers included), not a float such as 1.0 or a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def checked_indices(kept: Any, where: str, limit: int) -> list[int]:
    """``kept`` as a sorted list of ints, after checking that it is a list of distinct integers in [0, limit).

    Floats are refused rather than truncated: ``2.5`` in a plan is corruption, and keeping unit 2 instead would
    load a model that silently differs from the one that was saved.

    Raises:
        PlanMismatchError: naming ``where`` and the offending values.
    """
    if not isinstance(kept, (list, tuple)):
        raise PlanMismatchError(f"{where} must be a list of integer indices; got {type(kept).__name__} {kept!r}.")
    not_integers = [index for index in kept if not is_integer_value(index)]
    if not_integers:
        raise PlanMismatchError(
            f"{where} must be integer indices; got {not_integers[:5]} "
            f"({', '.join(sorted({type(i).__name__ for i in not_integers}))}). The plan is corrupt or was edited."
        )
    indices = sorted(int(index) for index in kept)
    outside = [index for index in indices if not 0 <= index < limit]
    if outside:
        raise PlanMismatchError(
            f"{where}: indices must be in [0, {limit}); got {outside[:5]}. The plan was made for a larger model, or "
            "it was edited."
        )
    duplicated = sorted({a for a, b in zip(indices, indices[1:], strict=False) if a == b})
    if duplicated:
        raise PlanMismatchError(
            f"{where}: indices {duplicated[:5]} appear more than once; each unit is kept once. The plan is corrupt "
            "or was edited."
        )
    return indices


def encoder_structure(model: nn.Module) -> tuple[ArchAdapter, nn.ModuleList, dict[str, UnitGroup]]:
    """The adapter, the repeated layers and the unit groups (by kind) of a model with heads and neurons."""
    adapter = get_encoder_adapter(model)
    return adapter, adapter.layers(model), adapter.unit_groups(model)


def _unmask_(module: nn.Module) -> None:
    for param_name in ("weight", "bias"):
        remove_mask_(module, param_name, merge=True)


def current_plan_shape(model: nn.Module) -> tuple[list[int], list[int]]:
    """Heads and neurons each layer of ``model`` has now."""
    _, layers, groups = encoder_structure(model)
    return ([groups["heads"].num_units(layer) for layer in layers],
            [groups["neurons"].num_units(layer) for layer in layers])  # fmt: skip


@torch.no_grad()
def compact_(model: nn.Module, plan: PruningPlan | None = None) -> PruningPlan:
    """Shrink ``model`` in place to the heads and neurons ``plan`` keeps, fixing every dependent attribute.

    Every parameter slice the family's adapter lists for a removed unit goes (`hfprune.shrink`). Masks attached to
    the affected layers are merged first, so a masked model and its compacted copy compute the same outputs.
    Without ``plan``, the plan is read off the zeroed units (`PruningPlan.from_zeros`), e.g. after ``prune_`` with
    a structured config.

    Returns:
        `PruningPlan`: the plan applied; save it with the weights (``save_pruned(..., plan=plan)``).

    Raises:
        PlanMismatchError: the plan was made for another architecture or size, or the model is already compacted.
    """
    require_real_weights(model, "compact_")
    _, layers, groups = encoder_structure(model)
    if plan is None:
        plan = PruningPlan.from_zeros(model)
    elif not isinstance(plan, PruningPlan):
        raise PlanMismatchError(
            f"compact_ needs a PruningPlan; got {type(plan).__name__}. Build one with PruningPlan.from_dict(...) or "
            "PruningPlan.from_pretrained(folder)."
        )
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
    return plan
