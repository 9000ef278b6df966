"""Every YAML recipe under configs/ loads with the code that runs it, and says where its numbers come from.

Kinds are told apart the way `hfprune train` does (``task`` -> GLUE, ``num_classes`` -> image); a file with only
``model``/``pruning`` is an `hfprune prune --config` recipe. Anything else fails: no recipe is skipped. Paths to
data, weights and models in recipes are not opened (the loaders do not need them to exist).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from hfprune import ConfigError, PruningConfig
from hfprune.cli import RECIPE_KEYS, build_config, build_parser, load_recipe, resolve_calibration
from hfprune.distillation import DistillationConfig
from hfprune.recipes import GlueRecipe, ImageRecipe
from hfprune.structures import Channels


REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
#: accelerate's own launcher configs (``accelerate launch --config_file``), checked by `test_accelerate_configs_load`.
ACCELERATE_CONFIGS = sorted((CONFIGS / "accelerate").glob("*.yaml"))
RECIPES = sorted((set(CONFIGS.rglob("*.yaml")) | set(CONFIGS.rglob("*.yml"))) - set(ACCELERATE_CONFIGS))
#: One recipe per documented workflow (README); renaming one must update the README and this list.
DOCUMENTED = {
    "minilm_embedding_fisher_50.yaml",  # README main job: label-free heads+neurons of the embedding model
    "minilm_magnitude_global_50.yaml",  # one-shot unstructured magnitude, hfprune prune
    "minilm_sst2_retraining_free_50.yaml",  # retraining-free heads+neurons (Fisher), hfprune prune
    "glue/sst2_dense.yaml",  # GLUE teacher
    "glue/sst2_magnitude_distil.yaml",  # gradual magnitude + KD
    "glue/sst2_movement_distil.yaml",  # movement pruning + KD
    "glue/sst2_soft_movement_distil.yaml",  # soft movement + KD
    "glue/sst2_heads_neurons_movement_distil.yaml",  # heads/neurons during training
    "image/cifar_resnet20_lottery.yaml",  # lottery ticket search with rewinding, CIFAR
    "image/cifar_resnet56_eagleeye.yaml",  # CNN EagleEye, CIFAR
    "image/resnet50_imagenet_eagleeye.yaml",  # CNN EagleEye, ImageNet
}
#: The header must say where the recipe's numbers (or its lack of them) come from.
SOURCE_WORDS = ("benchmark", "paper", "numbers")
#: Subdirectories whose recipes must be of one kind.
DIRECTORY_KIND = {"glue": "glue", "image": "image"}
SCRIPTS = {"scripts/run_glue.py": "glue", "scripts/run_image.py": "image"}


def recipe_kind(path: Path, data: object) -> str:
    """``glue``, ``image`` or ``prune``; an unknown kind fails the test."""
    if not isinstance(data, dict):
        pytest.fail(f"{path} is not a YAML mapping.")
    if "task" in data or "dataset" in data:
        return "glue"
    if "num_classes" in data:
        return "image"
    if "pruning" in data and set(data) <= RECIPE_KEYS:
        return "prune"
    pytest.fail(
        f"{path}: unknown recipe kind (top-level keys {sorted(data)}). A GLUE recipe has `task`, an image recipe "
        f"`num_classes`, an `hfprune prune --config` recipe only {sorted(RECIPE_KEYS)} with `pruning`."
    )


def header(path: Path) -> list[str]:
    """The comment block the file starts with, without the '#'."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def documented_commands(lines: list[str]) -> list[list[str]]:
    """Shell commands in the header (continuation lines joined) that run a recipe, from the program on."""
    joined: list[str] = []
    pending = ""
    for line in lines:
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    commands = []
    for line in joined:
        if "hfprune prune" not in line and not any(script in line for script in SCRIPTS):
            continue
        tokens = shlex.split(line.strip("`"))
        for index, token in enumerate(tokens):
            if token in SCRIPTS or (token == "hfprune" and tokens[index + 1 : index + 2] == ["prune"]):
                commands.append([token.strip("`") for token in tokens[index:]])
                break
    return commands


