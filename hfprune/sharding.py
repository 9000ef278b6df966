"""Whole tensors from FSDP2-sharded ones, and back.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) every parameter, and its gradient, is a DTensor holding this
rank's shard outside the forward pass. Pruning decisions are made on whole weights (a mask computed from a shard is
the known failure of pruning under sharding), so the pruner gathers what it scores through `full_tensor`, keeps
masks and importance statistics whole and identical on every rank, and writes whole values back into shards with
`copy_whole_`. Without FSDP2 these functions pass tensors through untouched. `whole_grad` also reads the gradients
DeepSpeed ZeRO-1/2 keeps in its partitions. For saving, `shapes_only_copy` (taken before sharding) and
`gather_into` give rank 0 an ordinary, unsharded copy of the whole model; `shard_frozen_` shards a KD teacher.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


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


def whole_grad(param: Tensor) -> Tensor | None:
    """The gradient of ``param``, whole and reduced over ranks: assembled from the partitions DeepSpeed ZeRO-1/2
    keeps it in (valid until DeepSpeed's optimizer step), or gathered from its FSDP2 shards. A collective in both
    cases, so every rank must call it for the same parameters in the same order. ``None`` when there is none."""
    # DeepSpeed first: with bf16 and fp32 accumulation its optimizer leaves each rank's own, unreduced gradient in
    # ``param.grad`` and the reduced one in its partitions. ``_hp_mapping`` is set on every parameter it holds.
    if hasattr(param, "_hp_mapping"):
        from deepspeed.utils import safe_get_full_grad

        return safe_get_full_grad(param)
    return None if param.grad is None else full_tensor(param.grad)


@torch.no_grad()
def copy_whole_(target: Tensor, whole: Tensor) -> None:
    """Copy the whole tensor ``whole`` into ``target``, which may be an FSDP2 shard."""
    target.copy_(shard_like(whole.to(device=target.device, dtype=target.dtype), target))


def shapes_only_copy(model: nn.Module) -> nn.Module:
    """An unsharded copy of ``model`` whose parameters and persistent buffers are on the ``meta`` device.

    Taken before ``fully_shard``, it costs no memory and is what `gather_into` fills on rank 0 when the trained
    model is saved: there is no general way to rebuild an arbitrary module from its sharded self. Non-persistent
    buffers (BERT's ``position_ids``) are not in state dicts, so they are copied with their values.
    """
    memo: dict[int, object] = {}
    for module in model.modules():
        for tensor in module._parameters.values():
            if tensor is not None and id(tensor) not in memo:
                memo[id(tensor)] = nn.Parameter(torch.empty_like(tensor, device="meta"), tensor.requires_grad)
        for name, tensor in module._buffers.items():
            if tensor is not None and name not in module._non_persistent_buffers_set:
                memo[id(tensor)] = torch.empty_like(tensor, device="meta")
    return copy.deepcopy(model, memo)


def gather_into(model: nn.Module, copy_on_meta: nn.Module) -> nn.Module | None:
    """Gather the FSDP2-sharded ``model`` whole into ``copy_on_meta`` (from `shapes_only_copy`) on rank 0.

    A collective: every rank calls it; rank 0 gets the filled copy (on the CPU), the others ``None``. Parameters that
    were one object in ``model`` (tied embeddings) are one object again in the copy.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() != 0:
        return None
    tied: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in copy_on_meta.modules():
        for name, param in module._parameters.items():
            if param is not None:
                tied.setdefault(id(param), []).append((module, name))
    # assign=True: the gathered tensors become the copy's parameters, without a second copy of the model.
    copy_on_meta.load_state_dict(whole, assign=True)
    for places in tied.values():
        first_module, first_name = places[0]
        for module, name in places[1:]:
            setattr(module, name, getattr(first_module, first_name))
    return copy_on_meta


def shard_frozen_(model: nn.Module, layer_names: set[str], **fully_shard_kwargs: object) -> nn.Module:
    """Shard a frozen model (a KD teacher) with FSDP2: each module whose class is named in ``layer_names``, or in
    the model's own ``_no_split_modules``, then the model. ``fully_shard_kwargs`` go to every ``fully_shard`` call
    (mesh, ``reshard_after_forward``, mixed precision). Returns ``model``, sharded in place."""
    from torch.distributed.fsdp import fully_shard

    names = set(layer_names) | set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if module is not model and type(module).__name__ in names:
            fully_shard(module, **fully_shard_kwargs)
    fully_shard(model, **fully_shard_kwargs)
    return model
