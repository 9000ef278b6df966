import copy

import pytest
import torch

import hfprune
from hfprune import (
    Blocks,
    ConfigError,
    CubicSchedule,
    MissingDataError,
    NoPrunableModulesError,
    Pruner,
    PruningConfig,
    UnsupportedArchitectureError,
    prune_,
)
from hfprune.masks import find_mask

from .models import MLP, ConvNet, NoWeights, bert_batch, tiny_bert


ENCODER_SUFFIXES = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")


def _zero_fraction(weight: torch.Tensor) -> float:
    return float((weight == 0).float().mean())


def test_default_targets_are_encoder_linears_only(bert):
    pruner = Pruner(bert, PruningConfig())
    names = set(pruner.modules)
    assert len(names) == 2 * 6
    assert all(name.startswith("bert.encoder.layer.") and name.endswith(ENCODER_SUFFIXES) for name in names)
    assert not any("embeddings" in n or "pooler" in n or "classifier" in n for n in names)


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.77])
def test_local_scope_hits_target_per_tensor(bert, sparsity):
    prune_(bert, PruningConfig(sparsity=sparsity))
    for name, module in Pruner(bert, PruningConfig()).modules.items():
        numel = module.weight.numel()
        # Exact to one weight per tensor.
        assert abs(_zero_fraction(module.weight) - sparsity) <= 1.0 / numel, name


def test_global_scope_hits_target_overall_with_uneven_layers(bert):
    # Scale one layer up so a global ranking must leave it denser than the others.
    with torch.no_grad():
        bert.bert.encoder.layer[0].intermediate.dense.weight.mul_(10)
    prune_(bert, PruningConfig(sparsity=0.6, scope="global"))
    modules = Pruner(bert, PruningConfig()).modules
    zeros = sum(int((m.weight == 0).sum()) for m in modules.values())
    total = sum(m.weight.numel() for m in modules.values())
    assert abs(zeros / total - 0.6) <= 1.0 / total
    assert _zero_fraction(bert.bert.encoder.layer[0].intermediate.dense.weight) < 0.1


def test_global_differs_from_local_on_real_minilm(minilm):
    global_model = copy.deepcopy(minilm)
    prune_(minilm, PruningConfig(sparsity=0.5, scope="local"))
    prune_(global_model, PruningConfig(sparsity=0.5, scope="global"))
    local_sparsity = Pruner(minilm, PruningConfig()).sparsity()
    global_sparsity = Pruner(global_model, PruningConfig()).sparsity()
    assert all(abs(value - 0.5) < 1e-5 for value in local_sparsity.values())
    spread = max(global_sparsity.values()) - min(global_sparsity.values())
    assert spread > 0.1, global_sparsity
    assert Pruner(global_model, PruningConfig()).overall_sparsity() == pytest.approx(0.5, abs=1e-6)


def test_magnitude_removes_the_smallest_weights():
    model = MLP()
    weight = model.fc1.weight.detach().abs().clone()
    prune_(model, PruningConfig(sparsity=0.5, target_modules=["fc1"]))
    removed = model.fc1.weight == 0
    assert weight[removed].max() <= weight[~removed].min()


def test_masked_forward_equals_forward_with_masks_multiplied_in(bert):
    reference = copy.deepcopy(bert)
    pruner = Pruner(bert, PruningConfig(sparsity=0.6))
    pruner.apply_sparsity_(0.6)
    masks = pruner.masks()
    with torch.no_grad():
        for name, mask in masks.items():
            reference.get_submodule(name).weight.mul_(mask)
    batch = bert_batch(labels=False)
    torch.testing.assert_close(bert(**batch).logits, reference(**batch).logits)
    pruner.make_permanent_()
    torch.testing.assert_close(bert(**batch).logits, reference(**batch).logits)


def test_gradients_flow_to_kept_weights_only(bert):
    bert.train()
    pruner = Pruner(bert, PruningConfig(sparsity=0.5))
    pruner.apply_sparsity_(0.5)
    bert(**bert_batch()).loss.backward()
    module = bert.bert.encoder.layer[1].intermediate.dense
    grad = module.parametrizations.weight.original.grad
    mask = find_mask(module).mask
    assert grad is not None
    assert torch.all(grad[~mask] == 0)
    assert torch.count_nonzero(grad[mask]) > 0.9 * mask.sum()
    # Every parameter still gets a gradient after masking (nothing is detached).
    assert all(p.grad is not None for name, p in bert.named_parameters() if "pooler" not in name)


def test_training_keeps_removed_weights_at_zero(bert):
    bert.train()
    pruner = Pruner(bert, PruningConfig(sparsity=0.5))
    pruner.apply_sparsity_(0.5)
    optimizer = torch.optim.AdamW(bert.parameters(), lr=1e-2)
    for _ in range(3):
        bert(**bert_batch()).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(abs(value - 0.5) < 0.01 for value in pruner.sparsity().values())


