import json

import pytest
import torch

from hfprune import PruningConfig, PruningReport, compare_reports, prune_, report

from .models import MLP, bert_batch


def test_counts_on_a_toy_model_by_hand():
    model = MLP()
    with torch.no_grad():
        model.fc1.weight[:8].zero_()  # 8 rows x 16 = 128 zeros
    result = report(model, torch.randn(3, 16), target_modules=["fc1", "fc2"], measure_latency=False)
    assert result.total_params == (16 * 64 + 64) + (64 * 32 + 32) + (32 * 4 + 4)
    assert result.prunable_params == 16 * 64 + 64 * 32
    assert result.prunable_nonzeros == result.prunable_params - 128
    assert result.sparsity == pytest.approx(128 / (16 * 64 + 64 * 32))
    assert [layer.name for layer in result.layers] == ["fc1", "fc2"]
    assert result.layers[0].sparsity == pytest.approx(0.125)
    # Linear FLOPs: 2 * batch * in * out per layer.
    assert result.flops == 2 * 3 * (16 * 64 + 64 * 32 + 32 * 4)
    assert result.input_shape == [3, 16]


def test_bert_report_uses_default_targets_and_counts_masked_weights(bert):
    dense = report(bert, bert_batch(labels=False), latency_runs=2)
    prune_(bert, PruningConfig(sparsity=0.5))
    pruned = report(bert, bert_batch(labels=False), latency_runs=2)
    assert len(pruned.layers) == 12
    assert dense.sparsity == pytest.approx(0.0, abs=1e-4)
    assert pruned.sparsity == pytest.approx(0.5, abs=1e-3)
    assert pruned.total_params == dense.total_params
    assert pruned.total_nonzeros == pytest.approx(dense.total_nonzeros - dense.prunable_params / 2, abs=20)
    # Unstructured zeros do not change dense FLOPs.
    assert pruned.flops == dense.flops > 0
    assert pruned.latency_ms > 0 and pruned.latency_runs == 2


def test_flops_counted_with_eager_attention_and_mode_restored(bert):
    bert.set_attn_implementation("sdpa")
    result = report(bert, bert_batch(labels=False), measure_latency=False)
    bert.set_attn_implementation("eager")
    eager = report(bert, bert_batch(labels=False), measure_latency=False)
    assert result.flops == eager.flops
    bert.set_attn_implementation("sdpa")
    assert bert.config._attn_implementation == "sdpa"


def test_report_round_trips_and_renders(tmp_path, bert):
    result = report(bert, bert_batch(labels=False), latency_runs=2)
    path = result.save(tmp_path / "report.json")
    data = json.loads(path.read_text())
    assert data["sparsity"] == pytest.approx(result.sparsity)
    assert data["layers"][0]["name"] == result.layers[0].name
    loaded = PruningReport.load(path)
    assert loaded == result
    markdown = result.to_markdown()
    assert "| sparsity of prunable weights |" in markdown
    assert result.layers[0].name in markdown
    table = compare_reports(result, result)
    assert "| GFLOPs (dense) |" in table and "1.000x" in table


def test_report_on_masked_model_during_training(bert):
    from hfprune import Pruner

    pruner = Pruner(bert, PruningConfig(sparsity=0.25))
    pruner.apply_sparsity_(0.25)
    result = report(bert, None, measure_latency=False)
    assert result.sparsity == pytest.approx(0.25, abs=1e-3)
    assert result.total_params == sum(p.numel() for p in bert.parameters())
