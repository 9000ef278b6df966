"""Stripe-wise pruning (SWP, Meng et al. 2020, "Pruning Filter in Filter"): a learned filter skeleton, and the
convolution that skips pruned stripes.

A stripe is one kernel position of one filter across all input channels (`hfprune.structures.Stripes`). SWP
multiplies every convolution weight by a *filter skeleton* ``FS`` (one value per stripe, starting at 1), trains
with an L1 penalty on it (`FilterSkeletonL1`), then removes the stripes whose ``|FS|`` fell below a threshold and
folds ``FS`` into the weights (`merge_filter_skeleton_`). Stripe masks can also come from any criterion through
the engine (``PruningConfig(structure="stripes", importance="magnitude")``, one-shot or gradual).

`compact_stripes_` then replaces each such convolution by a `StripeConv2d`: one 1 x 1 convolution computing every
kept stripe at once, whose outputs are shifted to their kernel position and summed into their filter. Whether
that is faster than the dense convolution depends on the device and the sparsity: see the README's measurements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .errors import ConfigError
from .regularizers import Regularizer
from .targets import resolve_targets


class FilterSkeleton(nn.Module):
    """Parametrization multiplying a conv weight ``[out, in, kh, kw]`` by a learned ``[out, 1, kh, kw]`` skeleton."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        out_channels, _, height, width = weight.shape
        self.skeleton = nn.Parameter(torch.ones(out_channels, 1, height, width, dtype=weight.dtype,
                                                device=weight.device))  # fmt: skip

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.skeleton


def _convolutions(model: nn.Module, target_modules: str | list[str] | None) -> dict[str, nn.Conv2d]:
    if target_modules is None:
        found = {name: m for name, m in model.named_modules() if type(m) is nn.Conv2d}
    else:
        found = resolve_targets(model, target_modules, None)
    for name, module in found.items():
        if not isinstance(module, nn.Conv2d):
            raise ConfigError(f"{name!r} is a {type(module).__name__}; stripes belong to nn.Conv2d layers only.")
    if not found:
        raise ConfigError("The model has no nn.Conv2d layer to give a filter skeleton.")
    return found  # type: ignore[return-value]


def attach_filter_skeleton_(model: nn.Module, target_modules: str | list[str] | None = None) -> dict[str, Tensor]:
    """Give every targeted convolution (default: all `nn.Conv2d`) a filter skeleton of ones; returns the skeleton
    parameters by module name (train them with the model; the optimizer picks them up with ``model.parameters()``).
    """
    skeletons = {}
    for name, conv in _convolutions(model, target_modules).items():
        if filter_skeleton(conv) is None:
            parametrize.register_parametrization(conv, "weight", FilterSkeleton(conv.weight))
        skeletons[name] = filter_skeleton(conv).skeleton  # type: ignore[union-attr]
    return skeletons


