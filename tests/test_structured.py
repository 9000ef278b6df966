import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hfprune import (
    ConfigError,
    HfPruneError,
    PlanMismatchError,
    PruningConfig,
    PruningPlan,
    UnsupportedArchitectureError,
    compact_,
    load_pruned,
    plan_structured,
    prune_,
)
from hfprune.hub import save_pruned
from hfprune.structured import apply_plan_masks_, encoder_dims, plan_flops
from hfprune.structures import HeadsAndNeurons, Neurons

from .models import MLP, bert_batch, tiny_bert, tiny_encoder


def _inputs():
    return bert_batch(labels=False)


def _uneven_plan(model) -> PruningPlan:
    plan = PruningPlan.dense(model)
    plan.heads = [[], [1, 3]]  # layer 0 loses every head: its attention is skipped
    plan.neurons = [[0, 4, 7, 30], []]  # layer 1 loses every neuron
    return PruningPlan.from_dict(plan.to_dict())


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_compacted_equals_masked_even_with_empty_sublayers(attn):
    model = tiny_bert()
    model.set_attn_implementation(attn)
    plan = _uneven_plan(model)
    masked = copy.deepcopy(model)
    apply_plan_masks_(masked, plan)
    compact_(model, plan)
    torch.testing.assert_close(model(**_inputs()).logits, masked(**_inputs()).logits)
    layer0, layer1 = model.bert.encoder.layer
    assert layer0.attention.output.dense.in_features == 0
    assert layer1.attention.self.num_attention_heads == 2 and layer1.attention.self.all_head_size == 16
    assert layer1.attention.self.query.out_features == 16 and layer1.intermediate.dense.out_features == 0
    assert layer0.intermediate.dense.out_features == 4 and layer0.output.dense.in_features == 4


@pytest.mark.parametrize("importance", ["magnitude", "l2", "random", "taylor", "fisher"])
def test_local_head_and_neuron_sparsity_per_layer(importance):
    model = tiny_bert()
    config = PruningConfig(importance=importance, structure="heads_and_neurons", sparsity=0.5)
    plan = plan_structured(model, config, [bert_batch(), bert_batch(seq_len=7)])
    assert [len(h) for h in plan.heads] == [2, 2]
    assert [len(n) for n in plan.neurons] == [19, 19]  # 37 - round(18.5), and Python rounds half to even: 18
    reference = copy.deepcopy(model)
    apply_plan_masks_(reference, plan)
    compact_(model, plan)
    torch.testing.assert_close(model(**_inputs()).logits, reference(**_inputs()).logits)


def test_magnitude_keeps_the_largest_heads():
    model = tiny_bert()
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.output.dense.weight[:, 8:16].mul_(20)  # head 1
    plan = plan_structured(model, PruningConfig(structure="heads", sparsity=0.75))
    assert plan.heads[0] == [1]
    assert plan.neurons == PruningPlan.dense(model).neurons


def test_global_scope_makes_layers_uneven():
    model = tiny_bert()
    with torch.no_grad():
        model.bert.encoder.layer[1].intermediate.dense.weight.mul_(10)
    plan = plan_structured(model, PruningConfig(structure="neurons", sparsity=0.5, scope="global"))
    assert len(plan.neurons[1]) > len(plan.neurons[0])
    assert sum(map(len, plan.neurons)) == 74 - 37


def test_round_to_multiple():
    model = tiny_bert(intermediate_size=64)
    plan = plan_structured(model, PruningConfig(structure=Neurons(round_to=8), sparsity=0.4, scope="global"))
    assert all(len(layer) % 8 == 0 for layer in plan.neurons)


def test_prune_zeroes_units_and_compact_reads_them_back():
    model = tiny_bert()
    config = PruningConfig(structure="heads_and_neurons", sparsity=0.5)
    expected = plan_structured(model, config)
    prune_(model, config)
    assert not any("parametrizations" in key for key in model.state_dict())
    before = model(**_inputs()).logits
    plan = compact_(model)
    assert plan.heads == expected.heads and plan.neurons == expected.neurons
    torch.testing.assert_close(model(**_inputs()).logits, before)


