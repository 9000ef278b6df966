"""N:M weights in the formats hardware runs faster: 2:4 linear layers as `torch.sparse.SparseSemiStructuredTensor`.

`structure="nm"` (`hfprune.structures.NM`) leaves zeros in an N:M pattern. NVIDIA GPUs from Ampere on multiply 2:4
weights about twice as fast in fp16/bf16 through `torch.sparse.to_sparse_semi_structured`; `to_semi_structured_`
converts the linear layers that qualify and names the ones that do not. On CPU there is no such kernel: the zeros
stay zeros in a dense matrix and run as fast as the dense model (measured in the README), so conversion is
refused there with that explanation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .errors import ConfigError
from .targets import resolve_targets


def nm_violations(weight: Tensor, n: int = 2, m: int = 4) -> int:
    """Number of groups of ``m`` consecutive weights along the input dimension with more than ``n`` non-zeros."""
    width = weight[0].numel() if weight.dim() > 1 else weight.numel()
    if width % m:
        raise ConfigError(f"A weight of shape {tuple(weight.shape)} has an input dimension not divisible by {m}.")
    return int((weight.detach().reshape(-1, m).ne(0).sum(dim=1) > n).sum())


def to_semi_structured_(model: nn.Module, target_modules: str | list[str] | None = None) -> list[str]:
    """Replace the weights of the 2:4-sparse linear layers of ``model`` (all by default) by semi-structured sparse
    tensors, in place; returns the names converted.

    Raises:
        ConfigError: no CUDA device holds the model (there is no CPU kernel); a targeted layer is not 2:4 sparse,
            still carries a mask, has a dtype other than fp16/bf16, or a shape the kernels refuse (each named).
    """
    layers = resolve_targets(model, target_modules, None) if target_modules is not None else {
        name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)
    }  # fmt: skip
    layers = {name: module for name, module in layers.items() if isinstance(module, nn.Linear)}
    if not layers:
        raise ConfigError("No nn.Linear layer to convert to 2:4 semi-structured sparsity.")
    problems = []
    for name, layer in layers.items():
        if parametrize.is_parametrized(layer):
            problems.append(f"{name} still has a mask (make it permanent first: Pruner.make_permanent_())")
        elif layer.weight.shape[1] % 4:
            problems.append(f"{name} has {layer.weight.shape[1]} inputs, not a multiple of 4")
        elif nm_violations(layer.weight, 2, 4):
            problems.append(f"{name} is not 2:4 sparse ({nm_violations(layer.weight, 2, 4)} groups of 4 hold more "
                            "than 2 non-zeros; prune it with structure={'type': 'nm', 'n': 2, 'm': 4})")  # fmt: skip
    if problems:
        raise ConfigError("Cannot convert to 2:4 semi-structured sparsity: " + "; ".join(problems) + ".")
    devices = {layer.weight.device.type for layer in layers.values()}
    if devices != {"cuda"}:
        raise ConfigError(
            f"2:4 semi-structured kernels run on NVIDIA GPUs (compute capability 8.0+); these layers are on "
            f"{sorted(devices)}. On CPU the 2:4 zeros give no speedup: keep the dense weights there, or move the "
            "model to a GPU (model.half().cuda()) before converting."
        )
    converted = []
    for name, layer in layers.items():
        if layer.weight.dtype not in (torch.float16, torch.bfloat16):
            raise ConfigError(f"{name} is {layer.weight.dtype}; 2:4 semi-structured kernels take fp16 or bf16.")
        try:
            sparse = torch.sparse.to_sparse_semi_structured(layer.weight.detach())
        except (RuntimeError, ValueError) as err:
            raise ConfigError(
                f"torch cannot make {name} ({tuple(layer.weight.shape)}) semi-structured: {err}"
            ) from None
        layer.weight = nn.Parameter(sparse, requires_grad=False)
        converted.append(name)
    return converted
