"""Vision Transformers from transformers (``ViTForImageClassification``): pre-norm layers with separate
query/key/value projections and a two-matrix MLP.

The sequence is fixed by the image and patch size (patches + the class token), so FLOPs are counted at that length
whatever ``flops_seq_len`` says; example inputs are random images of the configured size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..shrink import ParamSlice, UnitGroup
from .base import EncoderAdapter, register_adapter


@dataclass(frozen=True)
class ViTAdapter(EncoderAdapter):
    def sequence_length(self, model: nn.Module, requested: int) -> int:
        config = model.config  # type: ignore[attr-defined]
        return (config.image_size // config.patch_size) ** 2 + 1

    def example_inputs(self, model: nn.Module, batch_size: int = 1, seq_len: int = 128) -> dict[str, Any]:
        config = model.config  # type: ignore[attr-defined]
        generator = torch.Generator().manual_seed(0)
        shape = (batch_size, config.num_channels, config.image_size, config.image_size)
        parameter = next(model.parameters())
        pixels = torch.randn(shape, generator=generator).to(device=parameter.device, dtype=parameter.dtype)
        return {"pixel_values": pixels}


VIT = register_adapter(
    ViTAdapter(
        model_types=("vit",),
        default_target_modules=r"(.*\.)?layers\.\d+\.(attention\.(q_proj|k_proj|v_proj|o_proj)|mlp\.fc[12])",
        layers_path="layers",
        heads=UnitGroup(
            kind="heads",
            slices=(
                ParamSlice("attention.q_proj", 0),
                ParamSlice("attention.k_proj", 0),
                ParamSlice("attention.v_proj", 0),
                ParamSlice("attention.o_proj", 1),
            ),
            consumer="attention.o_proj",
            attributes=(("attention", "num_attention_heads", 1),),
            empty_module="attention",
            empty_output="o_proj",
        ),
        neurons=UnitGroup(kind="neurons", slices=(ParamSlice("mlp.fc1", 0), ParamSlice("mlp.fc2", 1)),
                          consumer="mlp.fc2"),  # fmt: skip
        attention_stream="layernorm_after",
        next_layer_stream="layernorm_before",
        final_stream="layernorm",
    )
)
