"""BERT-family encoders: BERT (incl. MiniLM), RoBERTa, XLM-R, ELECTRA, CamemBERT, DistilBERT.

Post-norm layers with separate query/key/value projections and a two-matrix FFN. Everything hfprune knows about
them is the data below.
"""

from __future__ import annotations

import dataclasses

from ..shrink import ParamSlice, UnitGroup
from .base import UNIT_SIZE, EncoderAdapter, register_adapter


BERT = register_adapter(
    EncoderAdapter(
        model_types=("bert", "electra"),
        default_target_modules=(
            r"(.*\.)?encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
            r"|intermediate\.dense|output\.dense)"
        ),
        layers_path="encoder.layer",
        heads=UnitGroup(
            kind="heads",
            slices=(
                ParamSlice("attention.self.query", 0),
                ParamSlice("attention.self.key", 0),
                ParamSlice("attention.self.value", 0),
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

# RoBERTa-style models: the same layout; their positions start after padding_idx (two fewer usable positions).
ROBERTA = register_adapter(
    dataclasses.replace(BERT, model_types=("roberta", "xlm-roberta", "camembert"), reserved_positions=2)
)

DISTILBERT = register_adapter(
    EncoderAdapter(
        model_types=("distilbert",),
        default_target_modules=r"(.*\.)?transformer\.layer\.\d+\.(attention\.(q_lin|k_lin|v_lin|out_lin)|ffn\.lin[12])",
        layers_path="transformer.layer",
        heads=UnitGroup(
            kind="heads",
            slices=(
                ParamSlice("attention.q_lin", 0),
                ParamSlice("attention.k_lin", 0),
                ParamSlice("attention.v_lin", 0),
                ParamSlice("attention.out_lin", 1),
            ),
            consumer="attention.out_lin",
            attributes=(("attention", "n_heads", 1),),
            # The output projection belongs to the attention module: it is kept, under its name, when no head is.
            empty_module="attention",
            empty_output="out_lin",
        ),
        neurons=UnitGroup(kind="neurons", slices=(ParamSlice("ffn.lin1", 0), ParamSlice("ffn.lin2", 1)),
                          consumer="ffn.lin2"),  # fmt: skip
        attention_stream="sa_layer_norm",
        ffn_stream="output_layer_norm",
        neurons_config_attribute="hidden_dim",
    )
)
