"""DeBERTa-v2 and v3: BERT-like post-norm layers with disentangled attention.

Relative position embeddings go through the same query/key projections (``share_att_key``, DeBERTa-v3) or through
separate ``pos_key_proj``/``pos_query_proj`` (some v2 configs); a head's rows in all of them move together, so the
separate projections are optional slices of the head group. Each relative term (``c2p``, ``p2c``) adds one
attention product per head to the FLOPs count (an estimate: their width is the relative span, not the sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..shrink import ParamSlice, UnitGroup
from .base import UNIT_SIZE, EncoderAdapter, register_adapter


@dataclass(frozen=True)
class DebertaV2Adapter(EncoderAdapter):
    def attention_products_of(self, model: nn.Module) -> int:
        config = model.config  # type: ignore[attr-defined]
        relative = getattr(config, "relative_attention", False)
        return self.attention_products + (len(config.pos_att_type or []) if relative else 0)


DEBERTA_V2 = register_adapter(
    DebertaV2Adapter(
        model_types=("deberta-v2",),
        default_target_modules=(
            r"(.*\.)?encoder\.layer\.\d+\.(attention\.self\.(query_proj|key_proj|value_proj|pos_key_proj"
            r"|pos_query_proj)|attention\.output\.dense|intermediate\.dense|output\.dense)"
        ),
        layers_path="encoder.layer",
        heads=UnitGroup(
            kind="heads",
            slices=(
                ParamSlice("attention.self.query_proj", 0),
                ParamSlice("attention.self.key_proj", 0),
                ParamSlice("attention.self.value_proj", 0),
                ParamSlice("attention.self.pos_key_proj", 0, optional=True),
                ParamSlice("attention.self.pos_query_proj", 0, optional=True),
                ParamSlice("attention.output.dense", 1),
            ),
            consumer="attention.output.dense",
            attributes=(("attention.self", "num_attention_heads", 1), ("attention.self", "all_head_size", UNIT_SIZE)),
            empty_module="attention.self",
        ),
        neurons=UnitGroup(
            kind="neurons",
            slices=(ParamSlice("intermediate.dense", 0), ParamSlice("output.dense", 1)),
            consumer="output.dense",
        ),
        attention_stream="attention.output.LayerNorm",
        ffn_stream="output.LayerNorm",
    )
)
