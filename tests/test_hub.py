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


def test_model_card_with_evaluation_and_structure(bert, tmp_path):
    from hfprune.hub import CardEvaluation

    config = PruningConfig(sparsity=0.5)
    Pruner(bert, config).apply_sparsity_(0.5)
    evaluation = CardEvaluation(
        task_type="text-classification", dataset_type="nyu-mll/glue", dataset_name="GLUE SST2",
        dataset_config="sst2", dataset_split="validation", metrics={"accuracy": 0.81}, base_metrics={"accuracy": 0.9},
    )  # fmt: skip
    out = save_pruned(bert, tmp_path / "sst2-50", pruning_config=config, report=report(bert, measure_latency=False),
                      evaluation=evaluation, method_notes=["Fine-pruned for 3 steps"])  # fmt: skip
    card = ModelCard.load(out / "README.md")
    assert card.data.model_name == "sst2-50"
    values = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert values == {None: 0.81, "accuracy of the base model before pruning": 0.9}
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict()
    assert "| accuracy | 0.9000 | 0.8100 | -0.0900 |" in card.text
    assert "- Fine-pruned for 3 steps" in card.text
    # Unstructured: nonzeros per layer, and plain transformers loads it.
    assert "| nonzero weights | bert.encoder.layer.0.attention.self.query |" in card.text
    assert "AutoModelForSequenceClassification.from_pretrained" in card.text and "trust_remote_code" not in card.text
    assert (out / "kept_structure.png").is_file()


def test_interrupted_save_leaves_no_folder(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as staging:
        (staging / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    with atomic_directory(tmp_path / "out") as staging:
        (staging / "old.txt").write_text("x")
    with pytest.raises(HfPruneError, match="already holds an hfprune model.*--overwrite"), atomic_directory(
        tmp_path / "out"
    ):
        pass
    with atomic_directory(tmp_path / "out", overwrite=True) as staging:
        (staging / "new.txt").write_text("y")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hfprune_manifest.json", "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(HfPruneError, match="Could not load a model config"):
        load_model(tmp_path / "nope")


def test_a_compacted_model_pushed_with_transformers_push_to_hub_loads_from_its_hub_id(tmp_path, monkeypatch):
    # The README's promise, with the Hub replaced by a folder: push_to_hub saves with save_pretrained (converting
    # ViT's keys to their checkpoint names) and uploads that folder; load_pruned("user/name") downloads and rebuilds.
    import shutil
    import types

    import huggingface_hub
    import transformers.utils.hub

    from hfprune import PruningPlan, compact_, load_pruned

    from .models import family_batch, family_model

    hub = tmp_path / "hub" / "user" / "vit-pruned"

    def upload(self, folder, repo_id, **kwargs):
        shutil.copytree(folder, hub)

    api = types.SimpleNamespace(create_repo=lambda repo_id, **kwargs: types.SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(transformers.utils.hub, "hf_api", lambda: api)
    monkeypatch.setattr(transformers.utils.hub, "create_and_tag_model_card", lambda *a, **k: ModelCard(""))
    monkeypatch.setattr(transformers.utils.hub.PushToHubMixin, "_upload_modified_files", upload)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **_: str(tmp_path / "hub" / repo_id))

    model = family_model("vit")
    plan = PruningPlan.dense(model)
    plan.heads = [[1, 2], [3]]
    plan.neurons = [[0, 5, 9], list(range(20))]
    compact_(model, PruningPlan.from_dict(plan.to_dict()))
    model.push_to_hub("user/vit-pruned")
    reloaded = load_pruned("user/vit-pruned")
    batch = family_batch(model, labels=False)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model.eval()(**batch).logits)