def filter_skeleton(module: nn.Module) -> FilterSkeleton | None:
    """The `FilterSkeleton` on ``module.weight``, if any."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, FilterSkeleton)), None)  # type: ignore


@dataclass(frozen=True)
class FilterSkeletonL1(Regularizer):
    """SWP's penalty: ``weight * sum |FS|`` over every filter skeleton in the model (`attach_filter_skeleton_`).

    Args:
        weight (`float`): Penalty weight (alpha; the paper uses 1e-5 to 5e-5 on CIFAR with its 160-epoch runs).
    """

    weight: float
    log_name = "filter_skeleton_l1"

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"The filter skeleton penalty weight must be >= 0; got {self.weight}.")

    def bind(self, model: nn.Module) -> Callable[[], Tensor]:
        skeletons = [fs.skeleton for fs in model.modules() if isinstance(fs, FilterSkeleton)]
        if not skeletons:
            raise ConfigError("FilterSkeletonL1 needs filter skeletons: call attach_filter_skeleton_(model) first.")
        return lambda: self.weight * sum(skeleton.abs().sum() for skeleton in skeletons)  # type: ignore[return-value]


@torch.no_grad()
def merge_filter_skeleton_(model: nn.Module, threshold: float = 0.05) -> dict[str, Tensor]:
    """Fold every filter skeleton into its weights and zero the stripes whose ``|FS|`` is below ``threshold`` (the
    paper's 0.05 after its L1 training). Returns the kept-stripe masks ``{module name: bool [out, kh, kw]}``."""
    kept = {}
    for name, module in model.named_modules():
        skeleton = filter_skeleton(module)
        if skeleton is None:
            continue
        keep = skeleton.skeleton.abs() >= threshold
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        module.weight.mul_(keep.to(module.weight.dtype))
        kept[name] = keep[:, 0].clone()
    if not kept:
        raise ConfigError("The model has no filter skeleton to merge.")
    return kept


class StripeConv2d(nn.Module):
    """A `nn.Conv2d` that computes only its kept stripes: one 1 x 1 convolution over the padded input for all of them,
    each output then cropped at its kernel position (with the stride and dilation) and added to its filter.

    Built by `from_conv`; equal to the convolution with the pruned stripes zeroed, up to float summation order.
    """

    def __init__(self, conv: nn.Conv2d, keep: Tensor) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ConfigError(
                "StripeConv2d handles ungrouped convolutions with numeric zero padding; this one has groups="
                f"{conv.groups}, padding={conv.padding!r}, padding_mode={conv.padding_mode!r}."
            )
        out_channels, in_channels, height, width = conv.weight.shape
        self.out_channels, self.kernel_size = out_channels, (height, width)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        positions, filters, rows = [], [], []
        for i in range(height):
            for j in range(width):
                kept_filters = keep[:, i, j].nonzero().flatten()
                if len(kept_filters):
                    positions.append((i, j, len(kept_filters)))
                    filters.append(kept_filters)
                    rows.append(conv.weight.detach()[kept_filters, :, i, j])
        self.positions = positions
        weight = torch.cat(rows) if rows else conv.weight.new_zeros(0, in_channels)
        self.weight = nn.Parameter(weight[:, :, None, None].contiguous())
        self.register_buffer("filters", torch.cat(filters) if filters else torch.zeros(0, dtype=torch.long))
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> StripeConv2d:
        """The stripe form of ``conv``, keeping the stripes with a non-zero weight."""
        return cls(conv, conv.weight.detach().ne(0).any(dim=1))

    def kept_fraction(self) -> float:
        return int(self.filters.numel()) / (self.out_channels * self.kernel_size[0] * self.kernel_size[1])

    def forward(self, x: Tensor) -> Tensor:
        batch, _, in_height, in_width = x.shape
        (pad_h, pad_w), (stride_h, stride_w), (dil_h, dil_w) = self.padding, self.stride, self.dilation
        height, width = self.kernel_size
        out_height = (in_height + 2 * pad_h - dil_h * (height - 1) - 1) // stride_h + 1
        out_width = (in_width + 2 * pad_w - dil_w * (width - 1) - 1) // stride_w + 1
        out = x.new_zeros(batch, self.out_channels, out_height, out_width)
        if self.positions:
            padded = nn.functional.pad(x, (pad_w, pad_w, pad_h, pad_h))
            stripes = nn.functional.conv2d(padded, self.weight)
            start = 0
            for i, j, count in self.positions:
                top, left = i * dil_h, j * dil_w
                window = stripes[:, start : start + count, top : top + stride_h * (out_height - 1) + 1 : stride_h,
                                 left : left + stride_w * (out_width - 1) + 1 : stride_w]  # fmt: skip
                out.index_add_(1, self.filters[start : start + count], window)
                start += count
        if self.bias is not None:
            out = out + self.bias[None, :, None, None]
        return out


def compact_stripes_(model: nn.Module, min_removed: float = 0.0) -> dict[str, float]:
    """Replace every `nn.Conv2d` that has removed stripes (all-zero ``[:, i, j]`` slices of a filter) by a
    `StripeConv2d`, when at least ``min_removed`` of its stripes are gone. Masks and skeletons must be merged
    first. Returns the kept stripe fraction of each replaced convolution."""
    replaced = {}
    for name, conv in list(model.named_modules()):
        if type(conv) is not nn.Conv2d or conv.groups != 1:
            continue
        if parametrize.is_parametrized(conv):
            raise ConfigError(f"{name!r} still has a mask or skeleton: merge it first (merge_masks_, "
                              "merge_filter_skeleton_).")  # fmt: skip
        stripe = StripeConv2d.from_conv(conv)
        if 1.0 - stripe.kept_fraction() <= min_removed or stripe.kept_fraction() == 1.0:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, stripe)
        replaced[name] = stripe.kept_fraction()
    return replaced
