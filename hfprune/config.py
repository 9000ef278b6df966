"""`PruningConfig`: what to prune, by which criterion, how much and when. Pure data that round-trips.

Polymorphic fields (importance, structure, schedule) accept a registered name, a ``{"type": ...}`` dict or an
object, and are turned into objects once in ``__post_init__``. They serialize back to ``{"type": ...}`` dicts and
load only through their registries.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from .errors import ConfigError, HfPruneWarning
from .field_types import coerce_fields
from .importance import IMPORTANCES, Importance, unsupported_pair_message
from .registry import check_unknown_keys, tolerate_unknown_keys
from .schedules import SCHEDULES, Schedule
from .structures import STRUCTURES, Structure
from .targets import check_module_patterns


CONFIG_VERSION = 1


def _package_version() -> str:
    from . import __version__

    return __version__


class ConfigMixin:
    """``to_dict``/``from_dict``, JSON and YAML, ``save_pretrained``/``from_pretrained`` for config dataclasses."""

    config_name: ClassVar[str] = "config.json"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if hasattr(value, "to_dict"):
                value = value.to_dict()
            elif isinstance(value, (set, frozenset)):
                value = sorted(value)
            elif isinstance(value, dict):
                value = dict(value)
            data[f.name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]):  # noqa: ANN206 - returns cls
        """Build from a dict. Unknown keys, here or in nested sections, are errors with a did-you-mean, except in
        a file written by a newer ``config_version``, whose unknown keys are dropped with a warning."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}.from_dict expects a mapping; got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        version = data.get("config_version", CONFIG_VERSION)
        newer = isinstance(version, int) and not isinstance(version, bool) and version > CONFIG_VERSION
        with tolerate_unknown_keys(newer):
            unknown = check_unknown_keys(f"the {cls.__name__} section", data, known)
            return cls(**{k: v for k, v in data.items() if k not in unknown})

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``<save_directory>/<config_name>`` as sorted, indented JSON."""
        path = Path(save_directory) / self.config_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json_string())
        return path

    @classmethod
    def from_pretrained(cls, directory_or_file: str | os.PathLike):  # noqa: ANN206
        """Load from a directory holding ``config_name``, or from a ``.json``/``.yaml`` file."""
        path = Path(directory_or_file)
        if path.is_dir():
            path = path / cls.config_name
        if not path.is_file():
            raise ConfigError(f"No {cls.__name__} file at {path}. Expected a directory with {cls.config_name}.")
        text = path.read_text()
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        return cls.from_dict(data or {})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, section: str | None = None):  # noqa: ANN206
        """Load from a YAML file; ``section`` picks a top-level key of a larger recipe (e.g. ``"pruning"``)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist.")
        data = yaml.safe_load(path.read_text()) or {}
        if section is not None:
            if section not in data:
                raise ConfigError(f"{path} has no top-level {section!r} section; found {sorted(data)}.")
            data = data[section] or {}
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=True)


def _normalize_modules(value: str | list[str] | tuple[str, ...] | None, name: str) -> str | list[str] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return sorted(set(value))
    raise ConfigError(f"{name} must be a regex string, a list of module names, or None; got {value!r}.")


