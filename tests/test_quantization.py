"""Dynamic int8 after structured pruning: close to float, saved as float weights plus a config, quantized again on
load to the same int8 model; what cannot be quantized or saved is refused."""

import pytest
import torch

from hfprune import ConfigError, PruningConfig, compact_, load_pruned, prune_
from hfprune.hub import save_pruned
from hfprune.masks import set_mask_
from hfprune.quantization import QuantizationConfig, is_quantized, quantize_dynamic_int8

from .models import bert_batch, tiny_bert


def compacted():
    torch.manual_seed(0)
    model = tiny_bert().eval()
    config = PruningConfig(structure="heads_and_neurons", sparsity=0.5)
    prune_(model, config)
    plan = compact_(model)
    return model, config, plan


def test_int8_of_a_compacted_model_stays_close_and_reloads_identically(tmp_path):
    model, config, plan = compacted()
    batch = bert_batch(labels=False)
    with torch.no_grad():
        expected = model(**batch).logits
        int8 = quantize_dynamic_int8(model)
        logits = int8(**batch).logits
    assert is_quantized(int8) and not is_quantized(model)  # the float model is left as it was
    assert type(int8.bert.encoder.layer[0].intermediate.dense).__module__.startswith("torch.ao.nn.quantized")
    torch.testing.assert_close(logits, expected, rtol=0.05, atol=0.05)

    with pytest.raises(ConfigError, match="save the float model"):
        save_pruned(int8, tmp_path / "bad", pruning_config=config, plan=plan)
    out = save_pruned(model, tmp_path / "int8", pruning_config=config, plan=plan,
                      extra_configs=(QuantizationConfig(),))  # fmt: skip
    assert not any(path.suffix in (".bin", ".pt", ".pkl") for path in out.iterdir())
    reloaded = load_pruned(out)
    assert is_quantized(reloaded)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, logits, rtol=0, atol=0)


def test_what_cannot_be_quantized_is_refused(tmp_path):
    model, _, _ = compacted()
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_dynamic_int8(quantize_dynamic_int8(model))
    with pytest.raises(ConfigError, match="float32"):
        quantize_dynamic_int8(tiny_bert().to(torch.bfloat16))
    masked = tiny_bert()
    layer = masked.bert.encoder.layer[0].intermediate.dense
    set_mask_(layer, torch.ones_like(layer.weight, dtype=torch.bool))
    with pytest.raises(ConfigError, match="still carries a mask"):
        quantize_dynamic_int8(masked)
    with pytest.raises(ConfigError, match="dynamic_int8"):
        QuantizationConfig(method="int4")
