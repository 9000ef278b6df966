"""BERT-family encoders: BERT (incl. MiniLM), RoBERTa, XLM-R, ELECTRA, CamemBERT, DistilBERT.

Everything hfprune knows about these models is the data below: where the layers are, which linear layers make up
attention heads and FFN neurons, and which attributes hold the head count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .base import ArchAdapter, register_adapter, text_example_inputs


@dataclass(frozen=True)
class EncoderLayout:
    """Module names of one encoder family, relative to each layer (``layers`` is found by suffix)."""

    layers: str
    query: str
    key: str
    value: str
    attention_output: str
    ffn_in: str
    ffn_out: str
    self_attention: str
    num_heads_attribute: str
    all_head_size_attribute: str | None
    #: LayerNorms right after the attention and FFN residual additions: their input is sublayer output + residual.
    attention_norm: str
    ffn_norm: str


class BertFamilyAdapter(ArchAdapter):
    """Encoder linear layers are pruned by default; embeddings, pooler and classifier stay dense."""

    def __init__(self, model_types: tuple[str, ...], default_target_modules: str, layout: EncoderLayout) -> None:
        self.model_types = model_types
        self.default_target_modules = default_target_modules
        self.layout = layout

    def example_inputs(self, model: nn.Module, batch_size: int = 1, seq_len: int = 128) -> dict[str, Any]:
        return text_example_inputs(model, batch_size, seq_len)


BERT_LAYOUT = EncoderLayout(
    layers="encoder.layer",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attention_output="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
    self_attention="attention.self",
    num_heads_attribute="num_attention_heads",
    all_head_size_attribute="all_head_size",
    attention_norm="attention.output.LayerNorm",
    ffn_norm="output.LayerNorm",
)

BERT = register_adapter(
    BertFamilyAdapter(
        model_types=("bert", "roberta", "xlm-roberta", "electra", "camembert"),
        default_target_modules=(
            r"(.*\.)?encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
            r"|intermediate\.dense|output\.dense)"
        ),
        layout=BERT_LAYOUT,
    )
)

DISTILBERT = register_adapter(
    BertFamilyAdapter(
        model_types=("distilbert",),
        default_target_modules=r"(.*\.)?transformer\.layer\.\d+\.(attention\.(q_lin|k_lin|v_lin|out_lin)|ffn\.lin[12])",
        layout=EncoderLayout(
            layers="transformer.layer",
            query="attention.q_lin",
            key="attention.k_lin",
            value="attention.v_lin",
            attention_output="attention.out_lin",
            ffn_in="ffn.lin1",
            ffn_out="ffn.lin2",
            self_attention="attention",
            num_heads_attribute="n_heads",
            all_head_size_attribute=None,
            attention_norm="sa_layer_norm",
            ffn_norm="output_layer_norm",
        ),
    )
)
