"""Toy models for tests, built offline from configs."""

import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification


def tiny_bert(num_labels: int = 2, **overrides) -> BertForSequenceClassification:
    settings = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    config = BertConfig(**{**settings, **overrides})
    return BertForSequenceClassification(config).eval()


def bert_batch(batch_size: int = 4, seq_len: int = 12, vocab_size: int = 100, labels: bool = True) -> dict:
    generator = torch.Generator().manual_seed(1)
    batch = {
        "input_ids": torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
    }
    if labels:
        batch["labels"] = torch.randint(0, 2, (batch_size,), generator=generator)
    return batch


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class NoWeights(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


def tiny_encoder(model_type: str, num_labels: int = 2):
    """A tiny sequence classifier of any BERT-family architecture hfprune supports (2 layers, 4 heads, FFN 37)."""
    from transformers import AutoModelForSequenceClassification

    config = _bert_family_config(model_type)
    config.num_labels = num_labels
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config).eval()


# ------------------------------------------------------------------------------ one tiny model per family
def _text_config(model_type: str, **extra):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, vocab_size=100, max_position_embeddings=64, num_labels=2,
                                **extra)  # fmt: skip


def _build(config, attn_implementation: str | None):
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    torch.manual_seed(0)
    auto = AutoModelForImageClassification if config.model_type == "vit" else AutoModelForSequenceClassification
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    return auto.from_config(config, **kwargs).eval()


def _modernbert_config():
    # Three layers with a global layer every second one: layers 0 and 2 attend globally, layer 1 in a window.
    return _text_config(
        "modernbert", hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
        global_attn_every_n_layers=2, local_attention=8, pad_token_id=1, eos_token_id=2, bos_token_id=3,
        cls_token_id=3, sep_token_id=2,
    )  # fmt: skip


def _deberta_config(share_att_key: bool):
    return _text_config(
        "deberta-v2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=-1,
        share_att_key=share_att_key, position_biased_input=False, norm_rel_ebd="layer_norm", pad_token_id=1,
    )  # fmt: skip


def _vit_config():
    from transformers import ViTConfig

    return ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=37, num_labels=3)  # fmt: skip


def _bert_family_config(model_type: str):
    if model_type == "distilbert":
        sizes = dict(dim=32, n_layers=2, n_heads=4, hidden_dim=37)
    else:
        sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    if model_type == "electra":
        sizes["embedding_size"] = 32
    return _text_config(model_type, pad_token_id=1, **sizes)


#: Every family variant the invariant tests build: name -> (model_type, config factory). Each registered
#: structured model type needs at least one (a test checks), so a new adapter cannot land untested.
FAMILY_CASES = {
    **{t: (t, lambda t=t: _bert_family_config(t))
       for t in ("bert", "roberta", "xlm-roberta", "electra", "camembert", "distilbert")},
    "modernbert": ("modernbert", _modernbert_config),
    "deberta-v2": ("deberta-v2", lambda: _deberta_config(share_att_key=True)),
    "deberta-v2-separate-position-projections": ("deberta-v2", lambda: _deberta_config(share_att_key=False)),
    "vit": ("vit", _vit_config),
}  # fmt: skip


def family_model(case: str, attn_implementation: str | None = None):
    """A tiny classifier of the family variant ``case`` (see `FAMILY_CASES`)."""
    return _build(FAMILY_CASES[case][1](), attn_implementation)


def family_batch(model, batch_size: int = 4, labels: bool = True, seed: int = 1) -> dict:
    """A batch of inputs (and labels) for ``model``: token ids for text, random images for ViT."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    if config.model_type == "vit":
        batch = {"pixel_values": torch.randn(batch_size, 3, config.image_size, config.image_size,
                                             generator=generator)}  # fmt: skip
    else:
        batch = {
            "input_ids": torch.randint(4, 100, (batch_size, 12), generator=generator),
            "attention_mask": torch.ones(batch_size, 12, dtype=torch.long),
        }
        batch["attention_mask"][0, 9:] = 0  # one padded example
    if labels:
        batch["labels"] = torch.randint(0, config.num_labels, (batch_size,), generator=generator)
    return batch
