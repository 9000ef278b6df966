"""Structures: which weights are removed together.

A structure turns elementwise importance scores into one score per *unit* (`reduce`) and a kept/removed
decision per unit back into an elementwise mask (`expand`). Units are what sparsity counts: a block sparsity of
0.5 removes half the blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .errors import ConfigError
from .registry import Registry, SerializableComponent
from .selection import select_local


STRUCTURES: Registry[Structure] = Registry("structure")


@dataclass(frozen=True)
class Structure(SerializableComponent):
    """Base class of per-tensor structures."""

    #: Removes whole heads/neurons/channels (can reduce FLOPs) rather than single weights or blocks.
    structured: ClassVar[bool] = False

    def check(self, name: str, shape: torch.Size) -> None:
        """Raise a `ConfigError` naming ``name`` if a tensor of ``shape`` cannot be split into units."""

    def unit_size(self, shape: torch.Size) -> int:
        """Number of weight elements per unit."""
        return 1

    def reduce(self, scores: Tensor) -> Tensor:
        """Elementwise scores -> one score per unit (flat)."""
        raise TypeError(f"{type(self).__name__} must implement reduce()")

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        """Flat boolean keep-per-unit -> boolean mask of ``shape``."""
        raise TypeError(f"{type(self).__name__} must implement expand()")

    def select(self, scores: Tensor, sparsity: float) -> Tensor:
        """Flat keep-per-unit of one tensor at ``sparsity`` from its unit scores: the top-k by default; a structure
        with its own pattern (N:M) chooses within its groups."""
        return select_local(scores, sparsity)


@STRUCTURES.register("unstructured")
@dataclass(frozen=True)
class Unstructured(Structure):
    """Every weight is its own unit."""

    def reduce(self, scores: Tensor) -> Tensor:
        return scores.reshape(-1)

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        return keep.reshape(shape)


@STRUCTURES.register("blocks")
@dataclass(frozen=True)
class Blocks(Structure):
    """Rectangular blocks of ``rows x cols`` in the 2-D weight (conv kernels are flattened to ``[out, in*k*k]``).

    Block scores are the sum of their elements' scores. Block sparsity is what movement pruning uses to obtain
    sparsity patterns that kernels can exploit (Lagunas et al. 2021 use 32x32).

    Args:
        rows (`int`, defaults to 32): Block height (output dimension).
        cols (`int`, defaults to 32): Block width (input dimension).
    """

    rows: int = 32
    cols: int = 32

    def validate(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ConfigError(f"Block sizes must be positive; got rows={self.rows}, cols={self.cols}.")

    def _grid(self, shape: torch.Size) -> tuple[int, int]:
        out_features = shape[0]
        in_features = int(torch.Size(shape[1:]).numel()) if len(shape) > 1 else 1
        return out_features, in_features

    def check(self, name: str, shape: torch.Size) -> None:
        out_features, in_features = self._grid(shape)
        if out_features % self.rows or in_features % self.cols:
            raise ConfigError(
                f"Module {name!r} has a weight of shape {tuple(shape)} (as 2-D: {out_features}x{in_features}), which "
                f"is not divisible into {self.rows}x{self.cols} blocks. Choose block sizes that divide it, or exclude "
                "the module with exclude_modules."
            )

    def unit_size(self, shape: torch.Size) -> int:
        return self.rows * self.cols

    def reduce(self, scores: Tensor) -> Tensor:
        out_features, in_features = self._grid(scores.shape)
        blocks = scores.reshape(out_features // self.rows, self.rows, in_features // self.cols, self.cols)
        return blocks.sum(dim=(1, 3)).reshape(-1)

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        out_features, in_features = self._grid(shape)
        grid = keep.reshape(out_features // self.rows, in_features // self.cols)
        mask = grid.repeat_interleave(self.rows, dim=0).repeat_interleave(self.cols, dim=1)
        return mask.reshape(shape)


@STRUCTURES.register("nm", "n:m")
@dataclass(frozen=True)
class NM(Structure):
    """N:M semi-structured sparsity: in every group of ``m`` consecutive weights along the input dimension of a row,
    ``n`` are kept (2:4 is what NVIDIA Ampere and later tensor cores run faster, through
    `torch.sparse.to_sparse_semi_structured`; on CPU it is only zeros). The final sparsity is ``1 - n/m``; on a
    gradual schedule each group keeps ``m - round(sparsity * m)`` (never fewer than ``n``) along the way.

    Args:
        n (`int`, defaults to 2): Weights kept per group.
        m (`int`, defaults to 4): Group size; the input dimension (``in_features``, or ``in * kh * kw`` of a conv)
            must be a multiple of it.
    """

    n: int = 2
    m: int = 4

    def validate(self) -> None:
        if not (self.m >= 2 and 1 <= self.n < self.m):
            raise ConfigError(f"N:M sparsity needs 1 <= n < m and m >= 2; got n={self.n}, m={self.m}.")

    @property
    def sparsity(self) -> float:
        """The sparsity the pattern implies, ``1 - n/m``."""
        return 1.0 - self.n / self.m

    def check(self, name: str, shape: torch.Size) -> None:
        width = int(torch.Size(shape[1:]).numel()) if len(shape) > 1 else int(shape[0])
        if width % self.m:
            raise ConfigError(
                f"Module {name!r} has a weight of shape {tuple(shape)}, whose input dimension ({width}) is not a "
                f"multiple of m={self.m}: N:M groups cannot tile it. Exclude it (exclude_modules) or pick another m."
            )

    def reduce(self, scores: Tensor) -> Tensor:
        return scores.reshape(-1)

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        return keep.reshape(shape)

    def select(self, scores: Tensor, sparsity: float) -> Tensor:
        groups = scores.float().reshape(-1, self.m)
        kept = min(self.m, max(self.n, self.m - round(sparsity * self.m)))
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(1, groups.topk(kept, dim=1, sorted=False).indices, True)
        return keep.reshape(-1)


@STRUCTURES.register("stripes")
@dataclass(frozen=True)
class Stripes(Structure):
    """Stripes of convolution kernels (stripe-wise pruning, Meng et al. 2020): one unit is one kernel position of one
    filter across all its input channels, a 1 x 1 x C stripe, so a 3 x 3 filter has 9 units. Removing stripes
    keeps every filter (no channel disappears) but lets a filter keep only the positions that matter; a
    convolution whose stripes are gone runs as a sum of shifted 1 x 1 convolutions
    (`hfprune.stripes.compact_stripes_`). Conv2d weights only.
    """

    def check(self, name: str, shape: torch.Size) -> None:
        if len(shape) != 4:
            raise ConfigError(
                f"Module {name!r} has a weight of shape {tuple(shape)}; stripes are positions of 2-D convolution "
                "kernels (weights [out, in, kh, kw]). Target only nn.Conv2d layers (target_modules)."
            )

    def unit_size(self, shape: torch.Size) -> int:
        return shape[1]

    def reduce(self, scores: Tensor) -> Tensor:
        return scores.sum(dim=1).reshape(-1)

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        return keep.reshape(shape[0], 1, shape[2], shape[3]).expand(shape).clone()


@dataclass(frozen=True)
class ColumnGroups(Structure):
    """Groups of ``size`` consecutive input columns of one weight: the per-tensor face of heads and neurons.

    A head's (or neuron's) only path to the output is its columns of the consumer projection (attention output,
    FFN output), so masking those columns removes the unit. With learned scores the straight-through gradient a
    group receives, ``sum(dL/dW' * W)`` over its columns, equals the gradient of the loss with respect to a mask
    on the unit's output: group-level movement pruning. `Pruner` builds these from an `EncoderUnits` structure
    and the architecture adapter; users do not name them.

    Args:
        size (`int`): Columns per unit (the head size for attention heads, 1 for FFN neurons).
    """

    size: int = 1

    def check(self, name: str, shape: torch.Size) -> None:
        if len(shape) != 2 or shape[1] % self.size:
            raise ConfigError(
                f"Module {name!r} has a weight of shape {tuple(shape)}, which cannot be split into column groups of "
                f"{self.size}."
            )

    def unit_size(self, shape: torch.Size) -> int:
        return shape[0] * self.size

    def reduce(self, scores: Tensor) -> Tensor:
        return scores.reshape(scores.shape[0], -1, self.size).sum(dim=(0, 2))

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        return keep.repeat_interleave(self.size)[None, :].expand(shape).clone()


@dataclass(frozen=True)
class EncoderUnits(Structure):
    """Base of structured transformer pruning: whole attention heads and/or FFN neurons are removed.

    A head is its rows of query/key/value (weights and biases) and its columns of the attention output projection;
    a neuron is its row of the FFN input layer and column of the FFN output layer. The groups come from the
    architecture adapter; removed units are physically dropped by `hfprune.compaction.compact_`.

    Args:
        round_to (`int`, defaults to 1): Round the number of kept neurons per layer to a multiple of this (e.g. 8)
            so kept widths suit the hardware; heads are already multiples of the head size.
        uniform (`bool`, defaults to `False`): With ``target_flops``, keep the same number of heads and of neurons
            in every layer (which ones still differ per layer). Uneven layers keep more of what matters for
            accuracy; uniform ones run closer to the FLOPs-predicted speed on CPUs.
    """

    kinds: ClassVar[tuple[str, ...]] = ()
    structured: ClassVar[bool] = True
    round_to: int = 1
    uniform: bool = False

    def validate(self) -> None:
        if self.round_to < 1:
            raise ConfigError(f"round_to must be >= 1; got {self.round_to}.")

    def reduce(self, scores: Tensor) -> Tensor:
        raise TypeError(f"{type(self).__name__} is scored per head/neuron group, not per tensor.")

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        raise TypeError(f"{type(self).__name__} is applied through a PruningPlan, not per tensor.")


@STRUCTURES.register("heads")
@dataclass(frozen=True)
class Heads(EncoderUnits):
    """Prune whole attention heads (per layer, unevenly across layers)."""

    kinds: ClassVar[tuple[str, ...]] = ("heads",)


@STRUCTURES.register("neurons")
@dataclass(frozen=True)
class Neurons(EncoderUnits):
    """Prune FFN neurons (intermediate units)."""

    kinds: ClassVar[tuple[str, ...]] = ("neurons",)


@STRUCTURES.register("heads_and_neurons")
@dataclass(frozen=True)
class HeadsAndNeurons(EncoderUnits):
    """Prune attention heads and FFN neurons together (the retraining-free pruning setting of Kwon et al. 2022)."""

    kinds: ClassVar[tuple[str, ...]] = ("heads", "neurons")


@STRUCTURES.register("hybrid")
@dataclass(frozen=True)
class HybridBlocks(EncoderUnits):
    """Block movement as nn_pruning's "hybrid" (Lagunas et al. 2021): ``rows x cols`` blocks in every attention
    projection, whole neurons in the FFN (a neuron's intermediate row and output column share one score).

    Fine-pruning only (`PruningTrainer`). On save, whole neurons are removed, and so is every head whose columns of
    the attention output projection emptied out (its query/key/value rows go with it); the other blocks stay as
    zeros in the smaller weights. ``PruningConfig.sparsity`` applies to blocks and neurons alike; set another for
    the FFN with ``sparsity_overrides`` (e.g. ``{"re:.*output\\.dense$": 0.5}`` on BERT).

    Args:
        rows (`int`, defaults to 32): Block height of the attention projections (output dimension).
        cols (`int`, defaults to 32): Block width (input dimension).
    """

    kinds: ClassVar[tuple[str, ...]] = ("neurons",)
    rows: int = 32
    cols: int = 32

    def validate(self) -> None:
        super().validate()
        Blocks(self.rows, self.cols).validate()

    @property
    def attention_blocks(self) -> Blocks:
        return Blocks(self.rows, self.cols)


@STRUCTURES.register("channels")
@dataclass(frozen=True)
class Channels(Structure):
    """Prune CNN output channels (filters) together with everything coupled to them.

    Coupled layers (batch norms, the next convolution's input channels, depthwise convolutions, concatenations,
    the classifier's input) are found by Torch-Pruning's dependency graph. With ``keep_residual_width`` (default),
    channels tied to a residual addition are left alone: pruning block-internal widths is what CPUs reward.

    Args:
        round_to (`int`, defaults to 1): Round kept channels per layer to a multiple of this.
        keep_residual_width (`bool`, defaults to `True`): Skip channel groups that span a residual addition.
    """

    structured: ClassVar[bool] = True
    round_to: int = 1
    keep_residual_width: bool = True

    def validate(self) -> None:
        if self.round_to < 1:
            raise ConfigError(f"round_to must be >= 1; got {self.round_to}.")

    def reduce(self, scores: Tensor) -> Tensor:
        raise TypeError("Channels are scored per dependency group, not per tensor.")

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        raise TypeError("Channels are applied through a ChannelPlan, not per tensor.")
