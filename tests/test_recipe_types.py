"""Recipe values are converted to the type of the field they fill, or refused with the key, value and type."""

import pytest
import torch
import yaml

from hfprune import ConfigError, HfPruneError
from hfprune.recipes import (
    GlueRecipe,
    ImageRecipe,
    _subset,
    build_training_arguments,
    check_resume_checkpoint,
    coerce_value,
)


def _glue(tmp_path, **overrides) -> dict:
    recipe = {"model": "m", "task": "sst2", "training": {"output_dir": str(tmp_path / "run"), "use_cpu": True}}
    for key, value in overrides.items():
        if key.startswith("training."):
            recipe["training"][key.split(".", 1)[1]] = value
        else:
            recipe[key] = value
    return recipe


def _write(tmp_path, recipe, text: str | None = None):
    path = tmp_path / "recipe.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(recipe))
    return path


def test_yaml_scientific_notation_reaches_adamw_as_a_float(tmp_path):
    path = _write(tmp_path, None, f"model: m\ntask: sst2\ntraining:\n  output_dir: {tmp_path}/run\n  use_cpu: true\n"
                                  "  learning_rate: 5e-5\n  max_steps: '3'\n  weight_decay: 1e-2\n")  # fmt: skip
    assert yaml.safe_load(path.read_text())["training"]["learning_rate"] == "5e-5"  # what PyYAML gives
    recipe = GlueRecipe.from_yaml(path)
    assert recipe.training["learning_rate"] == 5e-5 and isinstance(recipe.training["learning_rate"], float)
    assert recipe.training["max_steps"] == 3 and isinstance(recipe.training["max_steps"], int)
    args = build_training_arguments(recipe.training)
    assert args.learning_rate == 5e-5 and args.weight_decay == 0.01
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    assert optimizer.param_groups[0]["lr"] == 5e-5


