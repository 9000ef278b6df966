"""bf16 and fp16 models through every structured path: weights keep their dtype, scores are computed in float32."""

import copy

import pytest
import timm
import torch
from torch import nn

import hfprune.models  # noqa: F401 - registers the CIFAR ResNets with timm
from hfprune import (
    ConfigError,
    Pruner,
    PruningConfig,
    PruningPlan,
    compact_,
    load_pruned,
    plan_structured,
    prune_,
    report,
)
from hfprune.channels import (
    ChannelPlan,
    adaptive_bn_,
    apply_channel_plan_,
    channel_groups,
    eagleeye_search,
    plan_channels,
    score_channels,
)
from hfprune.hub import load_channel_pruned, save_channel_pruned, save_pruned
from hfprune.retraining_free import reconstruct_
from hfprune.structured import apply_plan_masks_, score_units
from hfprune.structures import Channels

from .models import ConvNet, bert_batch, tiny_bert, tiny_encoder


HALF = [torch.bfloat16, torch.float16]
X32 = torch.zeros(1, 3, 32, 32)


def _dtypes(model: nn.Module) -> set[torch.dtype]:
    return {tensor.dtype for tensor in [*model.parameters(), *model.buffers()] if tensor.is_floating_point()}


def _half_bert(dtype: torch.dtype, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return tiny_bert(**overrides).to(dtype)


def _calibration():
    return [bert_batch(), bert_batch(seq_len=7)]


def _uneven_plan(model) -> PruningPlan:
    plan = PruningPlan.dense(model)
    plan.heads = [[], [1, 3]]  # layer 0 loses every head
    plan.neurons = [[0, 4, 7, 30], list(range(0, 37, 2))]
    return PruningPlan.from_dict(plan.to_dict())


# ---------------------------------------------------------------------------------------------- compaction
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_compact_keeps_dtype_and_equals_masked(dtype, model_type):
    model = tiny_encoder(model_type).to(dtype)
    plan = _uneven_plan(model)
    masked = copy.deepcopy(model)
    apply_plan_masks_(masked, plan)
    compact_(model, plan)
    assert _dtypes(model) == {dtype}
    inputs = bert_batch(labels=False)
    logits = model(**inputs).logits
    assert logits.dtype == dtype
    # Same weights, fewer zero columns: only the summation order differs.
    torch.testing.assert_close(logits.float(), masked(**inputs).logits.float(), rtol=0.02, atol=0.02)


@pytest.mark.parametrize("dtype", HALF)
def test_save_and_load_pruned_keep_dtype(dtype, tmp_path):
    model = _half_bert(dtype)
    config = PruningConfig(structure="heads_and_neurons", sparsity=0.5)
    prune_(model, config)
    plan = compact_(model)
    save_pruned(model, tmp_path / "hfprune", pruning_config=config, plan=plan)
    model.save_pretrained(tmp_path / "plain")  # the plan travels in config.json
    inputs = bert_batch(labels=False)
    expected = model(**inputs).logits
    for folder in ("hfprune", "plain"):
        reloaded = load_pruned(tmp_path / folder)
        assert _dtypes(reloaded) == {dtype}
        assert torch.equal(reloaded(**inputs).logits, expected)
    upcast = load_pruned(tmp_path / "hfprune", dtype=torch.float32)
    assert _dtypes(upcast) == {torch.float32}


# ---------------------------------------------------------------------------------------------- one-shot planning
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("target", ["sparsity", "target_flops", "target_params"])
def test_magnitude_plan_of_half_model_equals_plan_of_its_float32_copy(dtype, target):
    """Magnitude scores are computed in float32, so the rounding of bf16/fp16 sums cannot reorder units."""
    model = _half_bert(dtype)
    value = {"sparsity": 0.5, "target_flops": 0.5, "target_params": 0.6}[target]
    config = PruningConfig(structure="heads_and_neurons", **{target: value})
    plan = plan_structured(model, config)
    reference = plan_structured(copy.deepcopy(model).float(), config)
    assert (plan.heads, plan.neurons) == (reference.heads, reference.neurons)
    assert plan.heads != PruningPlan.dense(model).heads  # something was pruned
    assert _dtypes(model) == {dtype}


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("importance", ["taylor", "fisher"])
def test_gradient_scores_of_half_model_are_float32_and_close_to_float32(dtype, importance):
    model = _half_bert(dtype)
    config = PruningConfig(importance=importance, structure="heads_and_neurons", sparsity=0.5)
    scores = score_units(model, config, _calibration())
    reference = score_units(copy.deepcopy(model).float(), config, _calibration())
    for kind in ("heads", "neurons"):
        assert scores[kind].dtype == torch.float32 and bool(torch.isfinite(scores[kind]).all())
        assert float(scores[kind].abs().sum()) > 0
        # A half-precision forward/backward perturbs the gradients a little, not the ranking as a whole.
        correlation = torch.corrcoef(torch.stack([scores[kind].reshape(-1), reference[kind].reshape(-1)]))[0, 1]
        assert float(correlation) > 0.95
    assert all(param.grad is None for param in model.parameters())  # calibration gradients are cleared


def _scaled_classifier(model: nn.Module, factor: float) -> nn.Module:
    """Small (large) classifier weights make every upstream gradient small (large): fp16 underflow (overflow)."""
    with torch.no_grad():
        model.classifier.weight.mul_(factor)
    return model


@pytest.mark.parametrize("factor", [1e-3, 1.0, 1e3])
def test_fp16_calibration_scales_the_loss_so_gradients_neither_vanish_nor_overflow(factor):
    model = _scaled_classifier(tiny_bert(), factor)
    config = PruningConfig(importance="fisher", structure="heads_and_neurons", sparsity=0.5)
    scores = score_units(copy.deepcopy(model).half(), config, [bert_batch()])
    reference = score_units(model, config, [bert_batch()])
    for kind in ("heads", "neurons"):  # without loss scaling, 40% of the neurons score 0 at factor 1e-3
        assert bool((scores[kind] > 0).all()) and bool(torch.isfinite(scores[kind]).all())
        correlation = torch.corrcoef(torch.stack([scores[kind].reshape(-1), reference[kind].reshape(-1)]))[0, 1]
        assert float(correlation) > 0.99

    config = PruningConfig(importance="taylor", sparsity=0.5)
    half = prune_(copy.deepcopy(model).half(), config, [bert_batch()])
    full = prune_(copy.deepcopy(model), config, [bert_batch()])
    for (name, param), (_, ref) in zip(half.named_parameters(), full.named_parameters(), strict=True):
        if name.startswith("bert.encoder") and param.dim() == 2:  # without loss scaling: 50-80% agreement
            assert float(((param == 0) == (ref == 0)).float().mean()) > 0.97, name


def test_fp16_channel_taylor_scales_the_loss():
    model = ConvNet()
    with torch.no_grad():
        model.fc.weight.mul_(1e-5)  # fp16 gradients of conv2 would all round to zero
    config = PruningConfig(importance="taylor", structure="channels", sparsity=0.5)
    batches = _image_batches(1)
    groups = channel_groups(model, X8, Channels(), ["fc"])[1]
    reference = score_channels(model, groups, config, batches)
    half = model.half()
    scores = score_channels(half, channel_groups(half, X8, Channels(), ["fc"])[1], config, batches)
    for name in ("conv1", "conv2"):
        assert bool((scores[name] > 0).all())
        assert float(torch.corrcoef(torch.stack([scores[name], reference[name]]))[0, 1]) > 0.99


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("importance", ["taylor", "fisher"])
def test_gradient_planning_meets_flops_target_and_compacts(dtype, importance):
    model = _half_bert(dtype)
    config = PruningConfig(importance=importance, structure="heads_and_neurons", target_flops=0.5)
    plan = plan_structured(model, config, _calibration())
    assert plan.extra["encoder_flops_fraction"] <= 0.5
    compact_(model, plan)
    assert _dtypes(model) == {dtype}
    assert bool(torch.isfinite(model(**bert_batch(labels=False)).logits).all())


# ---------------------------------------------------------------------------------------------- retraining-free
@pytest.mark.parametrize("dtype", HALF)
def test_retraining_free_pipeline_in_half_precision(dtype):
    dense = _half_bert(dtype)
    config = PruningConfig(importance="fisher", structure="heads_and_neurons", target_flops=0.6)
    plan = plan_structured(dense, config, _calibration())
    assert "rearranged_swaps" in plan.extra  # Fisher block matrices were built and used
    pruned = copy.deepcopy(dense)
    compact_(pruned, plan)
    before = copy.deepcopy(pruned)
    errors = reconstruct_(pruned, dense, _calibration())
    assert _dtypes(pruned) == {dtype}
    assert len(errors["before"]) == len(errors["after"]) > 0
    assert all(after <= before for before, after in zip(errors["before"], errors["after"], strict=True))
    assert any(after < before for before, after in zip(errors["before"], errors["after"], strict=True))
    changed = [
        name for (name, new), (_, old) in zip(pruned.named_parameters(), before.named_parameters(), strict=True)
        if not torch.equal(new, old)
    ]
    assert changed and all(name.endswith("dense.weight") for name in changed)  # only output projections rescaled
    assert bool(torch.isfinite(pruned(**bert_batch(labels=False)).logits).all())


# ---------------------------------------------------------------------------------------------- training masks
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("importance", ["movement", "magnitude"])
def test_group_masks_during_training_in_half_precision(dtype, importance):
    model = _half_bert(dtype)
    pruner = Pruner(model, PruningConfig(importance=importance, structure="heads_and_neurons", sparsity=0.5))
    pruner.attach_()
    model(**bert_batch()).loss.backward()
    if importance == "movement":
        scores = pruner.score_parameters()
        assert scores and all(p.dtype == torch.float32 and p.grad is not None for p in scores)
        assert all(p.grad.dtype == torch.float32 and float(p.grad.abs().sum()) > 0 for p in scores)
        with torch.no_grad():  # as if the optimizer had moved the scores
            for param in scores:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    assert pruner.step(1)
    kept = pruner.plan().remaining_fraction()
    assert kept["heads"] == 0.5 and 0.45 < kept["neurons"] < 0.55
    pruner.make_permanent_()
    compact_(model, pruner.plan())
    assert _dtypes(model) == {dtype}
    assert bool(torch.isfinite(model(**bert_batch(labels=False)).logits).all())


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("scope", ["local", "global"])
def test_unstructured_magnitude_masks_in_half_precision(dtype, scope):
    model = _half_bert(dtype)
    reference = copy.deepcopy(model).float()
    config = PruningConfig(sparsity=0.5, scope=scope)
    prune_(model, config)
    prune_(reference, config)
    assert _dtypes(model) == {dtype}
    # |w| is exact in any precision, so the same weights are removed as in the float32 copy.
    for (name, param), (_, ref) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(param == 0, ref == 0), name
    assert Pruner(model, config).overall_sparsity() == pytest.approx(0.5, abs=0.01)


# ---------------------------------------------------------------------------------------------- CNN channels
def _resnet20(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("cifar_resnet20").eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.running_var.uniform_(0.5, 1.5)
    return model.to(dtype)


class ConvBNNet(nn.Module):
    """Two conv-BN-ReLU blocks and a classifier: BN scales to rank, statistics to re-estimate, fast to trace."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(torch.relu(self.stem(x)))))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _convbn(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    model = ConvBNNet().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.running_var.uniform_(0.5, 1.5)
    return model.to(dtype)


X8 = torch.zeros(1, 3, 8, 8)


def _image_batches(count: int = 2, size: int = 8):
    generator = torch.Generator().manual_seed(3)
    return [(torch.randn(4, 3, size, size, generator=generator), torch.randint(0, 10, (4,), generator=generator))
            for _ in range(count)]  # fmt: skip


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("importance", ["l2", "bn_scale"])
def test_channel_plan_of_half_model_equals_plan_of_its_float32_copy(dtype, importance):
    model = _convbn(dtype)
    config = PruningConfig(importance=importance, structure="channels", sparsity=0.5)
    plan = plan_channels(model, config, X8)  # float32 example inputs: cast to the model's dtype
    assert {name: len(kept) for name, kept in plan.kept.items()} == {"conv1": 8, "conv2": 8}
    assert plan.kept == plan_channels(copy.deepcopy(model).float(), config, X8).kept
    assert _dtypes(model) == {dtype}  # scoring upcasts for a moment and rounds back exactly
    pruned = apply_channel_plan_(copy.deepcopy(model), plan, X8)
    assert _dtypes(pruned) == {dtype}
    assert pruned(torch.randn(2, 3, 8, 8).to(dtype)).dtype == dtype


@pytest.mark.parametrize("dtype", HALF)
def test_channel_taylor_and_flops_target_in_half_precision(dtype):
    model = ConvNet().to(dtype)
    config = PruningConfig(importance="taylor", structure="channels", sparsity=0.5)
    plan = plan_channels(model, config, X8, _image_batches(), ignored_layers=["fc"])
    assert {name: len(kept) for name, kept in plan.kept.items()} == {"conv1": 4, "conv2": 8}
    assert all(param.grad is None for param in model.parameters())
    assert _dtypes(model) == {dtype}
    flops_config = PruningConfig(structure="channels", target_flops=0.6)
    plan = plan_channels(_convbn(dtype), flops_config, X8)
    reference = plan_channels(_convbn(dtype).float(), flops_config, X8)
    assert plan.extra["flops_fraction"] == reference.extra["flops_fraction"] < 0.65
    assert plan.kept == reference.kept


@pytest.mark.parametrize("dtype", HALF)
def test_channel_pruned_half_model_saves_and_reloads_in_its_dtype(dtype, tmp_path):
    resnet = _resnet20(dtype)
    # The plan does not depend on the dtype (see above); planning on the float32 copy keeps this test fast.
    plan = plan_channels(copy.deepcopy(resnet).float(), PruningConfig(structure="channels", sparsity=0.5), X32)
    pruned = apply_channel_plan_(copy.deepcopy(resnet), plan, X32)
    save_channel_pruned(pruned, tmp_path / "out", plan, architecture="cifar_resnet20", num_classes=10)
    reloaded = load_channel_pruned(tmp_path / "out")
    assert _dtypes(reloaded) == {dtype}
    images = torch.randn(2, 3, 32, 32).to(dtype)
    assert torch.equal(reloaded(images), pruned.eval()(images))


@pytest.mark.parametrize("dtype", HALF)
def test_adaptive_bn_accumulates_in_float32_and_eagleeye_runs(dtype):
    model = _convbn(dtype)
    reference = copy.deepcopy(model).float()
    adaptive_bn_(model, _image_batches(3))
    adaptive_bn_(reference, _image_batches(3))
    assert _dtypes(model) == {dtype}
    for norm, ref in zip(model.modules(), reference.modules(), strict=True):
        if isinstance(norm, nn.BatchNorm2d):  # float32 statistics, rounded once
            assert torch.equal(norm.running_mean, ref.running_mean.to(dtype))
            assert torch.equal(norm.running_var, ref.running_var.to(dtype))
    config = PruningConfig(structure="channels", target_flops=0.6)
    plan, results = eagleeye_search(model, config, X8, _image_batches(1), _image_batches(2), num_candidates=2)
    assert len(results) == 2 and 0.0 <= plan.extra["adaptive_bn_top1"] <= 1.0
    assert _dtypes(model) == {dtype}


# ---------------------------------------------------------------------------------------------- meta device
def _on_meta(build):
    with torch.device("meta"):
        return build()


META_CALLS = {
    "prune_": lambda: prune_(_on_meta(tiny_bert), PruningConfig(sparsity=0.5)),
    "prune_ heads": lambda: prune_(_on_meta(tiny_bert), PruningConfig(structure="heads", sparsity=0.5)),
    "Pruner": lambda: Pruner(_on_meta(tiny_bert), PruningConfig(importance="movement", structure="heads")),
    "plan_structured": lambda: plan_structured(_on_meta(tiny_bert), PruningConfig(structure="neurons")),
    "compact_": lambda: compact_(_on_meta(tiny_bert)),
    "compact_ with plan": lambda: compact_(_on_meta(tiny_bert), PruningPlan.dense(tiny_bert())),
    "reconstruct_": lambda: reconstruct_(_on_meta(tiny_bert), tiny_bert(), [bert_batch()]),
    "plan_channels": lambda: plan_channels(_on_meta(ConvNet), PruningConfig(structure="channels"), X32),
    "apply_channel_plan_": lambda: apply_channel_plan_(
        _on_meta(ConvNet), ChannelPlan(num_channels={"conv1": 8}, kept={"conv1": [0]}), X8
    ),
    "eagleeye_search": lambda: eagleeye_search(
        _on_meta(ConvNet), PruningConfig(structure="channels", target_flops=0.5), X8, [], []
    ),
    "apply_plan_masks_": lambda: apply_plan_masks_(_on_meta(tiny_bert), PruningPlan.dense(tiny_bert())),
    "report": lambda: report(_on_meta(tiny_bert)),
    "save_pruned": lambda: save_pruned(_on_meta(tiny_bert), "never-written", pruning_config=PruningConfig()),
}


@pytest.mark.parametrize("entry_point", list(META_CALLS))
def test_meta_device_weights_are_refused(entry_point):
    with pytest.raises(ConfigError, match="meta device.*Load the real weights first"):
        META_CALLS[entry_point]()
