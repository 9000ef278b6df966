"""int8 after pruning: dynamic int8 quantization of a (compacted) model's linear layers for CPU inference.

Weights become int8 with one scale per output row; activations are quantized per batch at run time (FBGEMM /
oneDNN kernels). This uses torch's own dynamic quantization (`torch.ao.quantization.quantize_dynamic`): on the
pinned torch it is the path with fast CPU kernels (torchao's int8 dynamic-activation config ran slower than
float32 on this machine's CPU; see the README). torch marks `torch.ao.quantization` deprecated,
so this module is the one place to change when it goes.

Quantized weights are packed objects that safetensors cannot hold, and hfprune writes no pickles: a folder keeps
the float weights plus `QuantizationConfig` (``quantization_config.json`` is transformers' name; this file is
``hfprune_quantization.json``), and `hfprune.load_pruned` quantizes again on load, which gives the same int8 weights
(quantization is a deterministic function of the float weights).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from .config import ConfigMixin
from .errors import ConfigError


@dataclass
class QuantizationConfig(ConfigMixin):
    """How a saved model is quantized when it is loaded (`hfprune.load_pruned`).

    Args:
        method (`str`, defaults to ``"dynamic_int8"``): int8 weights, activations quantized at run time; the only
            method so far.
    """

    config_name = "hfprune_quantization.json"

    method: Literal["dynamic_int8"] = "dynamic_int8"

    def __post_init__(self) -> None:
        if self.method != "dynamic_int8":
            raise ConfigError(f"Unknown quantization method {self.method!r}; hfprune has 'dynamic_int8'.")


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds dynamically quantized linear layers."""
    return any(type(module).__module__.startswith("torch.ao.nn.quantized") for module in model.modules())


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (float32, on CPU, masks merged) with every `nn.Linear` in dynamic int8; ``model`` is left
    as it is. Save the float model with ``extra_configs=(QuantizationConfig(),)`` to ship the int8 one.

    Raises:
        ConfigError: the model is on a GPU (these kernels are for CPU), not float32, still masked, or already
            quantized.
    """
    if is_quantized(model):
        raise ConfigError("The model is already quantized.")
    parameters = list(model.parameters())
    if any(parameter.device.type != "cpu" for parameter in parameters):
        raise ConfigError("Dynamic int8 quantization runs on the CPU (FBGEMM/oneDNN kernels): move the model with "
                          "model.cpu() first.")  # fmt: skip
    if any(parameter.dtype != torch.float32 for parameter in parameters if parameter.is_floating_point()):
        raise ConfigError("Dynamic int8 quantization starts from float32 weights: call model.float() first.")
    masked = [name for name, module in model.named_modules() if parametrize.is_parametrized(module)]
    if masked:
        raise ConfigError(
            f"{masked[0]} still carries a mask: make the pruning permanent first (Pruner.make_permanent_(), or "
            "hfprune.masks.merge_masks_(model)); quantizing a masked layer would quantize the unmasked weights."
        )
    with warnings.catch_warnings():
        # torch announces the removal of torch.ao.quantization; it is still the fast CPU path (module docstring).
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8, inplace=False)
