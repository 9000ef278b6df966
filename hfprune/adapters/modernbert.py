"""ModernBERT: pre-norm layers, a fused query/key/value projection (``Wqkv``), a gated FFN input (``Wi``: value and
gate halves, two rows per neuron), no biases, alternating global and sliding-window attention.

Neither the attention nor the FFN reads a head or neuron count (their reshapes use ``-1``), so shrinking the
slices is all compaction needs; attention layers with every head removed are skipped.
"""

from __future__ import annotations

from ..shrink import ParamSlice, UnitGroup
from .base import EncoderAdapter, register_adapter


MODERNBERT = register_adapter(
    EncoderAdapter(
        model_types=("modernbert",),
        default_target_modules=r"(.*\.)?layers\.\d+\.(attn\.(Wqkv|Wo)|mlp\.(Wi|Wo))",
        layers_path="layers",
        heads=UnitGroup(
            kind="heads",
            # Wqkv's rows are [query heads | key heads | value heads]: three parts, each laid out head by head.
            slices=(ParamSlice("attn.Wqkv", 0, parts=3), ParamSlice("attn.Wo", 1)),
            consumer="attn.Wo",
            empty_module="attn",
            empty_output="Wo",
        ),
        neurons=UnitGroup(
            kind="neurons",
            # Wi's rows are [value half | gate half] (``chunk(2)``): neuron n owns rows n and intermediate + n.
            slices=(ParamSlice("mlp.Wi", 0, parts=2), ParamSlice("mlp.Wo", 1)),
            consumer="mlp.Wo",
        ),
        attention_stream="mlp_norm",
        next_layer_stream="attn_norm",
        final_stream="final_norm",
    )
)
