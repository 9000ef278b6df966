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
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if model_type == "distilbert":
        sizes = dict(dim=32, n_layers=2, n_heads=4, hidden_dim=37)
    else:
        sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    if model_type == "electra":
        sizes["embedding_size"] = 32
    config = AutoConfig.for_model(
        model_type, vocab_size=100, max_position_embeddings=64, num_labels=num_labels, pad_token_id=1, **sizes
    )
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config).eval()