@dataclass
class PruningConfig(ConfigMixin):
    """How to prune a model.

    A pruning method is a combination of independent choices, so there is one config and no class per method.

    Args:
        importance (`Importance` or `str`, defaults to ``"magnitude"``): Criterion scoring each weight.
            Registered: ``magnitude`` (``l1``), ``l2``, ``random``, ``taylor`` (``gradient_weight``).
        structure (`Structure` or `str`, defaults to ``"unstructured"``): Which weights are removed together:
            ``unstructured`` or ``blocks`` (``Blocks(rows, cols)``).
        sparsity (`float`, defaults to 0.5): Final fraction of units removed, in ``[0, 1)``.
        schedule (`Schedule` or `str`, defaults to ``"constant"``): How sparsity grows with the step:
            ``constant`` (one-shot), ``linear`` or ``cubic`` (Zhu & Gupta 2017).
        scope (`str`, defaults to ``"local"``): ``"local"`` prunes every module to the same sparsity;
            ``"global"`` ranks all targeted units together, so layers end up with different sparsities.
        target_modules (`str` or `list[str]`, *optional*): Modules to prune; ``None`` uses the architecture's
            default (encoder linear layers for BERT-family models). A string is a full-match regex, a list
            matches names or dotted suffixes.
        exclude_modules (`str` or `list[str]`, *optional*): Modules never pruned, same matching rules.
        sparsity_overrides (`dict[str, float]`): Per-module final sparsity; keys are names, dotted suffixes or
            ``"re:<regex>"``; the first matching key wins. Overridden modules are ranked on their own.
        seed (`int`, defaults to 0): Seeds `RandomImportance`.
        target_params (`float`, *optional*): For heads/neurons, the fraction of the encoder's head and FFN
            parameters to keep, in (0, 1] (like ``target_flops``, counting weights instead of operations).
        target_flops (`float`, *optional*): For structured kinds, the fraction of encoder FLOPs to keep, in
            ``(0, 1]``; it replaces ``sparsity``. Heads and neurons compete for the budget when the importance is
            comparable across them (``fisher``); otherwise both keep the same fraction.
        flops_seq_len (`int`, defaults to 128): Sequence length used to count encoder FLOPs (attention's cost
            grows with it).
        target_latency (`float`, *optional*): For structured kinds, the fraction of the dense model's measured
            latency to keep, in ``(0, 1]``, at ``latency_shape`` on the model's device: widths are chosen from a
            measured latency table (`hfprune.latency`), not from FLOPs. Replaces ``sparsity``.
        latency_shape (`list[int]`, *optional*): ``[batch, sequence length]`` for transformers (default ``[1,
            flops_seq_len]``) or ``[batch, channels, height, width]`` for CNNs (default: the example inputs').
        latency_table (`str`, *optional*): A JSON table from ``hfprune latency-table`` to plan with; by default the
            cached table for this model, device, torch version, dtype and shape (measured once when missing).

    Example:
        ```python
        from hfprune import PruningConfig
        from hfprune.schedules import CubicSchedule

        config = PruningConfig(importance="magnitude", sparsity=0.9, scope="global",
                               schedule=CubicSchedule(start_step=100, end_step=5000, every=100))
        ```
    """

    config_name: ClassVar[str] = "pruning_config.json"

    importance: Importance | str | dict = field(
        default="magnitude", metadata={"help": f"Importance criterion: one of {IMPORTANCES.names()}."}
    )
    structure: Structure | str | dict = field(
        default="unstructured", metadata={"help": f"Pruning structure: one of {STRUCTURES.names()}."}
    )
    sparsity: float = field(default=0.5, metadata={"help": "Final fraction of pruned units, in [0, 1)."})
    schedule: Schedule | str | dict = field(
        default="constant", metadata={"help": f"Sparsity schedule: one of {SCHEDULES.names()}."}
    )
    scope: Literal["local", "global"] = field(
        default="local", metadata={"help": "'local': same sparsity per module; 'global': one ranking for all."}
    )
    target_modules: str | list[str] | None = field(
        default=None, metadata={"help": "Modules to prune (regex or list of names); None = architecture default."}
    )
    exclude_modules: str | list[str] | None = field(
        default=None, metadata={"help": "Modules to leave dense (regex or list of names)."}
    )
    sparsity_overrides: dict[str, float] = field(
        default_factory=dict, metadata={"help": "Per-module final sparsity: {name|suffix|'re:regex': sparsity}."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for random importance."})
    target_flops: float | None = field(
        default=None,
        metadata={
            "help": "Structured pruning: fraction of the encoder's FLOPs to keep, in (0, 1]; overrides sparsity."
        },
    )
    target_params: float | None = field(
        default=None,
        metadata={
            "help": "Heads/neurons pruning: fraction of the encoder's head and FFN parameters to keep, in (0, 1]; "
            "overrides sparsity. Exclusive with target_flops."
        },
    )
    flops_seq_len: int = field(default=128, metadata={"help": "Sequence length at which encoder FLOPs are counted."})
    target_latency: float | None = field(
        default=None,
        metadata={
            "help": "Structured pruning: fraction of the dense model's measured latency to keep, in (0, 1], at "
            "latency_shape on the device the model is on; overrides sparsity. Exclusive with target_flops/params."
        },
    )
    latency_shape: list[int] | None = field(
        default=None,
        metadata={
            "help": "Input shape target_latency holds at: [batch, sequence length] for transformers (default [1, "
            "flops_seq_len]), [batch, channels, height, width] for CNNs (default: the example inputs' shape)."
        },
    )
    latency_table: str | None = field(
        default=None,
        metadata={
            "help": "JSON latency table to plan with (from `hfprune latency-table`); default: the cached one for "
            "this model, device, torch, dtype and shape, measured once when missing. A table measured for "
            "anything else is refused."
        },
    )
    config_version: int = field(default=CONFIG_VERSION, metadata={"help": "Format version of this config."})
    hfprune_version: str | None = field(default=None, metadata={"help": "hfprune version that wrote the config."})

    def __post_init__(self) -> None:
        coerce_fields(self, skip=("importance", "structure", "schedule"))
        self.importance = IMPORTANCES.resolve(self.importance)
        self.structure = STRUCTURES.resolve(self.structure)
        self.schedule = SCHEDULES.resolve(self.schedule)
        structure_name = self.structure.registered_name  # type: ignore[union-attr]
        if structure_name not in self.importance.supported_structures:  # type: ignore[union-attr]
            raise ConfigError(unsupported_pair_message(self.importance, structure_name))  # type: ignore[arg-type]
        self.sparsity = self._check_sparsity("sparsity", self.sparsity)
        if self.scope not in ("local", "global"):
            raise ConfigError(f"scope must be 'local' or 'global'; got {self.scope!r}.")
        pattern = getattr(self.structure, "n", None), getattr(self.structure, "m", None)
        if structure_name == "nm":  # the pattern fixes the sparsity, group by group
            implied = 1.0 - pattern[0] / pattern[1]  # type: ignore[operator]
            if abs(self.sparsity - implied) > 1e-9:
                raise ConfigError(
                    f"N:M {pattern[0]}:{pattern[1]} keeps {pattern[0]} of every {pattern[1]} weights, a sparsity of "
                    f"{implied:g}; got sparsity={self.sparsity:g}. Set sparsity={implied:g}."
                )
            if self.scope != "local":
                raise ConfigError("N:M sparsity is chosen within each group of m weights: use scope='local'.")
        self.target_modules = _normalize_modules(self.target_modules, "target_modules")
        self.exclude_modules = _normalize_modules(self.exclude_modules, "exclude_modules")
        check_module_patterns("target_modules", self.target_modules)
        check_module_patterns("exclude_modules", self.exclude_modules)
        if not isinstance(self.sparsity_overrides, dict):
            raise ConfigError(f"sparsity_overrides must be a dict; got {self.sparsity_overrides!r}.")
        check_module_patterns("sparsity_overrides key", self.sparsity_overrides, regex_prefix="re:")
        self.sparsity_overrides = {
            str(k): self._check_sparsity(f"sparsity_overrides[{k!r}]", v) for k, v in self.sparsity_overrides.items()
        }
        for name, what in (("target_flops", "encoder FLOPs"), ("target_params", "encoder head/FFN parameters"),
                           ("target_latency", "the dense model's measured latency")):  # fmt: skip
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number in (0, 1]; got {value!r}.")
            if not 0.0 < float(value) <= 1.0:
                raise ConfigError(
                    f"{name} is the fraction of {what} to keep and must be in (0, 1]; got {value!r}. For half use 0.5."
                )
            setattr(self, name, float(value))
        if self.target_flops is not None and not self.structure.structured:  # type: ignore[union-attr]
            raise ConfigError(
                "target_flops needs a structured kind (structure='heads', 'neurons', 'heads_and_neurons' or "
                "'channels'): unstructured zeros do not reduce FLOPs."
            )
        if self.target_params is not None:
            if getattr(self.structure, "kinds", None) is None:
                raise ConfigError(
                    "target_params is for heads/neurons pruning (structure='heads', 'neurons' or "
                    "'heads_and_neurons'); use sparsity or target_flops for other structures."
                )
            if self.target_flops is not None:
                raise ConfigError("Set target_flops or target_params, not both.")
        if self.target_latency is not None:
            if not self.structure.structured:  # type: ignore[union-attr]
                raise ConfigError(
                    "target_latency needs a structured kind (structure='heads', 'neurons', 'heads_and_neurons' or "
                    "'channels'): unstructured zeros do not make a model faster on CPUs and GPUs."
                )
            others = [name for name in ("target_flops", "target_params") if getattr(self, name) is not None]
            if others:
                raise ConfigError(f"Set one target: target_latency or {others[0]}, not both.")
        if self.latency_shape is not None:
            shape = self.latency_shape
            if (
                not isinstance(shape, (list, tuple))
                or len(shape) not in (2, 4)
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
            ):
                raise ConfigError(
                    f"latency_shape must be [batch, sequence length] (transformers) or [batch, channels, height, "
                    f"width] (CNNs) of positive integers; got {shape!r}, e.g. [32, 128] or [64, 3, 32, 32]."
                )
            self.latency_shape = [int(s) for s in shape]
        if self.latency_table is not None and not isinstance(self.latency_table, (str, os.PathLike)):
            raise ConfigError(f"latency_table must be the path of a JSON table; got {self.latency_table!r}.")
        if self.latency_table is not None:
            self.latency_table = os.fspath(self.latency_table)
        if self.flops_seq_len < 1:
            raise ConfigError(f"flops_seq_len must be >= 1; got {self.flops_seq_len}.")
        initial = getattr(self.schedule, "initial", 0.0)
        if initial > self.sparsity:
            raise ConfigError(f"The schedule's initial sparsity {initial} exceeds the final sparsity {self.sparsity}.")
        if self.config_version > CONFIG_VERSION:
            warnings.warn(
                f"This PruningConfig has config_version {self.config_version}, newer than this hfprune "
                f"({CONFIG_VERSION}); upgrade hfprune if loading fails.",
                HfPruneWarning,
                stacklevel=3,
            )
        if self.hfprune_version is None:
            self.hfprune_version = _package_version()

    @staticmethod
    def _check_sparsity(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number in [0, 1); got {value!r}.")
        if not 0.0 <= float(value) < 1.0:
            raise ConfigError(
                f"{name} must be in [0, 1) (the fraction of weights removed); got {value!r}. "
                "For 90% of weights removed use 0.9; 1.0 would remove every weight."
            )
        return float(value)

    def __eq__(self, other: object) -> bool:
        # Field by field (not through to_dict, which could hide a field it fails to write); the writing version
        # does not change what the config means.
        if not isinstance(other, PruningConfig):
            return NotImplemented
        return not self.differences(other)

    def differences(self, other: PruningConfig) -> dict[str, tuple[Any, Any]]:
        """``{field: (mine, theirs)}`` for every field that differs, ``hfprune_version`` aside."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if f.name != "hfprune_version" and getattr(self, f.name) != getattr(other, f.name)
        }
