"""Whole tensors from FSDP2-sharded ones, and back.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) every parameter, and its gradient, is a DTensor holding this
rank's shard outside the forward pass. Pruning decisions are made on whole weights (a mask computed from a shard is
the known failure of pruning under sharding), so the pruner gathers what it scores through `full_tensor`, keeps
masks and importance statistics whole and identical on every rank, and writes whole values back into shards with
`copy_whole_`. Without FSDP2 these functions pass tensors through untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor


def is_sharded(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (an FSDP2 parameter, or its gradient, outside the forward pass)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensor(tensor: Tensor) -> Tensor:
    """``tensor`` whole, as a plain tensor. A DTensor is gathered from every rank: a collective, so every rank must
    call it for the same tensors in the same order."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor  # type: ignore[attr-defined]


def shard_like(whole: Tensor, like: Tensor) -> Tensor:
    """This rank's part of ``whole`` (the same on every rank), laid out as the DTensor ``like``; no communication."""
    if not is_sharded(like):
        return whole
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)  # type: ignore[attr-defined]


@torch.no_grad()
def copy_whole_(target: Tensor, whole: Tensor) -> None:
    """Copy the whole tensor ``whole`` into ``target``, which may be an FSDP2 shard."""
    target.copy_(shard_like(whole.to(device=target.device, dtype=target.dtype), target))
