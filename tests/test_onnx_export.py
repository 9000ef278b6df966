"""ONNX export of pruned models: uneven compacted transformers and channel-pruned CNNs give PyTorch's outputs in
onnxruntime at other batch sizes and sequence lengths than the export's."""

import json

import pytest
import torch

from hfprune import ConfigError, PruningConfig, compact_, prune_
from hfprune.masks import set_mask_
from hfprune.onnx_export import export_onnx, onnx_session

from .models import bert_batch, tiny_bert


def test_an_uneven_compacted_encoder_exports_with_dynamic_batch_and_sequence(tmp_path):
    torch.manual_seed(0)
    model = tiny_bert().eval()
    prune_(model, PruningConfig(structure="heads_and_neurons", sparsity=0.5, scope="global"))
    plan = compact_(model)
    assert len({len(heads) for heads in plan.heads}) > 1 or len({len(n) for n in plan.neurons}) > 1  # uneven
    record = export_onnx(model, tmp_path / "onnx")
    assert record["inputs"][:2] == ["input_ids", "attention_mask"]
    assert max(record["max_abs_difference_vs_pytorch"].values()) < 1e-4
    assert json.loads((tmp_path / "onnx" / "onnx_export.json").read_text()) == record
    batch = bert_batch(batch_size=5, seq_len=23, labels=False)
    batch.setdefault("token_type_ids", torch.zeros_like(batch["input_ids"]))
    feeds = {name: batch[name].numpy() for name in record["inputs"]}
    got = onnx_session(tmp_path / "onnx").run(["logits"], feeds)[0]
    with torch.inference_mode():
        expected = model(**{name: batch[name] for name in record["inputs"]}).logits.numpy()
    assert abs(got - expected).max() < 1e-4


@pytest.mark.slow
def test_a_channel_pruned_cnn_exports_through_the_cli(tmp_path):
    import timm

    import hfprune.models  # noqa: F401 - registers cifar_resnet20
    from hfprune.channels import apply_channel_plan_, plan_channels
    from hfprune.cli import main
    from hfprune.hub import save_channel_pruned

    torch.manual_seed(0)
    model = timm.create_model("cifar_resnet20", num_classes=10).eval()
    example = torch.zeros(1, 3, 32, 32)
    config = PruningConfig(importance="l1", structure="channels", target_flops=0.6)
    plan = plan_channels(model, config, example)
    apply_channel_plan_(model, plan, example)
    save_channel_pruned(model, tmp_path / "pruned", plan, architecture="cifar_resnet20", num_classes=10,
                        pruning_config=config)  # fmt: skip
    assert main(["export", "--model", str(tmp_path / "pruned"), "--output", str(tmp_path / "onnx"), "--format",
                 "onnx", "--image-size", "32"]) == 0  # fmt: skip
    images = torch.randn(4, 3, 32, 32)
    got = onnx_session(tmp_path / "onnx").run(["logits"], {"pixel_values": images.numpy()})[0]
    with torch.inference_mode():
        assert abs(got - model(images).numpy()).max() < 1e-4


def test_a_masked_model_is_refused(tmp_path):
    model = tiny_bert()
    layer = model.bert.encoder.layer[0].intermediate.dense
    set_mask_(layer, torch.ones_like(layer.weight, dtype=torch.bool))
    with pytest.raises(ConfigError, match="still carries a mask"):
        export_onnx(model, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
