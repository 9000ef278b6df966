"""Polarization regularizer (Zhuang et al. 2020): its value, its gradient, the clamp, and the threshold it creates."""

import pytest
import torch
from torch import nn

from hfprune import ConfigError, PruningConfig
from hfprune.regularizers import Polarization, polarization_threshold


def net_with_scales(*groups):
    layers = []
    for scales in groups:
        norm = nn.BatchNorm2d(len(scales))
        with torch.no_grad():
            norm.weight.copy_(torch.tensor(scales))
        layers.append(norm)
    return nn.Sequential(*layers)


def test_penalty_and_gradient_follow_the_formula_over_all_scales():
    model = net_with_scales([0.2, 0.8], [0.5])
    penalty = Polarization(weight=0.1, t=1.2).bind(model)
    value = penalty()
    # mean 0.5: t * (0.2 + 0.8 + 0.5) - (0.3 + 0.3 + 0) = 1.2
    assert float(value) == pytest.approx(0.1 * 1.2)
    value.backward()
    # d/d gamma = weight * (t - sign(gamma - mean)); the mean's own term cancels here (signs -1, +1, 0)
    assert model[0].weight.grad.tolist() == pytest.approx([0.1 * 2.2, 0.1 * 0.2])
    assert model[1].weight.grad.tolist() == pytest.approx([0.1 * 1.2])


def test_scales_are_clamped_to_the_unit_interval_before_each_forward_unless_asked_not_to():
    model = net_with_scales([-0.3, 1.7])
    Polarization(weight=1.0).bind(model)
    model(torch.randn(2, 2, 3, 3))
    assert model[0].weight.tolist() == [0.0, 1.0]
    model = net_with_scales([-0.3, 1.7])
    Polarization(weight=1.0, clamp=False).bind(model)
    model(torch.randn(2, 2, 3, 3))
    assert model[0].weight.tolist() == pytest.approx([-0.3, 1.7])


def test_bad_settings_and_models_without_batchnorm_are_refused():
    with pytest.raises(ConfigError, match="t must be > 0"):
        Polarization(weight=1e-4, t=0)
    with pytest.raises(ConfigError, match=">= 0"):
        Polarization(weight=-1.0)
    with pytest.raises(ConfigError, match="no BatchNorm"):
        Polarization(weight=1e-4).bind(nn.Linear(3, 3))


def test_threshold_falls_in_the_gap_of_polarized_scales_and_is_zero_without_one():
    generator = torch.Generator().manual_seed(0)
    low = torch.rand(40, generator=generator) * 0.04 + 0.01
    high = torch.rand(60, generator=generator) * 0.3 + 0.6
    threshold = polarization_threshold(torch.cat([low, high]))
    assert float(low.max()) < threshold < float(high.min())
    assert polarization_threshold(torch.linspace(0, 1, 1000)) == 0.0


def test_the_trainer_adds_the_penalty(tmp_path):
    from transformers import TrainingArguments

    from hfprune import PruningTrainer
    from hfprune.vision import ImageClassifier

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))  # fmt: skip
    data = [{"pixel_values": torch.randn(3, 8, 8), "labels": i % 2} for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, use_cpu=True,
                             report_to=[], save_strategy="no", logging_steps=1)  # fmt: skip
    trainer = PruningTrainer(model=ImageClassifier(net), args=args, train_dataset=data,
                             regularizers=[Polarization(weight=0.5)])  # fmt: skip
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "polarization_loss" in entry]
    assert logged and all(entry["polarization_loss"] != 0 for entry in logged)


def test_global_channel_scope_prunes_below_one_threshold_across_layers():
    # Network slimming (and polarization) prune the channels whose BN scale is below one threshold for the whole
    # network: a layer whose scales collapsed loses them all, the others keep theirs.
    import timm

    import hfprune.models  # noqa: F401 - registers cifar_resnet20
    from hfprune.channels import plan_channels

    torch.manual_seed(0)
    model = timm.create_model("cifar_resnet20", num_classes=10).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.0)
        model.layer1[0].bn1.weight[:12] = 0.01
    example = torch.zeros(1, 3, 32, 32)
    config = PruningConfig(importance="bn_scale", structure="channels", sparsity=12 / 336, scope="global")
    plan = plan_channels(model, config, example)
    assert plan.kept["layer1.0.conv1"] == list(range(12, 16))
    assert all(len(kept) == plan.num_channels[name] for name, kept in plan.kept.items() if name != "layer1.0.conv1")
    local = plan_channels(model, PruningConfig(importance="bn_scale", structure="channels", sparsity=0.25), example)
    assert all(len(kept) == plan.num_channels[name] * 3 // 4 for name, kept in local.kept.items())
    by_flops = plan_channels(model, PruningConfig(importance="bn_scale", structure="channels", target_flops=0.8,
                                                  scope="global"), example)  # fmt: skip
    assert by_flops.extra["flops_fraction"] == pytest.approx(0.8, abs=0.01)
    assert by_flops.kept["layer1.0.conv1"] == list(range(12, 16))