def test_fisher_flops_target_on_real_minilm(minilm_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()
    model.set_attn_implementation("eager")  # the FLOP counter does not see the CPU sdpa kernel
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    sentences = ["a gripping, funny film", "dull and far too long", "the cast is wonderful", "i wanted to leave"] * 4
    batch = dict(tokenizer(sentences, padding="max_length", max_length=32, return_tensors="pt"))
    batches = [{**batch, "labels": torch.tensor([1, 0, 1, 0] * 4)}]
    config = PruningConfig(importance="fisher", structure=HeadsAndNeurons(), target_flops=0.5, flops_seq_len=32)
    plan = plan_structured(model, config, batches)
    dims = encoder_dims(model)
    assert plan_flops(plan, dims, 32) <= 0.5 * dims.total_flops(32)
    assert plan_flops(plan, dims, 32) >= 0.5 * dims.total_flops(32) - dims.head_flops(32)
    # Heads and neurons compete for the budget, so layers end up uneven.
    assert len({len(h) for h in plan.heads} | {-len(n) for n in plan.neurons}) > 2

    inputs = {k: v for k, v in batch.items()}
    dense = copy.deepcopy(model)
    compact_(model, plan)

    def flops(m):
        with FlopCounterMode(display=False) as counter:
            m(**inputs)
        return counter.get_total_flops()

    # Measured FLOPs of the whole model follow the encoder fraction (embeddings and head are tiny).
    assert flops(model) / flops(dense) == pytest.approx(0.5, abs=0.02)


def test_save_and_load_pruned_model(tmp_path):
    model = tiny_bert()
    plan = _uneven_plan(model)
    compact_(model, plan)
    out = save_pruned(model, tmp_path / "out", pruning_config=PruningConfig(structure="heads"), plan=plan)
    assert (out / "pruning_plan.json").is_file()
    reloaded = load_pruned(out)
    torch.testing.assert_close(reloaded(**_inputs()).logits, model(**_inputs()).logits)
    # transformers alone cannot rebuild the shrunk layers.
    from transformers import BertForSequenceClassification

    with pytest.raises(Exception):  # noqa: B017 - transformers raises a size-mismatch RuntimeError/ValueError
        BertForSequenceClassification.from_pretrained(out)


def test_plan_travels_in_config_through_plain_save_pretrained(tmp_path):
    """transformers' own save_pretrained (what push_to_hub uploads) keeps the plan in config.json."""
    model = tiny_bert()
    plan = _uneven_plan(model)
    compact_(model, plan)
    model.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / "pruning_plan.json").exists()
    reloaded = load_pruned(tmp_path / "plain")
    torch.testing.assert_close(reloaded(**_inputs()).logits, model(**_inputs()).logits)
    assert PruningPlan.from_config(reloaded.config).heads == plan.heads
    with pytest.raises(HfPruneError, match="neither a local folder nor a downloadable Hub repository"):
        load_pruned(tmp_path / "missing")


def test_folder_with_plan_file_only_still_loads(tmp_path):
    """Folders written before the plan moved into config.json have only pruning_plan.json."""
    import json

    model = tiny_bert()
    plan = _uneven_plan(model)
    compact_(model, plan)
    out = save_pruned(model, tmp_path / "out", pruning_config=PruningConfig(structure="heads"), plan=plan)
    config = json.loads((out / "config.json").read_text())
    del config["hfprune_plan"]
    (out / "config.json").write_text(json.dumps(config))
    torch.testing.assert_close(load_pruned(out)(**_inputs()).logits, model(**_inputs()).logits)


def test_compacting_twice_is_refused(tmp_path):
    model = tiny_bert()
    compact_(model, PruningPlan.from_dict({**PruningPlan.dense(model).to_dict(), "neurons": [[0, 1], [2, 3]]}))
    with pytest.raises(PlanMismatchError, match="already compacted"):
        compact_(model, PruningPlan.dense(tiny_bert()))


def test_plan_that_does_not_fit_is_rejected():
    model = tiny_bert()
    plan = _uneven_plan(model)
    with pytest.raises(PlanMismatchError, match="3 layers"):
        compact_(tiny_bert(num_hidden_layers=3), plan)
    compact_(model, plan)
    with pytest.raises(PlanMismatchError, match="only to the unpruned base model"):
        compact_(model, plan)
    data = PruningPlan.dense(tiny_bert()).to_dict()
    data["heads"][0] = [0, 9]
    with pytest.raises(PlanMismatchError, match=r"in \[0, 4\)"):
        PruningPlan.from_dict(data)


