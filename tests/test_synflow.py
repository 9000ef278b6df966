"""Pruning at initialization: SynFlow (data-free, iterative) and SNIP-style gradient x weight."""

import pytest
import torch
from torch import nn

from hfprune import ConfigError, MissingDataError, Pruner, PruningConfig, SynFlowImportance, TaylorImportance, prune_
from hfprune.calibration import synaptic_flow_backward

from .models import MLP, ConvNet, tiny_bert


MODULES = ["fc1", "fc2", "head"]


def synflow(sparsity, iterations=20, input_shape=(16,), **extra):
    importance = {"type": "synflow", "iterations": iterations}
    if input_shape is not None:
        importance["input_shape"] = list(input_shape)
    return PruningConfig(sparsity=sparsity, importance=importance, scope="global", target_modules=MODULES, **extra)


def kept(model):
    return {name: int((getattr(model, name).weight != 0).sum()) for name in MODULES}


def test_synflow_needs_no_data_reaches_the_sparsity_and_keeps_values():
    torch.manual_seed(0)
    model = MLP()
    before = {name: getattr(model, name).weight.detach().clone() for name in MODULES}
    prune_(model, synflow(0.9))
    total = sum(before[name].numel() for name in MODULES)
    assert sum(kept(model).values()) == round(total * 0.1)
    for name in MODULES:
        weight = getattr(model, name).weight
        survivors = weight != 0
        assert torch.equal(weight[survivors], before[name][survivors])  # signs and values back after |theta|
        assert weight.dtype == torch.float32 and weight.grad is None
        assert not hasattr(getattr(model, name), "parametrizations")
    assert model.training


class Funnel(nn.Module):
    """No biases (SynFlow's conservation is over paths through weights; a bias feeds flow past earlier layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = (
            nn.Linear(16, 64, bias=False),
            nn.Linear(64, 256, bias=False),
            nn.Linear(256, 4, bias=False),
        )

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.mark.parametrize("sparsity", [0.99, 0.998])
def test_synflow_avoids_the_layer_collapse_that_magnitude_suffers(sparsity):
    # Kaiming-uniform init gives wide layers small weights: global magnitude empties fc2 and head at extreme
    # sparsity, cutting the network off (Tanaka et al.'s layer collapse); SynFlow keeps a path through every layer.
    torch.manual_seed(0)
    by_magnitude = prune_(Funnel(), PruningConfig(sparsity=sparsity, scope="global", target_modules=MODULES))
    assert kept(by_magnitude)["fc2"] == 0 and float(by_magnitude(torch.ones(1, 16)).abs().sum()) == 0
    torch.manual_seed(0)
    by_synflow = prune_(Funnel(), synflow(sparsity, iterations=50))
    assert min(kept(by_synflow).values()) > 0 and sum(kept(by_synflow).values()) == round(18432 * (1 - sparsity))
    assert float(by_synflow(torch.ones(1, 16)).abs().sum()) > 0


def test_synflow_reads_the_input_shape_from_a_dataloader_and_refuses_what_it_cannot_feed():
    torch.manual_seed(0)
    config = PruningConfig(sparsity=0.5, importance={"type": "synflow", "iterations": 5}, scope="global",
                           target_modules=["conv1", "conv2", "fc"])  # fmt: skip
    net = ConvNet()
    prune_(net, config, [(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))])
    assert float((net.conv1.weight == 0).float().mean()) > 0
    with pytest.raises(MissingDataError, match="input_shape"):
        prune_(ConvNet(), config)
    with pytest.raises(ConfigError, match="token ids"):
        prune_(tiny_bert(), PruningConfig(sparsity=0.5, importance={"type": "synflow", "input_shape": [8]}))
    with pytest.raises(ConfigError, match="iterations"):
        SynFlowImportance(iterations=0)
    with pytest.raises(ConfigError, match="input_shape"):
        SynFlowImportance(input_shape=(0, 3))


def test_synflow_in_a_training_loop_says_to_use_prune_():
    pruner = Pruner(MLP(), synflow(0.5))
    with pytest.raises(ConfigError, match="prune_"):
        pruner.apply_sparsity_(0.5)


def test_synflow_config_round_trips():
    config = synflow(0.9, input_shape=(3, 32, 32))
    again = PruningConfig.from_dict(config.to_dict())
    assert again == config and again.importance.input_shape == (3, 32, 32)


def test_synaptic_flow_backward_changes_only_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    net.train()
    state = {key: value.clone() for key, value in net.state_dict().items()}
    synaptic_flow_backward(net, (3, 8, 8))
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]) and value.dtype == state[key].dtype
    assert net.training and net[0].weight.grad.dtype == torch.float32
    # The objective's gradient with |theta| is positive wherever a path reaches the output.
    assert bool((net[4].weight.grad >= 0).all()) and float(net[4].weight.grad.sum()) > 0


def test_snip_is_gradient_times_weight_at_initialization():
    config = PruningConfig(sparsity=0.5, importance="snip", target_modules=MODULES)
    assert isinstance(config.importance, TaylorImportance)
    torch.manual_seed(0)
    model = MLP()
    prune_(model, config, [(torch.randn(8, 16), torch.randint(0, 4, (8,)))])
    assert float((model.fc1.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
