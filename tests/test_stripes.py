"""Stripe-wise pruning: stripe masks, the filter skeleton and its penalty, and the convolution that skips stripes."""

import pytest
import torch
from torch import nn

from hfprune import ConfigError, PruningConfig, prune_
from hfprune.stripes import (
    FilterSkeletonL1,
    StripeConv2d,
    attach_filter_skeleton_,
    compact_stripes_,
    merge_filter_skeleton_,
)

from .models import ConvNet


def test_stripe_masks_zero_whole_stripes_across_input_channels():
    torch.manual_seed(0)
    net = ConvNet()
    prune_(net, PruningConfig(sparsity=0.5, structure="stripes", target_modules=["conv1", "conv2"]))
    for conv in (net.conv1, net.conv2):
        zero = conv.weight == 0
        stripe_zero = zero.all(dim=1)
        assert torch.equal(zero, stripe_zero[:, None].expand_as(zero))  # a stripe is all gone or all kept
        assert int(stripe_zero.sum()) == conv.weight.shape[0] * 9 // 2
    with pytest.raises(ConfigError, match="nn.Conv2d"):
        prune_(net, PruningConfig(sparsity=0.5, structure="stripes", target_modules=["fc"]))


@pytest.mark.parametrize("stride, padding, dilation, bias", [(1, 1, 1, True), (2, 1, 1, False), (1, 2, 2, True),
                                                             (2, 0, 1, True)])  # fmt: skip
def test_the_stripe_convolution_gives_the_masked_outputs(stride, padding, dilation, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, stride=stride, padding=padding, dilation=dilation, bias=bias)
    keep = torch.rand(8, 3, 3) > 0.6
    keep[3] = False  # a filter with no stripe left still gives its bias
    with torch.no_grad():
        conv.weight.mul_(keep[:, None].float())
    stripe = StripeConv2d.from_conv(conv)
    assert stripe.kept_fraction() == pytest.approx(float(keep.float().mean()))
    x = torch.randn(2, 6, 11, 9)
    torch.testing.assert_close(stripe(x), conv(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="groups"):
        StripeConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2))


def test_compact_replaces_only_convolutions_with_removed_stripes():
    torch.manual_seed(0)
    net = ConvNet()
    prune_(net, PruningConfig(sparsity=0.75, structure="stripes", target_modules=["conv2"]))
    x = torch.randn(2, 3, 8, 8)
    expected = net(x)
    replaced = compact_stripes_(net)
    assert list(replaced) == ["conv2"] and replaced["conv2"] == pytest.approx(0.25, abs=0.01)
    assert isinstance(net.conv2, StripeConv2d) and type(net.conv1) is nn.Conv2d
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


def test_filter_skeleton_trains_under_its_penalty_and_merges_into_stripes():
    torch.manual_seed(0)
    net = ConvNet()
    x = torch.randn(4, 3, 8, 8)
    before = net(x).detach()
    skeletons = attach_filter_skeleton_(net)
    assert set(skeletons) == {"conv1", "conv2"} and skeletons["conv2"].shape == (16, 1, 3, 3)
    torch.testing.assert_close(net(x), before)  # a skeleton of ones changes nothing
    penalty = FilterSkeletonL1(weight=0.01).bind(net)
    assert float(penalty()) == pytest.approx(0.01 * (8 + 16) * 9)
    (net(x).sum() + penalty()).backward()
    assert skeletons["conv2"].grad is not None and skeletons["conv2"].grad.abs().sum() > 0
    with torch.no_grad():
        skeletons["conv2"][:8] = 0.01  # below the threshold: removed
        skeletons["conv2"][8:] = 0.5  # kept, and folded into the weights
        weight = net.conv2.parametrizations.weight.original.clone()
    kept = merge_filter_skeleton_(net, threshold=0.05)
    assert kept["conv2"][:8].sum() == 0 and bool(kept["conv2"][8:].all()) and bool(kept["conv1"].all())
    assert not hasattr(net.conv2, "parametrizations")
    torch.testing.assert_close(net.conv2.weight[8:], weight[8:] * 0.5)
    assert bool((net.conv2.weight[:8] == 0).all())
    with pytest.raises(ConfigError, match="attach_filter_skeleton_"):
        FilterSkeletonL1(weight=0.01).bind(ConvNet())
    with pytest.raises(ConfigError, match="Linear"):
        attach_filter_skeleton_(ConvNet(), ["fc"])