def test_bad_structured_input():
    with pytest.raises(ConfigError, match="every attention head of every layer"):
        plan_structured(tiny_bert(), PruningConfig(structure="heads", sparsity=0.9))
    for value in (0, 1.5):
        with pytest.raises(ConfigError, match=r"target_flops .* must be in \(0, 1\]"):
            PruningConfig(structure="heads", target_flops=value)
    with pytest.raises(ConfigError, match="needs a structured kind"):
        PruningConfig(target_flops=0.5)
    with pytest.raises(UnsupportedArchitectureError):
        plan_structured(MLP(), PruningConfig(structure="heads"))
    with pytest.raises(ConfigError, match="'fisher' works with structure 'heads', 'heads_and_neurons', 'neurons'"):
        prune_(tiny_bert(), PruningConfig(importance="fisher"), [bert_batch()])


def test_least_squares_reconstruction_moves_outputs_toward_dense():
    from hfprune.retraining_free import reconstruct_

    torch.manual_seed(0)
    model = tiny_bert()
    dense = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(3)
    batches = [{"input_ids": torch.randint(0, 100, (16, 20), generator=generator),
                "attention_mask": torch.ones(16, 20, dtype=torch.long),
                "labels": torch.randint(0, 2, (16,), generator=generator)} for _ in range(3)]  # fmt: skip
    plan = plan_structured(model, PruningConfig(structure="heads_and_neurons", sparsity=0.5), batches)
    compact_(model, plan)

    def hidden_error():
        with torch.no_grad():
            return sum(float((model.bert(**{k: v for k, v in b.items() if k != "labels"}).last_hidden_state
                              - dense.bert(**{k: v for k, v in b.items() if k != "labels"}).last_hidden_state)
                             .pow(2).mean()) for b in batches)  # fmt: skip

    before = hidden_error()
    errors = reconstruct_(model, dense, batches)
    assert len(errors["before"]) == 4
    assert all(a <= b + 1e-9 for a, b in zip(errors["after"], errors["before"], strict=True))
    assert sum(errors["after"]) < sum(errors["before"])
    assert hidden_error() < before


def test_mask_rearrangement_uses_interactions_within_a_layer():
    from hfprune.structured import rearrange_

    # Units 0 and 1 have the largest diagonal Fisher, but they cancel: removing both costs 1 + 1 - 2*0.9 = 0.2,
    # far less than removing unit 2 with either of them (1.95). Keeping one unit, the diagonal keeps unit 0;
    # the full block says keep unit 2.
    fisher = torch.tensor([[1.0, -0.9, 0.0], [-0.9, 1.0, 0.0], [0.0, 0.0, 0.95]], dtype=torch.float64)
    plan = PruningPlan(model_type="bert", num_heads=1, intermediate_size=3, heads=[[0]], neurons=[[0]])
    assert rearrange_(plan, {("neurons", 0): fisher}) == 1
    assert plan.neurons == [[2]]


def test_fisher_plan_rearranges_but_keeps_per_layer_counts():
    model = tiny_bert()
    batches = [bert_batch(batch_size=8, seq_len=10)]
    config = PruningConfig(importance="fisher", structure="heads_and_neurons", target_flops=0.5)
    plan = plan_structured(model, config, batches)
    plain = plan_structured(
        model,
        PruningConfig(
            importance={"type": "fisher", "rearrange": False}, structure="heads_and_neurons", target_flops=0.5
        ),
        batches,
    )
    assert "rearranged_swaps" in plan.extra and "rearranged_swaps" not in plain.extra
    assert [len(h) for h in plan.heads] == [len(h) for h in plain.heads]
    assert [len(n) for n in plan.neurons] == [len(n) for n in plain.neurons]


ARCHITECTURES = ["bert", "roberta", "xlm-roberta", "electra", "distilbert"]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_family_compacts_saves_and_reloads(tmp_path, model_type, attn):
    model = tiny_encoder(model_type)
    model.set_attn_implementation(attn)
    inputs = bert_batch(labels=False, seq_len=10)
    inputs["input_ids"] = inputs["input_ids"].clamp(min=3)  # no padding ids in position-id-from-input models
    config = PruningConfig(importance="taylor", structure="heads_and_neurons", sparsity=0.5)
    plan = plan_structured(model, config, [{**inputs, "labels": torch.tensor([0, 1, 1, 0])}])
    plan.heads[0] = []  # a layer without attention (its output projection adds only its bias)
    plan = PruningPlan.from_dict(plan.to_dict())
    masked = copy.deepcopy(model)
    apply_plan_masks_(masked, plan)
    compact_(model, plan)
    torch.testing.assert_close(model(**inputs).logits, masked(**inputs).logits)
    out = save_pruned(model, tmp_path / model_type, pruning_config=config, plan=plan)
    torch.testing.assert_close(load_pruned(out)(**inputs).logits, model(**inputs).logits)


