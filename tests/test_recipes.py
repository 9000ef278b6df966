import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hfprune import ConfigError, MissingDataError
from hfprune.recipes import GlueRecipe, train_glue

from .conftest import SHARED_DATA, free_port


REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = SHARED_DATA / "glue"
needs_glue = pytest.mark.skipif(
    not (GLUE_DIR / "SST-2" / "dev.tsv").is_file(), reason=f"needs GLUE TSVs in {GLUE_DIR}"
)


def _recipe(tmp_path, model, **overrides) -> dict:
    recipe = {
        "model": str(model),
        "task": "sst2",
        "data_dir": str(GLUE_DIR),
        "teacher": str(model),
        "max_train_samples": 96,
        "max_eval_samples": 48,
        "max_seq_length": 64,
        "training": {
            "output_dir": str(tmp_path / "run"),
            "per_device_train_batch_size": 8,
            "max_steps": 8,
            "logging_steps": 4,
            "use_cpu": True,
            "report_to": [],
            "disable_tqdm": True,
            "save_strategy": "no",
            "seed": 0,
        },  # fmt: skip
        "pruning": {"importance": "movement", "sparsity": 0.5, "schedule": {"type": "cubic", "end_step": 6}},
        "distillation": {"alpha": 0.5, "temperature": 2.0},
    }
    recipe.update(overrides)
    return recipe


def _write(tmp_path, recipe) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@needs_glue
def test_train_glue_fine_prunes_and_saves(tmp_path, tiny_sst2_classifier):
    recipe = GlueRecipe.from_yaml(_write(tmp_path, _recipe(tmp_path, tiny_sst2_classifier)))
    result = train_glue(recipe)
    assert result["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert 0.0 <= result["metrics"]["validation"]["eval_validation_accuracy"] <= 1.0
    final = Path(result["output_dir"])
    saved = json.loads((final / "eval_results.json").read_text())
    assert saved["mask_digest"] == result["mask_digest"]
    assert json.loads((final / "report.json").read_text())["sparsity"] == pytest.approx(0.5, abs=1e-3)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(final)
    assert model.config.id2label == {0: "negative", 1: "positive"}


@needs_glue
def test_accelerate_two_processes_agree_and_report_once(tmp_path, tiny_sst2_classifier):
    path = _write(tmp_path, _recipe(tmp_path, tiny_sst2_classifier))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # accelerate's --cpu flag uses its single-process launcher unless MPI is installed; --multi_gpu launches
    # torchrun, which on a machine without GPUs runs the ranks on the CPU with the gloo backend.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--main_process_port", str(free_port()), "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO / "scripts" / "run_glue.py"), str(path)]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("hfprune eval results: ")]
    assert len(lines) == 1, completed.stdout[-2000:]
    result = json.loads(lines[0].removeprefix("hfprune eval results: "))
    # train_glue gathers every rank's mask digest and fails if they differ; 2 ranks really ran.
    assert result["num_processes"] == 2
    assert result["sparsity"] == pytest.approx(0.5, abs=1e-3)


@needs_glue
def test_accelerate_fsdp2_config_fine_prunes_heads_and_neurons(tmp_path, tiny_sst2_classifier):
    # configs/accelerate/fsdp2.yaml as a user launches it, on 2 CPU ranks: tests/cpu_sharding.py bypasses accelerate's
    # GPU-only check (on CPU it would train with DDP) and runs scripts/run_glue.py.
    recipe = _recipe(tmp_path, tiny_sst2_classifier, pruning={
        "importance": "movement", "structure": "heads_and_neurons", "target_flops": 0.6,
        "schedule": {"type": "cubic", "end_step": 6}})  # fmt: skip
    recipe["training"].update(save_strategy="steps", save_steps=4)
    path = _write(tmp_path, recipe)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", str(REPO / "configs" / "accelerate" / "fsdp2.yaml"), "--num_processes", "2",
               "--main_process_port", str(free_port()), str(REPO / "tests" / "cpu_sharding.py"),
               str(REPO / "scripts" / "run_glue.py"), str(path)]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("hfprune eval results: ")]
    assert len(lines) == 1, completed.stdout[-2000:]
    result = json.loads(lines[0].removeprefix("hfprune eval results: "))
    assert result["num_processes"] == 2 and result["train_steps"] == 8
    # The checkpoint is FSDP's: the model as a sharded torch.distributed.checkpoint folder, the pruner state whole.
    checkpoint = tmp_path / "run" / "checkpoint-4"
    assert (checkpoint / "pytorch_model_fsdp_0" / ".metadata").is_file()
    assert (checkpoint / "hfprune_pruner.pt").is_file() and not (checkpoint / "model.safetensors").exists()
    from transformers import AutoModelForSequenceClassification

    from hfprune.hub import load_pruned

    final = Path(result["output_dir"])
    dense = AutoModelForSequenceClassification.from_pretrained(tiny_sst2_classifier)
    compacted = load_pruned(final)  # rank 0 gathered the sharded model and compacted it
    assert sum(p.numel() for p in compacted.bert.encoder.parameters()) < 0.8 * sum(
        p.numel() for p in dense.bert.encoder.parameters())  # fmt: skip
    # The sharded teacher was evaluated (by every rank): its score is in the card's table, not "-".
    row = next(line for line in (final / "README.md").read_text().splitlines() if line.startswith("| accuracy |"))
    assert re.fullmatch(r"\d\.\d{4}", row.split("|")[2].strip()), row


def test_unknown_task_and_keys_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'sst2'"):
        GlueRecipe.from_yaml(_write(tmp_path, _recipe(tmp_path, "m", task="sst3")))
    with pytest.raises(ConfigError, match=r"Unknown key 'max_stepz' \(did you mean 'max_steps'\?\)"):
        GlueRecipe.from_yaml(_write(tmp_path, _recipe(tmp_path, "m")), overrides=["training.max_stepz=3"])
    with pytest.raises(ConfigError, match=r"'sparsty' \(did you mean 'sparsity'\?\) in the pruning section"):
        GlueRecipe.from_yaml(_write(tmp_path, _recipe(tmp_path, "m")), overrides=["pruning.sparsty=0.3"])
    with pytest.raises(ConfigError, match="Unknown key 'modle'"):
        GlueRecipe.from_yaml(_write(tmp_path, {**_recipe(tmp_path, "m"), "modle": "x"}))
    with pytest.raises(ConfigError, match="distillation section but no teacher"):
        GlueRecipe.from_yaml(_write(tmp_path, _recipe(tmp_path, "m", teacher=None)))


def test_missing_data_dir_is_a_clear_error(tmp_path, tiny_sst2_classifier):
    recipe = GlueRecipe.from_yaml(
        _write(tmp_path, _recipe(tmp_path, tiny_sst2_classifier, data_dir=str(tmp_path / "none")))
    )
    with pytest.raises(MissingDataError):
        train_glue(recipe)