def test_permanent_pruning_leaves_no_mask_keys(bert):
    pruner = Pruner(bert, PruningConfig(sparsity=0.5))
    pruner.apply_sparsity_(0.5)
    assert any("parametrizations" in key for key in bert.state_dict())
    pruner.make_permanent_()
    keys = list(bert.state_dict())
    assert not any("parametrizations" in k or "mask" in k or "orig" in k for k in keys)
    assert set(keys) == set(tiny_bert().state_dict())


def test_gradual_cubic_schedule_and_nested_masks(bert):
    config = PruningConfig(sparsity=0.8, schedule=CubicSchedule(start_step=2, end_step=10, every=2))
    pruner = Pruner(bert, config)
    updated = [pruner.step() for _ in range(12)]
    # Masks change only when the scheduled sparsity does: at steps 4, 6, 8, 10 (and the first call).
    assert updated == [True, False, False, True, False, True, False, True, False, True, False, False]
    assert pruner.overall_sparsity() == pytest.approx(0.8, abs=1e-3)


def test_gradual_masks_only_grow(bert):
    config = PruningConfig(importance="random", sparsity=0.8, schedule=CubicSchedule(end_step=4))
    pruner = Pruner(bert, config)
    previous = None
    for step in range(1, 5):
        pruner.step(step)
        removed = {name: ~mask for name, mask in pruner.masks().items()}
        if previous is not None:
            assert all(torch.all(removed[name] | ~previous[name]) for name in removed)
        previous = removed


def test_pruner_state_round_trip_restores_masks_and_step(bert, tmp_path):
    config = PruningConfig(importance="taylor", sparsity=0.7, schedule=CubicSchedule(end_step=10))
    pruner = Pruner(bert, config)
    bert(**bert_batch()).loss.backward()
    pruner.accumulate()
    pruner.step(5)
    torch.save(pruner.state_dict(), tmp_path / "pruner.pt")

    fresh = tiny_bert()
    fresh.load_state_dict({k: v for k, v in bert.state_dict().items() if "parametrizations" not in k}, strict=False)
    restored = Pruner(fresh, config)
    restored.load_state_dict(torch.load(tmp_path / "pruner.pt", weights_only=True))
    assert restored.global_step == 5
    for name, mask in pruner.masks().items():
        assert torch.equal(restored.masks()[name], mask)
    torch.testing.assert_close(restored.importance_state[next(iter(pruner.modules))]["sum"],
                               pruner.importance_state[next(iter(pruner.modules))]["sum"])  # fmt: skip
    # Continuing both gives the same masks.
    assert pruner.step(10) and restored.step(10)
    for name, mask in pruner.masks().items():
        assert torch.equal(restored.masks()[name], mask)


def test_masks_survive_save_and_load(bert, tmp_path):
    prune_(bert, PruningConfig(sparsity=0.5))
    bert.save_pretrained(tmp_path)
    reloaded = type(bert).from_pretrained(tmp_path).eval()
    for name, module in Pruner(bert, PruningConfig()).modules.items():
        assert torch.equal(reloaded.get_submodule(name).weight == 0, module.weight == 0)
    batch = bert_batch(labels=False)
    torch.testing.assert_close(reloaded(**batch).logits, bert(**batch).logits)


def test_taylor_uses_gradients_and_requires_data(bert):
    with pytest.raises(MissingDataError, match="needs gradients: pass a dataloader"):
        prune_(bert, PruningConfig(importance="taylor"))
    prune_(bert, PruningConfig(importance="taylor", sparsity=0.5), [bert_batch(), bert_batch(seq_len=8)])
    assert Pruner(bert, PruningConfig()).overall_sparsity() == pytest.approx(0.5, abs=1e-3)
    assert not any(p.grad is not None for p in bert.parameters())


def test_taylor_on_tuple_batches_and_conv():
    model = ConvNet()
    batches = [(torch.randn(2, 3, 8, 8), torch.tensor([1, 3]))]
    prune_(model, PruningConfig(importance="taylor", sparsity=0.25, target_modules=["conv1", "conv2"]), batches)
    assert _zero_fraction(model.conv2.weight) == pytest.approx(0.25, abs=1 / model.conv2.weight.numel())


def test_taylor_needs_labels(bert):
    with pytest.raises(MissingDataError, match="labels"):
        prune_(bert, PruningConfig(importance="taylor"), [bert_batch(labels=False)])


