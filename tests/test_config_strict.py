"""Configs refuse what they cannot mean: typos in nested sections, wrong types, silent truncation."""

import dataclasses
import json

import pytest

from hfprune import PruningConfig
from hfprune.distillation import DistillationConfig
from hfprune.errors import ConfigError, HfPruneWarning
from hfprune.schedules import CubicSchedule
from hfprune.structures import HeadsAndNeurons


@pytest.mark.parametrize(
    "section, key, suggestion",
    [
        ({"structure": {"type": "heads_and_neurons", "round_too": 8}}, "round_too", "round_to"),
        ({"importance": {"type": "movement", "updat_every": 2}}, "updat_every", "update_every"),
        ({"schedule": {"type": "cubic", "end_step": 10, "evry": 2}}, "evry", "every"),
        ({"structure": {"type": "blocks", "row": 4}}, "row", "rows"),
    ],
)
def test_nested_typos_are_errors_with_did_you_mean(section, key, suggestion):
    with pytest.raises(ConfigError, match=rf"'{key}' \(did you mean '{suggestion}'\?\)"):
        PruningConfig.from_dict(section)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"importance": {"type": "movement", "update_every": 2.5}}, r"importance.update_every must be an integer"),
        ({"structure": {"type": "heads", "round_to": "eight"}}, r"structure.round_to must be an integer"),
        ({"structure": {"type": "heads", "uniform": "maybe"}}, r"structure.uniform must be true or false"),
        ({"schedule": {"type": "cubic", "end_step": 10.5}}, r"end_step=10.5: give a step \(a whole number"),
        ({"seed": 1.5}, r"seed must be an integer"),
        ({"sparsity": "half"}, r"sparsity must be a number"),
        ({"scope": "globl"}, r"scope must be one of \['local', 'global'\]"),
        ({"sparsity_overrides": {"layer": "x"}}, r"sparsity_overrides\['layer'\] must be a number"),
        ({"flops_seq_len": True}, r"flops_seq_len must be an integer"),
    ],
)
def test_wrong_types_are_refused_not_truncated(data, message):
    with pytest.raises(ConfigError, match=message):
        PruningConfig.from_dict(data)


def test_what_users_plainly_mean_is_coerced():
    config = PruningConfig.from_dict(
        {"sparsity": "0.9", "schedule": {"type": "cubic", "start_step": 10.0, "end_step": "100", "every": 2}}
    )
    assert config.sparsity == 0.9 and isinstance(config.sparsity, float)
    assert config.schedule == CubicSchedule(start_step=10, end_step=100, every=2)
    assert isinstance(config.schedule.start_step, int)


def test_component_objects_are_type_checked_too():
    with pytest.raises(ConfigError, match=r"HeadsAndNeurons\.round_to must be an integer"):
        PruningConfig(structure=HeadsAndNeurons(round_to=2.5))


def test_distillation_config_is_strict():
    with pytest.raises(ConfigError, match=r"'temprature' \(did you mean 'temperature'\?\)"):
        DistillationConfig.from_dict({"temprature": 2.0})
    with pytest.raises(ConfigError, match=r"hidden_layers\[0\] must be an integer"):
        DistillationConfig(hidden_layers=[1.5])
    assert DistillationConfig.from_dict({"temperature": "2", "alpha": "5e-1"}).alpha == 0.5


def test_equality_compares_every_field_not_the_serialized_form(monkeypatch):
    a = PruningConfig(sparsity=0.5, seed=1)
    b = PruningConfig(sparsity=0.5, seed=2)
    # A serializer that forgot a field must not make two different configs equal.
    original = PruningConfig.to_dict

    def lossy(self):
        data = original(self)
        data.pop("seed")
        return data

    monkeypatch.setattr(PruningConfig, "to_dict", lossy)
    assert a != b
    assert a.differences(b) == {"seed": (1, 2)}
    assert a == dataclasses.replace(a, hfprune_version="0.0.0")


def test_every_field_round_trips():
    config = PruningConfig(
        importance="taylor", structure={"type": "heads_and_neurons", "round_to": 4}, sparsity=0.3, scope="global",
        target_modules=["query", "key"], exclude_modules="x", sparsity_overrides={"query": 0.1}, seed=7,
        flops_seq_len=64, schedule=CubicSchedule(start_step=1, end_step=9, every=2),
    )
    again = PruningConfig.from_dict(json.loads(config.to_json_string()))
    assert not config.differences(again)


def test_newer_files_still_load_with_a_warning_for_nested_unknown_keys():
    with pytest.warns(HfPruneWarning, match="round_too"):
        config = PruningConfig.from_dict(
            {"config_version": 99, "structure": {"type": "heads", "round_too": 8, "round_to": 2}}
        )
    assert config.structure.round_to == 2


def _components_with_integer_fields():
    from hfprune.field_types import field_types
    from hfprune.importance import IMPORTANCES
    from hfprune.schedules import SCHEDULES
    from hfprune.structures import STRUCTURES

    for registry in (IMPORTANCES, STRUCTURES, SCHEDULES):
        for cls in registry.classes():
            for name, annotation in field_types(cls).items():
                if annotation is int:
                    yield pytest.param(cls, name, id=f"{cls.__name__}.{name}")


@pytest.mark.parametrize("cls, name", list(_components_with_integer_fields()))
def test_components_built_in_python_refuse_fractional_integers(cls, name):
    # MovementImportance(update_every=2.5) used to be accepted in Python (recipes and JSON refused it).
    extra = {"end_step": 10} if "end_step" in {f.name for f in dataclasses.fields(cls)} and name != "end_step" else {}
    with pytest.raises(ConfigError, match=rf"{cls.__name__}\.{name} must be an integer \(e\.g\. 3\); got 2\.5"):
        cls(**extra, **{name: 2.5})


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"target_modules": "["}, r"target_modules '\[' is not a valid regular expression"),
        ({"exclude_modules": "(a"}, r"exclude_modules '\(a' is not a valid regular expression"),
        ({"sparsity_overrides": {"re:(a": 0.5}}, r"sparsity_overrides key '\(a' is not a valid regular expression"),
    ],
)
def test_a_regex_that_does_not_compile_is_refused_by_the_config(fields, message):
    # It used to reach re.fullmatch and fail there as a raw re.error, at the first module matched.
    with pytest.raises(ConfigError, match=message):
        PruningConfig(**fields)


def test_a_damaged_pruning_config_file_is_named(tmp_path):
    from hfprune.hub import load_pruning_config

    path = tmp_path / PruningConfig.config_name
    path.write_text('{"sparsity": 0.5')
    with pytest.raises(ConfigError, match=rf"{path} is not valid JSON .*damaged or was cut short"):
        load_pruning_config(tmp_path)
    path.write_text('{"sparsity": 1.5}')
    with pytest.raises(ConfigError, match=rf"{path}: sparsity must be in"):
        load_pruning_config(tmp_path)
