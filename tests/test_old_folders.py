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
from hfprune.channels import load_channel_pruned


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
    model = load_channel_pruned(FIXTURES / "resnet20_channels")
    with torch.no_grad():
        torch.testing.assert_close(model(saved["images"]), saved["logits"], rtol=1e-4, atol=1e-5)