@pytest.mark.parametrize("importance", ["fisher", "magnitude"])
def test_uniform_flops_target_keeps_the_same_widths_in_every_layer(importance):
    model = tiny_bert(num_hidden_layers=3)
    structure = HeadsAndNeurons(uniform=True)
    config = PruningConfig(importance=importance, structure=structure, target_flops=0.5, flops_seq_len=12)
    plan = plan_structured(model, config, [bert_batch(), bert_batch(seq_len=7)])
    assert len({len(h) for h in plan.heads}) == 1 and len({len(n) for n in plan.neurons}) == 1
    assert 0.4 < plan.extra["encoder_flops_fraction"] <= 0.5
    uneven = plan_structured(model, PruningConfig(importance=importance, structure="heads_and_neurons",
                                                  target_flops=0.5, flops_seq_len=12), [bert_batch()])  # fmt: skip
    assert uneven.extra["encoder_flops_fraction"] <= 0.5
    assert PruningConfig.from_dict(config.to_dict()) == config


def test_parameter_target_counts_weights_not_operations():
    model = tiny_bert(num_hidden_layers=3)
    batches = [bert_batch(), bert_batch(seq_len=7)]
    for importance in ("fisher", "magnitude"):
        config = PruningConfig(importance=importance, structure="heads_and_neurons", target_params=0.5)
        plan = plan_structured(model, config, batches)
        assert 0.45 < plan.extra["encoder_params_fraction"] <= 0.5
        pruned = copy.deepcopy(model)
        compact_(pruned, plan)
        dims = encoder_dims(model)
        kept = sum(p.numel() for n, p in pruned.named_parameters() if ".encoder." in n and "LayerNorm" not in n)
        full = sum(p.numel() for n, p in model.named_parameters() if ".encoder." in n and "LayerNorm" not in n)
        fixed = dims.num_layers * 2 * model.config.hidden_size  # attention-output and FFN-output biases stay
        assert (kept - fixed) / (full - fixed) == pytest.approx(plan.extra["encoder_params_fraction"])
    with pytest.raises(ConfigError, match="not both"):
        PruningConfig(structure="heads", target_flops=0.5, target_params=0.5)
    with pytest.raises(ConfigError, match="target_params is for heads/neurons"):
        PruningConfig(structure="channels", target_params=0.5)
    with pytest.raises(ConfigError, match=r"target_params is the fraction .* must be in \(0, 1\]"):
        PruningConfig(structure="heads", target_params=0.0)


# ------------------------------------------------------------------------------- calibration batches that cannot work
def test_calibration_sequences_longer_than_the_model_takes_are_refused_naming_the_batch():
    model = tiny_bert(max_position_embeddings=16)
    batches = [bert_batch(seq_len=12), bert_batch(seq_len=20)]
    config = PruningConfig(importance="fisher", structure="heads_and_neurons", target_flops=0.5)
    with pytest.raises(ConfigError, match="Calibration batch 1 asks for 20 tokens, but this bert model takes at most"):
        plan_structured(model, config, batches)
    with pytest.raises(ConfigError, match="Calibration batch 1 asks for 20 tokens"):
        prune_(model, PruningConfig(importance="taylor", sparsity=0.5), batches)


def test_roberta_positions_start_after_the_padding_index():
    model = tiny_encoder("roberta")  # 64 position embeddings, of which 2 are reserved
    with pytest.raises(ConfigError, match="asks for 63 tokens, but this roberta model takes at most 62"):
        plan_structured(model, PruningConfig(importance="taylor", structure="heads", sparsity=0.5),
                        [{**bert_batch(seq_len=63)}])  # fmt: skip


def test_an_empty_calibration_batch_is_named():
    from .models import family_batch, family_model

    model = family_model("vit")
    empty = {key: value[:0] for key, value in family_batch(model).items()}
    config = PruningConfig(importance="fisher", structure="heads_and_neurons", target_flops=0.5)
    with pytest.raises(HfPruneError, match=r"Calibration batch 1 holds no rows \(its inputs have shape \(0, 3, 16,"):
        plan_structured(model, config, [family_batch(model), empty])


def test_reconstruction_from_padding_only_is_refused():
    from hfprune.retraining_free import reconstruct_

    dense = tiny_bert()
    pruned = copy.deepcopy(dense)
    compact_(pruned, _uneven_plan(pruned))
    batch = bert_batch()
    batch["attention_mask"] = torch.zeros_like(batch["attention_mask"])
    with pytest.raises(HfPruneError, match="hold only padding"):
        reconstruct_(pruned, dense, [batch])
