
import pytest
import torch

from hfprune import ConfigError, PruningPlan, compact_
from hfprune.export import export_plain, export_remote_code

from .models import bert_batch, tiny_bert


def _inputs():
    return bert_batch(labels=False)


# The remote-code folder of every family loading without hfprune: tests/test_families.py.


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