def assert_round_trips(config: PruningConfig) -> None:
    assert PruningConfig.from_dict(config.to_dict()) == config
    assert PruningConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config


def training_arguments(training: dict) -> None:
    """Build the `TrainingArguments` the run would build (values, not only keys, are checked)."""
    from transformers import TrainingArguments

    TrainingArguments(**training)


def validate_glue(path: Path, overrides: list[str] | None = None) -> None:
    recipe = GlueRecipe.from_yaml(path, overrides=overrides)
    config = recipe.pruning_config()
    if config is not None:
        assert config.sparsity > 0
        assert_round_trips(config)
    if recipe.teacher is not None:
        distillation = recipe.distillation_config()
        assert distillation is not None
        assert DistillationConfig.from_dict(distillation.to_dict()) == distillation
    training_arguments(recipe.training)


def validate_image(path: Path, overrides: list[str] | None = None) -> None:
    recipe = ImageRecipe.from_yaml(path, overrides=overrides)
    if recipe.lottery is not None:  # a lottery search: its config must build, its training section too
        from hfprune import LotteryConfig

        pruning = {"target_modules": ["conv1"], **recipe.lottery.get("pruning", {})}
        config = LotteryConfig.from_dict({**recipe.lottery, "pruning": pruning})
        assert LotteryConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
        training_arguments(recipe.training)
        return
    assert recipe.pruning is not None, f"{path}: an image recipe without a pruning section prunes nothing."
    config = PruningConfig.from_dict(recipe.pruning)
    assert isinstance(config.structure, Channels), f"{path}: CNN recipes prune channels (structure: channels)."
    assert_round_trips(config)
    if recipe.eagleeye is not None:
        assert config.target_flops is not None, f"{path}: EagleEye searches under target_flops."
    if recipe.distillation is not None:
        distillation = DistillationConfig.from_dict(recipe.distillation)
        assert DistillationConfig.from_dict(distillation.to_dict()) == distillation
    if recipe.training is not None:
        training_arguments(recipe.training)


