"""BERT-family encoders: BERT (incl. MiniLM), RoBERTa, XLM-R, ELECTRA, DistilBERT."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import ArchAdapter, register_adapter, text_example_inputs


class BertFamilyAdapter(ArchAdapter):
    """Encoder linear layers are pruned by default; embeddings, pooler and classifier stay dense."""

    def __init__(self, model_types: tuple[str, ...], default_target_modules: str) -> None:
        self.model_types = model_types
        self.default_target_modules = default_target_modules

    def example_inputs(self, model: nn.Module, batch_size: int = 1, seq_len: int = 128) -> dict[str, Any]:
        return text_example_inputs(model, batch_size, seq_len)


BERT = register_adapter(
    BertFamilyAdapter(
        model_types=("bert", "roberta", "xlm-roberta", "electra", "camembert"),
        default_target_modules=(
            r"(.*\.)?encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
            r"|intermediate\.dense|output\.dense)"
        ),
    )
)

DISTILBERT = register_adapter(
    BertFamilyAdapter(
        model_types=("distilbert",),
        default_target_modules=r"(.*\.)?transformer\.layer\.\d+\.(attention\.(q_lin|k_lin|v_lin|out_lin)|ffn\.lin[12])",
    )
)
