"""gRDA (directional pruning): exact zeros without a threshold, the closed form, and checkpoint round trips."""

import pytest
import torch
from torch import nn

from hfprune import ConfigError
from hfprune.grda import GRDA, grda_sparsity


def fixed_problem(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 20, generator=generator)
    y = x[:, :3].sum(dim=1, keepdim=True)  # only 3 of 20 inputs matter
    torch.manual_seed(seed)
    return nn.Linear(20, 1, bias=False), x, y


def run(model, optimizer, x, y, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def test_sparsity_emerges_as_exact_zeros_on_the_irrelevant_inputs():
    model, x, y = fixed_problem()
    optimizer = GRDA(model.parameters(), lr=0.05, c=0.05, mu=0.7)
    run(model, optimizer, x, y, 300)
    weight = model.weight.detach()[0]
    assert bool((weight[3:] == 0).all()) and bool((weight[:3] != 0).all())
    assert grda_sparsity(optimizer) == pytest.approx(17 / 20)
    # c = 0 is dual averaging without a threshold: plain SGD's iterates, no zeros.
    dense, x, y = fixed_problem()
    sgd_model, _, _ = fixed_problem()
    run(dense, GRDA(dense.parameters(), lr=0.05, c=0.0), x, y, 20)
    run(sgd_model, torch.optim.SGD(sgd_model.parameters(), lr=0.05), x, y, 20)
    torch.testing.assert_close(dense.weight, sgd_model.weight, rtol=0, atol=1e-6)


def test_one_step_matches_the_closed_form():
    param = nn.Parameter(torch.tensor([0.5, -0.02, 0.01]))
    optimizer = GRDA([param], lr=0.1, c=0.5, mu=0.6)
    param.grad = torch.tensor([1.0, 0.0, -0.5])
    optimizer.step()
    accumulator = torch.tensor([0.5 - 0.1, -0.02, 0.01 + 0.05])
    threshold = 0.5 * 0.1**1.1  # c * lr^(1/2 + mu) * 1^mu
    expected = torch.sign(accumulator) * (accumulator.abs() - threshold).clamp(min=0)
    torch.testing.assert_close(param.detach(), expected)
    assert float(param[1]) == 0.0


def test_state_round_trips_through_a_checkpoint(tmp_path):
    straight, x, y = fixed_problem()
    optimizer = GRDA(straight.parameters(), lr=0.05, c=0.05)
    run(straight, optimizer, x, y, 10)

    first, _, _ = fixed_problem()
    optimizer = GRDA(first.parameters(), lr=0.05, c=0.05)
    run(first, optimizer, x, y, 5)
    torch.save({"model": first.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "checkpoint.pt")
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    resumed, _, _ = fixed_problem(seed=1)
    resumed.load_state_dict(checkpoint["model"])
    optimizer = GRDA(resumed.parameters(), lr=0.05, c=0.05)
    optimizer.load_state_dict(checkpoint["optimizer"])
    run(resumed, optimizer, x, y, 5)
    torch.testing.assert_close(resumed.weight, straight.weight, rtol=0, atol=0)


def test_bad_settings_are_refused():
    params = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ConfigError, match="mu"):
        GRDA(params, mu=0.4)
    with pytest.raises(ConfigError, match="c must be"):
        GRDA(params, c=-1.0)
    with pytest.raises(ConfigError, match="lr"):
        GRDA(params, lr=0.0)


def test_pruning_trainer_trains_with_grda_and_resumes(tmp_path):
    from transformers import TrainingArguments

    from hfprune import PruningTrainer
    from hfprune.vision import ImageClassifier

    def trainer(max_steps, output):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 2))
        generator = torch.Generator().manual_seed(0)
        data = [{"pixel_values": torch.randn(3, 2, 2, generator=generator), "labels": i % 2} for i in range(16)]
        args = TrainingArguments(output_dir=str(output), max_steps=max_steps, per_device_train_batch_size=4,
                                 use_cpu=True, report_to=[], save_strategy="steps", save_steps=3,
                                 lr_scheduler_type="constant", seed=0, data_seed=0)  # fmt: skip
        return PruningTrainer(model=ImageClassifier(net), args=args, train_dataset=data,
                              optimizer_cls_and_kwargs=(GRDA, {"lr": 0.1, "c": 0.5, "mu": 0.6}))  # fmt: skip

    whole = trainer(6, tmp_path / "whole")
    whole.train()
    assert isinstance(whole.optimizer.optimizer if hasattr(whole.optimizer, "optimizer") else whole.optimizer, GRDA)
    assert float((whole.model.model[1].weight == 0).float().mean()) > 0.1

    first = trainer(3, tmp_path / "split")
    first.train()
    resumed = trainer(6, tmp_path / "split")
    resumed.train(resume_from_checkpoint=str(tmp_path / "split" / "checkpoint-3"))
    for a, b in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