def validate_prune(path: Path, argv: list[str] | None = None) -> PruningConfig:
    """What `cmd_prune` does with the recipe before loading a model: parse, read, apply flags, check the method.

    Without ``argv`` only the recipe is checked; with a documented command line, also that a method needing
    calibration data gets it (``--task``, ``--dataset``, or a sentence-transformers model, which needs no labels).
    """
    argv = argv or ["prune", "--config", str(path), "--output", "unused"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as err:
        pytest.fail(f"{path}: `hfprune {shlex.join(argv)}` does not parse (exit {err.code}).")
    args.config = str(REPO / args.config)
    recipe = load_recipe(args.config)
    config = build_config(args, recipe)
    args = resolve_calibration(args, recipe)
    assert_round_trips(config)
    assert not config.importance.learned, f"{path}: learned scores need training; use a GLUE recipe."
    if config.importance.requires_grad:
        from hfprune.cli import default_model_path
        from hfprune.embeddings import is_sentence_transformer

        # A sentence-transformers model (the bundled MiniLM when the recipe names none) calibrates without labels.
        model = args.model or recipe.get("model") or default_model_path()
        label_free = args.task is None and Path(str(model)).is_dir() and is_sentence_transformer(model)
        assert args.task is not None or args.dataset is not None or label_free, (
            f"{path}: {config.importance.registered_name} needs calibration data (calibration.task, "
            "calibration.dataset, --task or --dataset)."
        )
    return config


VALIDATE = {"glue": validate_glue, "image": validate_image}


def test_every_documented_workflow_has_a_recipe():
    found = {path.relative_to(CONFIGS).as_posix() for path in RECIPES}
    assert DOCUMENTED <= found, f"missing recipes: {sorted(DOCUMENTED - found)}"


@pytest.mark.parametrize("path", RECIPES, ids=[p.relative_to(CONFIGS).as_posix() for p in RECIPES])
def test_recipe_validates_and_documents_itself(path):
    data = yaml.safe_load(path.read_text())
    kind = recipe_kind(path, data)
    folder = path.relative_to(CONFIGS).parts[0] if len(path.relative_to(CONFIGS).parts) > 1 else None
    if folder in DIRECTORY_KIND:
        assert kind == DIRECTORY_KIND[folder], f"{path} is a {kind} recipe in configs/{folder}/."

    if kind == "prune":
        validate_prune(path)
    else:
        VALIDATE[kind](path)

    lines = header(path)
    assert lines, f"{path} must start with a comment block (what it does, how to run it, where numbers come from)."
    text = " ".join(lines).lower()
    assert any(word in text for word in SOURCE_WORDS), f"{path}: the header must say where its numbers come from."

    # The header's own commands must run this file with valid flags / overrides.
    relative = path.relative_to(REPO).as_posix()
    own = []
    for command in documented_commands(lines):
        if command[0] == "hfprune" and f"--config {relative}" in " ".join(command):
            own.append(command)
            validate_prune(path, command[1:])
        elif command[0] in SCRIPTS and command[1:2] == [relative]:
            own.append(command)
            assert SCRIPTS[command[0]] == kind, f"{path}: a {kind} recipe documented with {command[0]}."
            assert all(re.fullmatch(r"[\w.]+=.*", item) for item in command[2:]), command
            VALIDATE[kind](path, overrides=command[2:])
    assert own, f"{path}: the header must show the command that runs it (with {relative})."


def test_unknown_recipe_kind_fails(tmp_path):
    path = tmp_path / "mystery.yaml"
    path.write_text("# Numbers: none.\nmodel: x\nepochs: 3\n")
    with pytest.raises(pytest.fail.Exception, match="unknown recipe kind"):
        recipe_kind(path, yaml.safe_load(path.read_text()))


def test_calibration_section_defaults_recipe_and_flags(tmp_path):
    recipe_path = tmp_path / "rf.yaml"
    recipe_path.write_text(
        "pruning: {importance: fisher, structure: heads_and_neurons, target_flops: 0.5}\n"
        "calibration: {task: sst2, num_examples: 64, reconstruct: false, eval: true}\n"
    )

    def resolved(*flags):
        args = build_parser().parse_args(["prune", "--config", str(recipe_path), "--output", "o", *flags])
        return resolve_calibration(args, load_recipe(args.config))

    args = resolved()
    assert (args.task, args.num_calibration, args.reconstruct, args.eval, args.max_seq_length) == (
        "sst2", 64, False, True, 128)  # fmt: skip
    args = resolved("--task", "rte", "--num-calibration", "8", "--reconstruct", "--no-eval", "--max-seq-length", "64")
    assert (args.task, args.num_calibration, args.reconstruct, args.eval, args.max_seq_length) == (
        "rte", 8, True, False, 64)  # fmt: skip
    recipe_path.write_text("pruning: {importance: fisher}\ncalibration: {num_examples: many}\n")
    with pytest.raises(ConfigError, match="calibration.num_examples must be of type int"):
        load_recipe(str(recipe_path))
    recipe_path.write_text("pruning: {importance: fisher}\ncalibration: {tsak: sst2}\n")
    with pytest.raises(ConfigError, match="unknown calibration keys"):
        load_recipe(str(recipe_path))


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import ClusterConfig

    assert ACCELERATE_CONFIGS, "configs/accelerate/fsdp2.yaml is documented in the README"
    for path in ACCELERATE_CONFIGS:
        config = ClusterConfig.from_yaml_file(str(path))
        assert config.distributed_type == "FSDP" and config.fsdp_config["fsdp_version"] == 2, path
        assert any("accelerate launch --config_file" in line for line in header(path)), path
