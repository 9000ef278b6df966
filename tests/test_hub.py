import pytest
import torch
from huggingface_hub import ModelCard

from hfprune import HfPruneError, Pruner, PruningConfig, report
from hfprune.hub import atomic_directory, load_model, load_pruning_config, save_pruned

from .models import bert_batch


def test_save_pruned_mid_training_writes_plain_weights(bert, tmp_path):
    config = PruningConfig(sparsity=0.5)
    pruner = Pruner(bert, config)
    pruner.apply_sparsity_(0.5)
    out = save_pruned(bert, tmp_path / "out", pruning_config=config, report=report(bert, measure_latency=False))
    assert {"config.json", "model.safetensors", "pruning_config.json", "report.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    from safetensors.torch import load_file

    keys = load_file(out / "model.safetensors")
    assert not any("parametrizations" in key for key in keys)
    # The live model keeps training with its masks.
    assert any("parametrizations" in key for key in bert.state_dict())
    reloaded = load_model(out).eval()
    batch = bert_batch(labels=False)
    torch.testing.assert_close(reloaded(**batch).logits, bert(**batch).logits)
    assert load_pruning_config(out) == config


def test_model_card_metadata_round_trips(bert, tmp_path):
    config = PruningConfig(sparsity=0.3)
    out = save_pruned(bert, tmp_path / "out", pruning_config=config, base_model="org/base-model")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "org/base-model"
    assert "hfprune" in card.data.tags
    assert "`magnitude`" in card.text


def test_interrupted_save_leaves_no_folder(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as staging:
        (staging / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(HfPruneError, match="exists and is not empty.*--overwrite"), atomic_directory(tmp_path / "out"):
        pass
    with atomic_directory(tmp_path / "out", overwrite=True) as staging:
        (staging / "new.txt").write_text("y")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(HfPruneError, match="Could not load a model config"):
        load_model(tmp_path / "nope")
