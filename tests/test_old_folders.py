"""Folders written by hfprune before the one-engine change still load, with the same outputs.

`tests/fixtures/written_before_one_engine` was written by the code at commit fadb823 (the last release before
adapters described units as slices): a compacted tiny BERT saved with `save_pruned` (pruning_plan.json), the same
model saved by transformers' own ``save_pretrained`` (the plan only in ``config.hfprune_plan``), its remote-code
export (which carries the old generated module), and a channel-pruned CIFAR ResNet-20 (a channel plan).
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hfprune import load_pruned


FIXTURES = Path(__file__).parent / "fixtures" / "written_before_one_engine"


def _bert_inputs():
    saved = load_file(str(FIXTURES / "bert_inputs_and_logits.safetensors"))
    return {"input_ids": saved["input_ids"], "attention_mask": saved["attention_mask"]}, saved["logits"]


@pytest.mark.parametrize("folder", ["bert_save_pruned", "bert_transformers_save_pretrained"])
def test_compacted_bert_folders_load(folder):
    inputs, expected = _bert_inputs()
    model = load_pruned(FIXTURES / folder)
    assert [len(h) for h in model.config.hfprune_plan["heads"]] == [2, 0]
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected)


def test_old_remote_code_folder_still_loads_without_hfprune(tmp_path):
    inputs, expected = _bert_inputs()
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import json, sys, torch
        sys.modules["hfprune"] = None
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained({str(FIXTURES / "bert_remote_code")!r},
                                                                   trust_remote_code=True).eval()
        with torch.no_grad():
            print(json.dumps(model(**torch.load({str(tmp_path / "inputs.pt")!r})).logits.tolist()))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    torch.testing.assert_close(torch.tensor(json.loads(result.stdout.strip().splitlines()[-1])), expected)
    # hfprune reads the same folder (plan file + weights) too.
    with torch.no_grad():
        torch.testing.assert_close(load_pruned(FIXTURES / "bert_remote_code")(**inputs).logits, expected)


def test_channel_pruned_folder_loads():
    saved = load_file(str(FIXTURES / "resnet20_inputs_and_logits.safetensors"))
    model = load_pruned(FIXTURES / "resnet20_channels")  # the one loader reads channel plans too
    with torch.no_grad():
        torch.testing.assert_close(model(saved["images"]), saved["logits"], rtol=1e-4, atol=1e-5)


def test_one_compact_and_one_saver_for_channel_plans(tmp_path):
    """compact_ applies a channel plan (tracing with example inputs), save_pruned writes it, load_pruned reads it."""
    import copy

    import timm

    import hfprune.models  # noqa: F401  (registers the CIFAR ResNets)
    from hfprune import PlanMismatchError, PruningConfig, compact_
    from hfprune.channels import plan_channels
    from hfprune.hub import save_pruned

    torch.manual_seed(0)
    model = timm.create_model("cifar_resnet20", num_classes=10).eval()
    images = torch.randn(2, 3, 32, 32)
    config = PruningConfig(structure="channels", target_flops=0.6)
    plan = plan_channels(model, config, images)
    with pytest.raises(PlanMismatchError, match="pass example_inputs"):
        compact_(copy.deepcopy(model), plan)
    compact_(model, plan, example_inputs=images)
    save_pruned(model, tmp_path / "cnn", pruning_config=config, plan=plan)
    with torch.no_grad():
        torch.testing.assert_close(load_pruned(tmp_path / "cnn")(images), model(images))
