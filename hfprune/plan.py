"""The pruning plan: what a structurally pruned model kept, as versioned JSON (``pruning_plan.json``).

Two kinds share the file name and the checks: `PruningPlan` (heads and FFN neurons of a transformer encoder, any
family with an adapter) and `ChannelPlan` (output channels of CNN convolution groups). `plan_from_dict` and
`read_plan` tell them apart by their content and read every version written so far, so there is one reader.
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

from .adapters import encoder_structure
from .errors import HfPruneError


PLAN_NAME = "pruning_plan.json"
PLAN_VERSION = 1


class PlanMismatchError(HfPruneError, ValueError):
    """A `PruningPlan` does not fit the model it is applied to."""


class PlanFile:
    """Reading and writing ``pruning_plan.json``, shared by both kinds of plan (each defines its ``from_dict``)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / PLAN_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Any:
        path = Path(directory) / PLAN_NAME
        if not path.is_file():
            raise PlanMismatchError(f"No {PLAN_NAME} in {directory}: it is not a structurally pruned hfprune model.")
        data = read_plan_json(path)  # names the file itself when it is not JSON
        try:
            return cls.from_dict(data)  # type: ignore[attr-defined]
        except PlanMismatchError as err:
            raise PlanMismatchError(f"{path}: {err}") from err


@dataclass
class PruningPlan(PlanFile):
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




CHANNEL_PLAN_VERSION = 1


@dataclass
class ChannelPlan(PlanFile):
    """Kept output channels of each prunable group, keyed by the group's root convolution.

    Args:
        num_channels (`dict[str, int]`): Original output channels of each root convolution.
        kept (`dict[str, list[int]]`): Kept channel indices (into the original model) of each root.
    """

    num_channels: dict[str, int]
    kept: dict[str, list[int]]
    plan_version: int = CHANNEL_PLAN_VERSION
    kind: str = "channels"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field's type and every group's kept indices (sorting them); called on construction and
        again by `apply_channel_plan_`, since a plan can be edited after it was built.

        Raises:
            PlanMismatchError: naming the group or field and what is wrong with it.
        """
        for field_name in ("num_channels", "kept"):
            if not isinstance(getattr(self, field_name), dict):
                raise PlanMismatchError(
                    f"Channel plan field {field_name} must map convolution names to "
                    f"{'channel counts' if field_name == 'num_channels' else 'kept channel indices'}; got "
                    f"{type(getattr(self, field_name)).__name__}."
                )
        for name, count in self.num_channels.items():
            if not isinstance(name, str) or not is_integer_value(count) or count < 1:
                raise PlanMismatchError(
                    f"Channel plan num_channels[{name!r}] must be a positive integer channel count; got {count!r}."
                )
        if self.kind != "channels":
            raise PlanMismatchError(f"Not a channel plan (kind={self.kind!r}).")
        if not is_integer_value(self.plan_version):
            raise PlanMismatchError(f"Channel plan field plan_version must be an integer; got {self.plan_version!r}.")
        if not isinstance(self.extra, dict):
            raise PlanMismatchError(f"Channel plan field extra must be a dict; got {type(self.extra).__name__}.")
        for name, kept in self.kept.items():
            if name not in self.num_channels:
                raise PlanMismatchError(f"Plan keeps channels of {name!r} but does not say how many it had.")
            indices = checked_indices(kept, f"Group {name!r}: kept channels", self.num_channels[name])
            if not indices:
                raise PlanMismatchError(
                    f"Group {name!r}: kept channels are empty; a convolution must keep at least one channel."
                )
            self.kept[name] = indices

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelPlan:
        """Build and validate a plan from `to_dict`'s output (e.g. parsed ``pruning_plan.json``).

        Raises:
            PlanMismatchError: the data is not a channel plan (wrong kind or types, missing fields, bad indices).
        """
        if not isinstance(data, dict):
            raise PlanMismatchError(f"A channel plan must be a JSON object (dict); got {type(data).__name__}.")
        if data.get("kind") != "channels":
            raise PlanMismatchError(f"Not a channel plan (kind={data.get('kind')!r}).")
        version = data.get("plan_version", CHANNEL_PLAN_VERSION)
        if not is_integer_value(version):
            raise PlanMismatchError(f"Channel plan field plan_version must be an integer; got {version!r}.")
        if version > CHANNEL_PLAN_VERSION:
            raise PlanMismatchError(
                f"Channel plan version {version} is newer than this hfprune understands ({CHANNEL_PLAN_VERSION})."
            )
        missing = [key for key in ("num_channels", "kept") if key not in data]
        if missing:
            raise PlanMismatchError(f"The channel plan lacks the fields {missing} (it has {sorted(data)}).")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def plan_from_dict(data: Any) -> PruningPlan | ChannelPlan:
    """The plan ``data`` (parsed ``pruning_plan.json``) describes: a channel plan (``kind: channels``) or a
    head/neuron plan.

    Raises:
        PlanMismatchError: the data is neither, or is corrupt or too new (the message says which field).
    """
    if isinstance(data, dict) and data.get("kind") == "channels":
        return ChannelPlan.from_dict(data)
    return PruningPlan.from_dict(data)


def read_plan(directory: str | os.PathLike) -> PruningPlan | ChannelPlan | None:
    """The plan in ``directory/pruning_plan.json``, of whichever kind; ``None`` when the folder has none."""
    path = Path(directory) / PLAN_NAME
    if not path.is_file():
        return None
    data = read_plan_json(path)  # names the file itself when it is not JSON
    try:
        return plan_from_dict(data)
    except PlanMismatchError as err:
        raise PlanMismatchError(f"{path}: {err}") from err