def test_dotted_overrides_take_the_same_path(tmp_path):
    path = _write(tmp_path, _glue(tmp_path))
    recipe = GlueRecipe.from_yaml(path, overrides=["training.learning_rate=5e-5", "max_seq_length=64",
                                                   "score_learning_rate=1e-3", "training.max_steps=3.0"])  # fmt: skip
    assert recipe.training["learning_rate"] == 5e-5
    assert recipe.max_seq_length == 64 and recipe.score_learning_rate == 1e-3
    assert recipe.training["max_steps"] == 3 and isinstance(recipe.training["max_steps"], int)
    with pytest.raises(ConfigError, match=r"max_steps must be an integer.*got 2\.5"):
        GlueRecipe.from_yaml(path, overrides=["training.max_steps=2.5"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"training.max_steps": 2.5}, r"the training section: max_steps must be an integer \(e\.g\. 3\); got 2\.5"),
        ({"training.learning_rate": "fast"}, r"learning_rate must be a number .*got 'fast' \(str\)"),
        ({"training.use_cpu": "maybe"}, r"use_cpu must be true or false; got 'maybe'"),
        ({"training.seed": True}, r"seed must be an integer .*got True \(bool\)"),
        ({"max_seq_length": "long"}, r"GLUE recipe: max_seq_length must be an integer .*got 'long'"),
        ({"max_seq_length": 0}, r"max_seq_length must be positive; got 0"),
        ({"score_learning_rate": [1]}, r"score_learning_rate must be a number"),
        ({"max_train_samples": 1.5}, r"max_train_samples must be an integer"),
        ({"training": [1, 2]}, r"training must be a section of `key: value` lines"),
        ({"task": 3}, r"Unknown GLUE task '3'"),
    ],
)
def test_wrong_types_name_key_value_and_type(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        GlueRecipe.from_yaml(_write(tmp_path, _glue(tmp_path, **overrides)))


def test_simple_cases_and_what_is_left_to_training_arguments(tmp_path):
    recipe = GlueRecipe(**_glue(tmp_path, **{"training.use_cpu": "true", "training.save_total_limit": None,
                                             "training.eval_strategy": "steps", "training.report_to": [],
                                             "training.eval_steps": "10", "training.resume_from_checkpoint": False,
                                             "max_eval_samples": "48"}))  # fmt: skip
    training = recipe.training
    assert training["use_cpu"] is True and training["save_total_limit"] is None
    assert training["eval_strategy"] == "steps" and training["report_to"] == []  # unions: left alone
    assert training["eval_steps"] == 10 and recipe.max_eval_samples == 48
    assert training["resume_from_checkpoint"] is False  # a str field that TrainingArguments lets take a bool
    with pytest.raises(ConfigError, match=r"not valid TrainingArguments.*sometimes"):
        build_training_arguments({**training, "eval_strategy": "sometimes"})


def test_coerce_value_rules():
    assert coerce_value("1e-4", float, "lr", "x") == 1e-4
    assert coerce_value(3, float, "lr", "x") == 3  # an int stays an int (100 warmup steps, not a ratio)
    assert coerce_value("3", int, "n", "x") == 3
    assert coerce_value(None, int | None, "n", "x") is None
    assert coerce_value("no", bool, "b", "x") is False
    assert coerce_value(5, str, "s", "x") == "5"
    with pytest.raises(ConfigError, match=r"x: n must be an integer \(e\.g\. 3\); got nothing"):
        coerce_value(None, int, "n", "x")
    with pytest.raises(ConfigError, match=r"x: s must be a string; got True"):
        coerce_value(True, str, "s", "x")


def test_image_recipe_fields_and_eagleeye_section(tmp_path):
    eagleeye = {"num_candidates": "30", "max_ratio": "0.8"}
    path = _write(tmp_path, {"model": "cifar_resnet20", "num_classes": "10", "output_dir": str(tmp_path / "o"),
                             "batch_size": 32.0, "eagleeye": eagleeye})  # fmt: skip
    recipe = ImageRecipe.from_yaml(path)
    assert recipe.num_classes == 10 and recipe.batch_size == 32
    assert recipe.eagleeye == {"num_candidates": 30, "max_ratio": 0.8}
    with pytest.raises(ConfigError, match=r"num_classes must be an integer .*got 2\.5"):
        ImageRecipe.from_yaml(path, overrides=["num_classes=2.5"])
    with pytest.raises(ConfigError, match=r"eagleeye section: bn_batches must be an integer .*got 'many'"):
        ImageRecipe.from_yaml(path, overrides=["eagleeye.bn_batches=many"])
    with pytest.raises(ConfigError, match=r"classes has 2 names but num_classes is 10"):
        ImageRecipe.from_yaml(path, overrides=["classes=[cat, dog]"])
    with pytest.raises(ConfigError, match=r"needs a 'output_dir' key"):
        ImageRecipe.from_yaml(_write(tmp_path, {"model": "cifar_resnet20", "num_classes": 10}))


def test_recipe_files_that_cannot_be_read(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML: line 2, column 7: mapping values .*Fix the syntax"):
        GlueRecipe.from_yaml(_write(tmp_path, None, "model: m\n  task: sst2\n"))
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("model: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9"):
        GlueRecipe.from_yaml(bad)
    with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
        GlueRecipe.from_yaml(tmp_path)
    with pytest.raises(ConfigError, match=r"must be a YAML mapping.*list"):
        GlueRecipe.from_yaml(_write(tmp_path, None, "- a\n- b\n"))
    with pytest.raises(ConfigError, match=r"Override 'training.max_steps=\[': the value is not valid YAML"):
        GlueRecipe.from_yaml(_write(tmp_path, _glue(tmp_path)), overrides=["training.max_steps=["])


def _complete_checkpoint(folder, step):
    """What `PruningTrainer` writes, in small: weights, trainer state and pruner state."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, folder / "model.safetensors")
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    torch.save({"step": torch.tensor(step)}, folder / "hfprune_pruner.pt")


def test_damaged_pruner_checkpoint_names_the_earlier_one(tmp_path):
    run = tmp_path / "run"
    for step in (2, 4):
        _complete_checkpoint(run / f"checkpoint-{step}", step)
    assert check_resume_checkpoint(True, run) == run / "checkpoint-4"  # intact: accepted
    (run / "checkpoint-4" / "hfprune_pruner.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(HfPruneError) as caught:
        check_resume_checkpoint(True, run)
    message = str(caught.value)
    assert "checkpoint-4/hfprune_pruner.pt is damaged" in message
    assert f"earlier checkpoint {run / 'checkpoint-2'}" in message
    assert "weights_only" not in message
    (run / "checkpoint-2" / "trainer_state.json").write_text("{truncated")
    with pytest.raises(HfPruneError, match=r"checkpoint-2/trainer_state.json is damaged.*no earlier checkpoint"):
        check_resume_checkpoint(str(run / "checkpoint-2"), run)
    with pytest.raises(ConfigError, match="holds no complete checkpoint-N folder"):
        check_resume_checkpoint(True, tmp_path / "nothing")


def test_indices_files_are_checked(tmp_path):
    data = list(range(5))
    path = tmp_path / "idx.txt"
    path.write_text("0\n3\n")
    assert list(_subset(data, str(path))) == [0, 3]
    path.write_text("0\nx\n")
    with pytest.raises(ConfigError, match=r"one non-negative integer per line; found \['x'\]"):
        _subset(data, str(path))
    path.write_text("7\n")
    with pytest.raises(ConfigError, match="selects row 7, but the data has 5 rows"):
        _subset(data, str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        _subset(data, str(tmp_path / "none.txt"))
