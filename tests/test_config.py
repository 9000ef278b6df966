import json

import pytest
import yaml

from hfprune import ConfigError, HfPruneWarning, PruningConfig
from hfprune.importance import IMPORTANCES
from hfprune.schedules import SCHEDULES, CubicSchedule
from hfprune.structures import STRUCTURES, Blocks


def _all_components():
    for registry in (IMPORTANCES, STRUCTURES, SCHEDULES):
        for cls in registry.classes():
            yield pytest.param(registry, cls, id=f"{registry.kind}-{cls.registered_name}")


@pytest.mark.parametrize(("registry", "cls"), list(_all_components()))
def test_every_registered_component_round_trips(registry, cls, tmp_path):
    component = cls()
    field = {"importance": "importance", "structure": "structure", "schedule": "schedule"}[registry.kind]
    partner = {}  # a partner this component supports, so the pair is a valid config
    if registry.kind == "importance":
        partner = {"structure": cls.supported_structures[0]}
    elif registry.kind == "structure":
        partner = {"importance": next(imp.registered_name for imp in IMPORTANCES.classes()
                                      if cls.registered_name in imp.supported_structures)}  # fmt: skip
    # A structure whose pattern fixes the sparsity (N:M) says which; the others take any.
    sparsity = component.sparsity if isinstance(getattr(cls, "sparsity", None), property) else 0.3
    config = PruningConfig(**{field: component}, **partner, sparsity=sparsity)
    data = json.loads(config.to_json_string())
    assert data[field]["type"] == cls.registered_name
    assert PruningConfig.from_dict(data) == config
    assert type(getattr(PruningConfig.from_dict(data), field)) is cls
    config.save_pretrained(tmp_path)
    assert PruningConfig.from_pretrained(tmp_path) == config
    assert PruningConfig.from_dict(yaml.safe_load(config.to_yaml())) == config


def test_strings_become_objects_and_non_default_fields_survive(tmp_path):
    config = PruningConfig(
        importance="l2",
        structure=Blocks(rows=4, cols=8),
        schedule=CubicSchedule(initial=0.1, start_step=5, end_step=50, every=5),
        sparsity=0.8,
        scope="global",
        target_modules=["query", "value"],
        exclude_modules=r".*layer\.0\..*",
        sparsity_overrides={"re:.*intermediate.*": 0.5},
        seed=3,
    )
    assert config.importance.p == 2
    loaded = PruningConfig.from_pretrained(config.save_pretrained(tmp_path))
    assert loaded == config
    assert loaded.structure == Blocks(rows=4, cols=8)
    assert loaded.schedule.every == 5
    assert json.loads((tmp_path / "pruning_config.json").read_text())["config_version"] == 1
    assert loaded.hfprune_version


@pytest.mark.parametrize("value", [1.5, -0.1, 1.0, "half", True])
def test_sparsity_outside_unit_interval_is_rejected(value):
    with pytest.raises(ConfigError, match=r"sparsity must be"):
        PruningConfig(sparsity=value)


def test_unknown_method_suggests_the_closest_name():
    with pytest.raises(ConfigError, match=r"Unknown importance 'magnitud'.*Did you mean 'magnitude'\?"):
        PruningConfig(importance="magnitud")


def test_unknown_schedule_lists_registered_names():
    with pytest.raises(ConfigError, match="Registered: constant, cubic, linear"):
        PruningConfig(schedule="exponential")


def test_bad_scope_and_override_rejected():
    with pytest.raises(ConfigError, match="scope"):
        PruningConfig(scope="layerwise")
    with pytest.raises(ConfigError, match=r"sparsity_overrides\['fc1'\]"):
        PruningConfig(sparsity_overrides={"fc1": 2.0})


def test_initial_above_final_rejected():
    with pytest.raises(ConfigError, match="initial sparsity"):
        PruningConfig(sparsity=0.2, schedule=CubicSchedule(initial=0.5))


@pytest.mark.parametrize("importance", [cls.registered_name for cls in IMPORTANCES.classes()])
@pytest.mark.parametrize("structure", [cls.registered_name for cls in STRUCTURES.classes()])
def test_every_importance_structure_pair_is_valid_or_refused_with_the_choices(importance, structure):
    supported = structure in IMPORTANCES.get(importance).supported_structures
    if supported:
        PruningConfig(importance=importance, structure=structure)
        return
    with pytest.raises(ConfigError, match=rf"Importance '{importance}' cannot prune structure '{structure}'\. "
                       rf"'{importance}' works with structure .*; structure '{structure}' works with importance"):
        PruningConfig(importance=importance, structure=structure)


def test_unknown_keys_are_errors_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"'sparsty' \(did you mean 'sparsity'\?\)"):
        PruningConfig.from_dict({"sparsty": 0.4})


def test_unknown_keys_of_a_newer_config_version_warn_and_are_dropped():
    with pytest.warns(HfPruneWarning, match="future_key"):
        config = PruningConfig.from_dict({"sparsity": 0.4, "future_key": 1, "config_version": 99})
    assert config.sparsity == 0.4


def test_from_yaml_section(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("pruning:\n  importance: random\n  sparsity: 0.25\n  schedule: {type: linear, end_step: 10}\n")
    config = PruningConfig.from_yaml(path, section="pruning")
    assert config.importance.registered_name == "random"
    assert config.schedule(5, config.sparsity) == pytest.approx(0.125)
    with pytest.raises(ConfigError, match="no top-level 'model'"):
        PruningConfig.from_yaml(path, section="model")
