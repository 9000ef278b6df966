"""N:M semi-structured sparsity: the pattern holds in every group for every criterion, one-shot and gradual, and the
2:4 conversion refuses what it cannot convert."""

import pytest
import torch
from torch import nn

from hfprune import ConfigError, MissingDataError, Pruner, PruningConfig, prune_
from hfprune.schedules import CubicSchedule
from hfprune.semi_structured import nm_violations, to_semi_structured_

from .models import MLP, ConvNet


MODULES = ["fc1", "fc2", "head"]


def batches(count=3):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 16, generator=generator), torch.randint(0, 4, (8,), generator=generator))
            for _ in range(count)]  # fmt: skip


@pytest.mark.parametrize("importance", ["magnitude", "random", "taylor", "wanda"])
@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_one_shot_masks_keep_n_of_every_m(importance, n, m):
    torch.manual_seed(0)
    model = MLP()
    config = PruningConfig(structure={"type": "nm", "n": n, "m": m}, sparsity=1 - n / m, importance=importance,
                           target_modules=MODULES)  # fmt: skip
    prune_(model, config, batches() if importance in ("taylor", "wanda") else None)
    for name in MODULES:
        weight = getattr(model, name).weight
        assert nm_violations(weight, n, m) == 0
        groups = weight.reshape(-1, m).ne(0).sum(dim=1)
        assert bool((groups == n).all())  # exactly n: random init has no zeros of its own


def test_wanda_weighs_magnitude_by_the_input_norm():
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0, 0.5, 0.5]]))
    inputs = torch.tensor([[0.1, 1.0, 10.0, 0.1]]).repeat(5, 1)
    config = PruningConfig(structure="nm", sparsity=0.5, importance="wanda", target_modules=["0"])
    prune_(model, config, [(inputs, torch.zeros(5))])
    # scores 0.1, 1, 5, 0.05: Wanda keeps inputs 1 and 2 where magnitude would keep 0 and 1.
    assert model[0].weight.ne(0).tolist() == [[False, True, True, False]]
    with pytest.raises(MissingDataError, match="calibration"):
        prune_(MLP(), PruningConfig(structure="nm", sparsity=0.5, importance="wanda", target_modules=MODULES))
    with pytest.raises(ConfigError, match="linear layers"):
        prune_(ConvNet(), PruningConfig(sparsity=0.5, importance="wanda", target_modules=["conv1"]),
               [(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))])  # fmt: skip


def test_gradual_and_movement_pruning_end_in_the_pattern():
    for importance in ("magnitude", {"type": "movement", "init": "magnitude"}):
        torch.manual_seed(0)
        model = MLP()
        config = PruningConfig(structure="nm", sparsity=0.5, importance=importance, target_modules=MODULES,
                               schedule=CubicSchedule(start_step=0, end_step=4, every=1))  # fmt: skip
        pruner = Pruner(model, config, total_steps=6)
        pruner.attach_()
        optimizer = torch.optim.SGD([*model.parameters(), *pruner.score_parameters()], lr=0.1)
        for step in range(1, 7):
            x, y = batches(1)[0]
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            pruner.step(step)
            if step == 1:  # partway, a sparsity between 0 and 1/2: every group keeps the same 3 of 4
                assert 0 < pruner.applied_sparsity["fc1"] < 0.5
                kept = model.fc1.weight.reshape(-1, 4).ne(0).sum(dim=1)
                assert bool((kept == 4 - round(pruner.applied_sparsity["fc1"] * 4)).all())
        pruner.make_permanent_()
        assert all(nm_violations(getattr(model, name).weight) == 0 for name in MODULES)


def test_the_config_refuses_what_the_pattern_cannot_do():
    with pytest.raises(ConfigError, match="sparsity=0.75"):
        PruningConfig(structure={"type": "nm", "n": 1, "m": 4}, sparsity=0.5)
    with pytest.raises(ConfigError, match="scope='local'"):
        PruningConfig(structure="nm", sparsity=0.5, scope="global")
    with pytest.raises(ConfigError, match="1 <= n < m"):
        PruningConfig(structure={"type": "nm", "n": 4, "m": 4}, sparsity=0.0)
    with pytest.raises(ConfigError, match="soft_movement"):
        PruningConfig(structure="nm", sparsity=0.5, importance="soft_movement")
    model = nn.Sequential(nn.Linear(6, 4))
    with pytest.raises(ConfigError, match="not a\\s+multiple of m=4"):
        prune_(model, PruningConfig(structure="nm", sparsity=0.5, target_modules=["0"]))
    config = PruningConfig(structure={"type": "nm", "n": 2, "m": 8}, sparsity=0.75)
    assert PruningConfig.from_dict(config.to_dict()) == config


def test_semi_structured_conversion_names_what_it_cannot_convert():
    torch.manual_seed(0)
    dense = MLP()
    with pytest.raises(ConfigError, match="fc1 is not 2:4 sparse"):
        to_semi_structured_(dense)
    model = prune_(MLP(), PruningConfig(structure="nm", sparsity=0.5, target_modules=MODULES))
    with pytest.raises(ConfigError, match="NVIDIA GPUs.*no speedup"):
        to_semi_structured_(model)
    with pytest.raises(ConfigError, match="No nn.Linear"):
        to_semi_structured_(ConvNet(), ["conv1"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 kernels need an NVIDIA GPU")
def test_semi_structured_conversion_on_a_gpu_gives_the_same_outputs():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(128, 128))
    prune_(layer, PruningConfig(structure="nm", sparsity=0.5, target_modules=["0"]))
    layer = layer.half().cuda()
    x = torch.randn(64, 128, dtype=torch.float16, device="cuda")
    expected = layer(x)
    assert to_semi_structured_(layer) == ["0"]
    torch.testing.assert_close(layer(x), expected, rtol=1e-2, atol=1e-2)
