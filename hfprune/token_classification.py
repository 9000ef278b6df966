"""Token classification (NER, chunking, POS) data and evaluation for `AutoModelFor...TokenClassification` models.

Data: CoNLL-style text files (one token per line, its tag in the last whitespace-separated column, a blank line
between sentences, ``-DOCSTART-`` lines skipped), or JSON/JSONL/Parquet rows with a list of tokens and a list of
tags. Tags become the model's label ids (``config.label2id``); the label goes on each word's first sub-token and
the others get -100 (ignored by the loss), as transformers' token-classification examples do. Evaluation is
entity-level F1 (``hfprune/metrics/seqeval_metric.py``, loaded offline with `evaluate`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data import DataError, head_outputs


SEQEVAL_METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "seqeval_metric.py"
CONLL_SUFFIXES = (".txt", ".conll", ".iob", ".bio", ".tsv")


def read_tagged(path: str | os.PathLike, tokens_column: str = "tokens", tags_column: str = "tags") -> list[dict]:
    """``[{"tokens": [...], "tags": [...]}, ...]`` from a CoNLL-style text file or a JSON(L)/Parquet file."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file} does not exist (or is a folder); pass a CoNLL-style text file or JSON(L)/Parquet.")
    if file.suffix.lower() in CONLL_SUFFIXES:
        return _read_conll(file)
    from .data import TextData

    dataset = TextData(str(file)).load()
    missing = [c for c in (tokens_column, tags_column) if c not in dataset.column_names]
    if missing:
        raise DataError(f"{file} has no column {missing}; its columns are {dataset.column_names} (token "
                        "classification reads a list of tokens and a list of tags per row).")  # fmt: skip
    rows = []
    for number, row in enumerate(dataset, start=1):
        tokens, tags = list(row[tokens_column]), [str(tag) for tag in row[tags_column]]
        if len(tokens) != len(tags):
            raise DataError(f"{file} row {number}: {len(tokens)} tokens but {len(tags)} tags.")
        rows.append({"tokens": [str(token) for token in tokens], "tags": tags})
    return rows


def _read_conll(file: Path) -> list[dict]:
    sentences, tokens, tags = [], [], []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if tokens:
                sentences.append({"tokens": tokens, "tags": tags})
            tokens, tags = [], []
            continue
        if len(parts) < 2:
            raise DataError(f"{file}:{number}: expected '<token> ... <tag>', got {line!r}.")
        tokens.append(parts[0])
        tags.append(parts[-1])
    if tokens:
        sentences.append({"tokens": tokens, "tags": tags})
    if not sentences:
        raise DataError(f"{file} holds no tagged sentences.")
    return sentences


def tag_labels(rows: Sequence[dict]) -> dict[str, Any]:
    """``num_labels``/``id2label``/``label2id`` for a new token-classification head from the tags in ``rows``:
    ``O`` first, then the others sorted (so the same tag set always gives the same ids)."""
    tags = sorted({tag for row in rows for tag in row["tags"]}, key=lambda tag: (tag != "O", tag))
    return {"num_labels": len(tags), "id2label": dict(enumerate(tags)),
            "label2id": {tag: index for index, tag in enumerate(tags)}}  # fmt: skip


def tagged_features(
    rows: Sequence[dict], tokenizer: Any, model_config: Any, *, max_seq_length: int = 128,
    num_examples: int | None = None,
) -> list[dict[str, list[int]]]:  # fmt: skip
    """One unpadded feature per sentence with ``labels`` on each word's first sub-token (-100 elsewhere)."""
    label2id = {str(name): int(index) for name, index in (getattr(model_config, "label2id", None) or {}).items()}
    num_labels = int(getattr(model_config, "num_labels", len(label2id)))
    # Class ids (the Hub's ner_tags layout) are taken as they are, names through config.label2id.
    label2id.update({str(index): index for index in range(num_labels) if str(index) not in label2id})
    unknown = sorted({tag for row in rows for tag in row["tags"]} - set(label2id))
    if unknown:
        names = sorted(name for name in label2id if not name.isdigit())
        raise DataError(f"Tags {unknown[:5]} are neither among the model's labels {names} nor "
                        f"class ids below num_labels={num_labels}; load the model with num_labels/id2label/label2id "
                        "for your tag set.")  # fmt: skip
    rows = list(rows)[:num_examples] if num_examples is not None else list(rows)
    words = [row["tokens"] for row in rows]
    if _needs_space_before_words(tokenizer):
        words = [[word if i == 0 else " " + word for i, word in enumerate(sentence)] for sentence in words]
    encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_seq_length)
    features = []
    for index, row in enumerate(rows):
        labels, previous = [], None
        for word in encoded.word_ids(index):
            labels.append(-100 if word is None or word == previous else label2id[row["tags"][word]])
            previous = word
        features.append({**{key: encoded[key][index] for key in encoded}, "labels": labels})
    return features


def _needs_space_before_words(tokenizer: Any) -> bool:
    """Whether pre-split words must carry their leading space to be tokenized as in running text.

    Byte-level BPE tokenizers (RoBERTa, GPT-2) spell a word after a space differently ("Ġworld"); without
    ``add_prefix_space`` each pre-split word is tokenized as if it began the text, so a model would see pieces it
    never saw in pre-training. Checked by tokenizing, not by class name: WordPiece and SentencePiece give the same
    pieces either way and are left alone.
    """
    words = ["hello", "world", "again"]
    running = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    if tokenizer(words, is_split_into_words=True, add_special_tokens=False)["input_ids"] == running:
        return False
    spaced = [words[0], *(" " + word for word in words[1:])]
    return tokenizer(spaced, is_split_into_words=True, add_special_tokens=False)["input_ids"] == running


def tagged_batches(
    rows: Sequence[dict], tokenizer: Any, model_config: Any, *, batch_size: int = 32, max_seq_length: int = 128,
    num_examples: int | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """`tagged_features` as padded tensor batches."""
    from transformers import DataCollatorForTokenClassification

    features = tagged_features(rows, tokenizer, model_config, max_seq_length=max_seq_length,
                               num_examples=num_examples)  # fmt: skip
    collator = DataCollatorForTokenClassification(tokenizer)
    return [dict(collator(features[start : start + batch_size])) for start in range(0, len(features), batch_size)]


def evaluate_token_classification(model: Any, batches: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Entity-level precision/recall/F1 and token accuracy on labelled batches (first sub-tokens only)."""
    import evaluate

    id2label = {int(index): str(name) for index, name in model.config.id2label.items()}
    predictions, references = [], []
    for batch, outputs in head_outputs(model, batches):
        for row_prediction, row_labels in zip(outputs.logits.argmax(-1).cpu(), batch["labels"], strict=True):
            kept = row_labels != -100
            predictions.append([id2label[int(i)] for i in row_prediction[kept]])
            references.append([id2label[int(i)] for i in row_labels[kept]])
    metric = evaluate.load(str(SEQEVAL_METRIC_PATH))
    return {**metric.compute(predictions=predictions, references=references), "num_sentences": len(references)}