def test_random_is_seeded(bert):
    other = copy.deepcopy(bert)
    prune_(bert, PruningConfig(importance="random", seed=1))
    prune_(other, PruningConfig(importance="random", seed=1))
    weight, other_weight = (
        bert.bert.encoder.layer[0].output.dense.weight,
        other.bert.encoder.layer[0].output.dense.weight,
    )
    assert torch.equal(weight == 0, other_weight == 0)
    third = tiny_bert()
    third.load_state_dict(other.state_dict())
    prune_(third, PruningConfig(importance="random", seed=2))
    assert not torch.equal(third.bert.encoder.layer[0].output.dense.weight == 0, weight == 0)


def test_blocks_remove_whole_blocks():
    model = MLP()
    prune_(model, PruningConfig(sparsity=0.5, structure=Blocks(rows=8, cols=4), target_modules=["fc1", "fc2"]))
    zeros = (model.fc2.weight == 0).reshape(4, 8, 16, 4)
    per_block = zeros.all(dim=(1, 3)) | (~zeros).all(dim=(1, 3))
    assert per_block.all()
    assert _zero_fraction(model.fc2.weight) == pytest.approx(0.5)


def test_blocks_that_do_not_divide_the_weight_name_the_module(bert):
    with pytest.raises(ConfigError, match=r"intermediate\.dense.*not divisible into 8x8 blocks"):
        Pruner(bert, PruningConfig(structure=Blocks(rows=8, cols=8)))


def test_overrides_and_excludes(bert):
    config = PruningConfig(
        sparsity=0.5,
        exclude_modules=["layer.1.output.dense"],
        sparsity_overrides={"re:.*attention\\.self\\.query": 0.9, "intermediate.dense": 0.1},
    )
    prune_(bert, config)
    layer = bert.bert.encoder.layer[1]
    assert _zero_fraction(layer.attention.self.query.weight) == pytest.approx(0.9, abs=1e-3)
    assert _zero_fraction(layer.intermediate.dense.weight) == pytest.approx(0.1, abs=1e-3)
    assert _zero_fraction(layer.attention.self.key.weight) == pytest.approx(0.5, abs=1e-3)
    assert _zero_fraction(layer.output.dense.weight) == 0.0


def test_global_with_overrides_keeps_overridden_modules_local(bert):
    prune_(bert, PruningConfig(sparsity=0.5, scope="global", sparsity_overrides={"layer.0.intermediate.dense": 0.2}))
    assert _zero_fraction(bert.bert.encoder.layer[0].intermediate.dense.weight) == pytest.approx(0.2, abs=1e-3)


def test_target_modules_matching_nothing_is_a_clear_error(bert):
    with pytest.raises(NoPrunableModulesError, match=r"matched no prunable module.*Prunable modules look like"):
        Pruner(bert, PruningConfig(target_modules=["qurey"]))


def test_override_matching_nothing_is_a_clear_error(bert):
    with pytest.raises(ConfigError, match="sparsity_overrides key 'decoder'"):
        Pruner(bert, PruningConfig(sparsity_overrides={"decoder": 0.5}))


def test_model_without_prunable_layers():
    with pytest.raises(NoPrunableModulesError, match="no prunable layers"):
        Pruner(NoWeights(), PruningConfig(target_modules=".*"))


def test_unknown_architecture_needs_explicit_targets():
    with pytest.raises(UnsupportedArchitectureError, match="no adapter for a plain MLP.*pass target_modules"):
        Pruner(MLP(), PruningConfig())
    prune_(model := MLP(), PruningConfig(target_modules=r"fc\d"))
    assert _zero_fraction(model.fc1.weight) == pytest.approx(0.5)
    assert _zero_fraction(model.head.weight) == 0.0


def test_gpt2_gets_advice_that_can_help():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16,
                                       bos_token_id=0, eos_token_id=0))  # fmt: skip
    with pytest.raises(UnsupportedArchitectureError, match=r"model_type 'gpt2'.*Supported model types: bert.*"
                       r"3 nn.Linear.*lm_head.*Conv1D layers \(GPT-2 style\) are not prunable"):  # fmt: skip
        prune_(model, PruningConfig())


def test_loading_state_from_another_model_fails_clearly(bert):
    pruner = Pruner(bert, PruningConfig(target_modules=["query"]))
    pruner.step(1)
    other = Pruner(tiny_bert(), PruningConfig(target_modules=["key"]))
    with pytest.raises(ConfigError, match="does not prune"):
        other.load_state_dict(pruner.state_dict())


def test_public_api_is_importable():
    for name in hfprune.__all__:
        assert hasattr(hfprune, name), name


def test_channels_through_the_mask_engine_say_which_functions_prune_channels():
    with pytest.raises(ConfigError, match=r"plan_channels\(model, config, example_inputs\).*apply_channel_plan_"):
        prune_(ConvNet(), PruningConfig(structure="channels"))
