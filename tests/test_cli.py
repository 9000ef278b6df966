import json
import subprocess
import sys

import pytest

from hfprune.cli import main

from .conftest import SHARED_DATA


GLUE_DIR = SHARED_DATA / "glue"


def test_cli_prunes_real_minilm_end_to_end(tmp_path, capsys, minilm_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("pruning:\n  importance: magnitude\n  sparsity: 0.3\n  scope: local\n")
    out = tmp_path / "minilm"
    # --sparsity overrides the recipe's 0.3.
    code = main(
        [
            "prune",
            "--config",
            str(recipe),
            "--sparsity",
            "0.6",
            "--scope",
            "global",
            "--output",
            str(out),
            "--latency-runs",
            "2",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| sparsity of prunable weights | 0.00% | 60.00% |" in printed
    data = json.loads((out / "report.json").read_text())
    assert data["sparsity"] == pytest.approx(0.6, abs=1e-6)
    assert data["prunable_params"] == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    assert data["flops"] > 1e9 and data["latency_ms"] > 0
    config = json.loads((out / "pruning_config.json").read_text())
    assert config["scope"] == "global" and config["sparsity"] == 0.6
    assert (out / "tokenizer.json").is_file() and (out / "README.md").is_file()

    assert main(["report", "--model", str(out), "--no-latency", "--output", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "| sparsity of prunable weights | 60.00% |" in printed
    assert "encoder.layer.5.output.dense" in printed
    assert json.loads((tmp_path / "r.json").read_text())["prunable_nonzeros"] == data["prunable_nonzeros"]


def test_cli_bad_input_exits_with_clear_message(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("pruning:\n  sparsity: 0.5\n  sparsty: 0.2\n")
    assert main(["prune", "--config", str(recipe), "--output", str(tmp_path / "o")]) == 2
    assert "unknown pruning keys ['sparsty']" in capsys.readouterr().err
    assert main(["prune", "--sparsity", "1.5", "--output", str(tmp_path / "o")]) == 2
    assert "sparsity must be in [0, 1)" in capsys.readouterr().err
    assert main(["prune", "--method", "randon", "--output", str(tmp_path / "o")]) == 2
    assert "Did you mean" in capsys.readouterr().err
    assert main(["prune", "--method", "taylor", "--output", str(tmp_path / "o")]) == 2
    assert "needs labelled calibration data: pass --task" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "hfprune.cli", "prune", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--model", "--config", "--output", "--method", "--sparsity", "--scope"):
        assert flag in result.stdout


def test_cli_retraining_free_structured_prune_and_reload(tmp_path, capsys, tiny_sst2_classifier):
    out = tmp_path / "pruned"
    code = main(
        [
            "prune",
            "--model",
            str(tiny_sst2_classifier),
            "--method",
            "fisher",
            "--structure",
            "heads_and_neurons",
            "--target-flops",
            "0.5",
            "--task",
            "sst2",
            "--data-dir",
            str(GLUE_DIR),
            "--num-calibration",
            "64",
            "--seq-len",
            "32",
            "--output",
            str(out),
            "--latency-runs",
            "2",
            "--eval",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| GFLOPs (dense) |" in printed
    # The card: before/after dev accuracy as model-index eval results, kept structure, how to load.
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    results = {(r.metric_type, r.metric_name): r for r in card.data.eval_results}
    assert results[("accuracy", None)].dataset_config == "sst2"
    assert 0 <= results[("accuracy", "accuracy of the base model before pruning")].metric_value <= 1
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict()  # metadata round-trips
    assert "| heads | layer 0 |" in card.text and "kept_structure.png" in card.text
    assert (out / "kept_structure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "trust_remote_code=True" in card.text and "hfprune.load_pruned" in card.text
    assert "latency ms (median)" in card.text
    data = json.loads((out / "report.json").read_text())
    plan = json.loads((out / "pruning_plan.json").read_text())
    assert plan["extra"]["encoder_flops_fraction"] <= 0.5
    # Fewer parameters and FLOPs than the dense model: the layers really shrank.
    from hfprune import report
    from hfprune.hub import load_model

    dense = report(load_model(tiny_sst2_classifier), None, measure_latency=False)
    assert data["total_params"] < dense.total_params
    assert data["flops"] < 0.65 * dense.flops  # encoder at <= 50%; embeddings cost no FLOPs here
    from hfprune import load_pruned

    model = load_pruned(out)
    assert sum(p.numel() for p in model.parameters()) == data["total_params"]
    assert main(["report", "--model", str(out), "--no-latency", "--summary"]) == 0


def test_cli_eval_glue_task(capsys, tiny_sst2_classifier):
    code = main(
        [
            "eval",
            "--model",
            str(tiny_sst2_classifier),
            "--task",
            "sst2",
            "--data-dir",
            str(GLUE_DIR),
            "--batch-size",
            "256",
            "--seq-len",
            "32",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"validation"}
    assert 0.3 < result["validation"]["accuracy"] < 0.7  # an untrained classifier is near chance on SST-2
