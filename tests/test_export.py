import subprocess
import sys
import textwrap

import pytest
import torch

from hfprune import ConfigError, PruningPlan, compact_
from hfprune.export import export_plain, export_remote_code

from .models import bert_batch, tiny_bert, tiny_encoder


def _inputs():
    return bert_batch(labels=False)


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_remote_code_folder_loads_without_hfprune(tmp_path, model_type):
    model = tiny_bert() if model_type == "bert" else tiny_encoder(model_type)
    plan = PruningPlan.dense(model)
    plan.heads = [[0, 3], []]
    plan.neurons = [[1, 2, 3], list(range(20))]
    plan = PruningPlan.from_dict(plan.to_dict())
    compact_(model, plan)
    expected = model(**_inputs()).logits
    export_remote_code(model, plan, tmp_path / "export")
    torch.save(_inputs(), tmp_path / "inputs.pt")
    torch.save(expected, tmp_path / "expected.pt")
    # A fresh interpreter in which importing hfprune fails: only transformers and the folder's own code are used.
    script = textwrap.dedent(f"""
        import sys, torch
        sys.modules["hfprune"] = None
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "export")!r},
                                                                   trust_remote_code=True).eval()
        out = model(**torch.load({str(tmp_path / "inputs.pt")!r})).logits
        torch.testing.assert_close(out, torch.load({str(tmp_path / "expected.pt")!r}))
        print("ok", type(model).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"ok Hfpruned{type(model).__name__}" in result.stdout


def test_plain_export_when_widths_are_uniform(tmp_path):
    from transformers import BertForSequenceClassification

    model = tiny_bert()
    plan = PruningPlan.dense(model)
    plan.neurons = [[0, 5, 9, 20], [1, 2, 3, 36]]
    plan = PruningPlan.from_dict(plan.to_dict())
    compact_(model, plan)
    export_plain(model, plan, tmp_path / "plain")
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path / "plain").eval()
    assert reloaded.config.intermediate_size == 4
    torch.testing.assert_close(reloaded(**_inputs()).logits, model(**_inputs()).logits)
    assert model.config.intermediate_size == 37  # the live model's config is untouched
    assert model.config.hfprune_plan is not None
    # An ordinary checkpoint: hfprune's own loader and CLI read it as one too (no stale plan in its config).
    from hfprune import load_pruned

    torch.testing.assert_close(load_pruned(tmp_path / "plain")(**_inputs()).logits, model(**_inputs()).logits)


def test_plain_export_refuses_uneven_plans(tmp_path):
    model = tiny_bert()
    plan = PruningPlan.dense(model)
    plan.heads = [[0, 1], [0, 1, 2, 3]]
    plan = PruningPlan.from_dict(plan.to_dict())
    compact_(model, plan)
    with pytest.raises(ConfigError, match="Use export_remote_code"):
        export_plain(model, plan, tmp_path / "plain")
    assert not (tmp_path / "plain").exists()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_remote_code_export_keeps_half_precision(tmp_path, dtype):
    from transformers import AutoModelForSequenceClassification

    model = tiny_bert().to(dtype).eval()
    plan = PruningPlan.dense(model)
    plan.heads = [[0, 3], [1]]
    plan.neurons = [[1, 2, 3], list(range(20))]
    compact_(model, plan)
    expected = model(**_inputs()).logits
    export_remote_code(model, plan, tmp_path / "export")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export", trust_remote_code=True).eval()
    assert {p.dtype for p in reloaded.parameters()} == {dtype}
    torch.testing.assert_close(reloaded(**_inputs()).logits, expected)
