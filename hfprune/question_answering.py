"""Extractive question answering (SQuAD format) data and evaluation for `AutoModelForQuestionAnswering` models.

Data: SQuAD v1 JSON (``{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]}``) or
JSON/JSONL rows with ``id``, ``question``, ``context`` and ``answers`` (``{"text": [...], "answer_start": [...]}``,
the Hub ``squad`` layout). Long contexts are split into overlapping windows (``stride``); a training feature's
labels are the answer's start and end token, or the [CLS] position when the answer is not in its window. Evaluation
takes the best valid span of each question over its windows and scores it with the official v1.1 exact match and
F1 (``hfprune/metrics/squad_metric.py``, loaded offline with `evaluate`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data import DataError


SQUAD_METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "squad_metric.py"


def read_squad(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Questions as ``{"id", "question", "context", "answers": {"text", "answer_start"}}`` rows."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file} does not exist (or is a folder); pass a SQuAD-format JSON file or JSON(L) rows.")
    if file.suffix.lower() == ".json":
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{file} is not valid JSON ({err}).") from err
        if isinstance(data, dict) and "data" in data:
            return _flatten_squad(data["data"], file)
    from .data import TextData

    dataset = TextData(str(file)).load()
    missing = [c for c in ("id", "question", "context", "answers") if c not in dataset.column_names]
    if missing:
        raise DataError(f"{file} has no column {missing}; its columns are {dataset.column_names}.")
    return [dict(row) for row in dataset]


def _flatten_squad(articles: Any, file: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        for article in articles:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers = qa.get("answers", [])
                    rows.append({"id": str(qa["id"]), "question": qa["question"], "context": paragraph["context"],
                                 "answers": {"text": [a["text"] for a in answers],
                                             "answer_start": [int(a["answer_start"]) for a in answers]}})  # fmt: skip
    except (KeyError, TypeError) as err:
        raise DataError(f"{file} is not in the SQuAD layout (missing {err}); expected data/paragraphs/qas.") from err
    if not rows:
        raise DataError(f"{file} holds no questions.")
    return rows


def _windows(rows: Sequence[dict], tokenizer: Any, max_length: int, stride: int | None) -> Any:
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("Question answering needs a fast tokenizer (offset mappings); this model's tokenizer is slow.")
    pad_right = tokenizer.padding_side == "right"
    # A quarter of the window overlaps the next (transformers' examples: 128 of 384); the tokenizer needs the overlap
    # to be shorter than what the window leaves for the context.
    stride = max_length // 4 if stride is None else stride
    room = max_length - stride - 3  # [CLS] question [SEP] context [SEP]: the question must leave the stride room
    questions = [row["question"].lstrip() for row in rows]
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[longest] > room:
        raise DataError(f"Question {rows[longest].get('id')!r} is {lengths[longest]} tokens long; with "
                        f"--max-seq-length {max_length} a question may have {room}. Raise --max-seq-length (e.g. "
                        "384).")  # fmt: skip
    contexts = [row["context"] for row in rows]
    return tokenizer(questions if pad_right else contexts, contexts if pad_right else questions,
                     truncation="only_second" if pad_right else "only_first", max_length=max_length, stride=stride,
                     return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")  # fmt: skip


def qa_features(
    rows: Sequence[dict], tokenizer: Any, *, max_seq_length: int = 384, stride: int | None = None,
    num_examples: int | None = None,
) -> list[dict[str, list[int] | int]]:  # fmt: skip
    """One training feature per window (padded to ``max_seq_length``), with ``start_positions`` and
    ``end_positions``: the answer's first and last token, or [CLS] when the answer is not in the window."""
    rows = list(rows)[:num_examples] if num_examples is not None else list(rows)
    for row in rows:
        texts, starts = row["answers"]["text"], row["answers"]["answer_start"]
        if texts and row["context"][starts[0] : starts[0] + len(texts[0])] != texts[0]:
            # Otherwise every window would be labelled "no answer here" and the model trained to answer nothing.
            found = row["context"].find(texts[0])
            hint = f"; the text first occurs at {found}" if found >= 0 else "; the context does not contain it"
            raise DataError(f"Question {row.get('id')!r}: answer_start {starts[0]} does not point at its answer "
                            f"{texts[0]!r} in the context{hint}. answer_start counts characters from 0.")  # fmt: skip
    encoded = _windows(rows, tokenizer, max_seq_length, stride)
    context_id = 1 if tokenizer.padding_side == "right" else 0  # which sequence is the context (see _windows)
    keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded]
    features = []
    for index, offsets in enumerate(encoded["offset_mapping"]):
        row = rows[encoded["overflow_to_sample_mapping"][index]]
        sequence = encoded.sequence_ids(index)
        ids = encoded["input_ids"][index]
        cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
        span = (cls, cls)  # no answer, or not in this window: the [CLS] position, as transformers' examples do
        answers = row["answers"]
        context = [i for i, s in enumerate(sequence) if s == context_id]
        if answers["text"] and context:
            first = answers["answer_start"][0]
            last = first + len(answers["text"][0])
            if offsets[context[0]][0] <= first and offsets[context[-1]][1] >= last:
                span = (next(i for i in context if offsets[i][1] > first),
                        next(i for i in reversed(context) if offsets[i][0] < last))  # fmt: skip
        features.append({**{key: encoded[key][index] for key in keys},
                         "start_positions": span[0], "end_positions": span[1]})  # fmt: skip
    return features


def qa_batches(
    rows: Sequence[dict], tokenizer: Any, *, batch_size: int = 16, max_seq_length: int = 384,
    stride: int | None = None, num_examples: int | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """`qa_features` as tensor batches (calibration, evaluation of the loss)."""
    from transformers import default_data_collator

    features = qa_features(rows, tokenizer, max_seq_length=max_seq_length, stride=stride, num_examples=num_examples)
    return [default_data_collator(features[start : start + batch_size])
            for start in range(0, len(features), batch_size)]  # fmt: skip


def evaluate_question_answering(
    model: Any, tokenizer: Any, rows: Sequence[dict], *, batch_size: int = 32, max_seq_length: int = 384,
    stride: int | None = None, max_answer_tokens: int = 30, n_best: int = 20,
) -> dict[str, float]:  # fmt: skip
    """SQuAD v1.1 exact match and F1: the best valid span of each question over all its windows."""
    import evaluate
    import numpy as np
    import torch

    encoded = _windows(rows, tokenizer, max_seq_length, stride)
    keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded]
    model.eval()
    device = next(model.parameters()).device
    starts, ends = [], []
    with torch.inference_mode():
        for begin in range(0, len(encoded["input_ids"]), batch_size):
            inputs = {key: torch.tensor(encoded[key][begin : begin + batch_size]).to(device) for key in keys}
            outputs = model(**inputs)
            starts.append(outputs.start_logits.float().cpu().numpy())
            ends.append(outputs.end_logits.float().cpu().numpy())
    start_logits, end_logits = np.concatenate(starts), np.concatenate(ends)
    context_id = 1 if tokenizer.padding_side == "right" else 0
    best: dict[int, tuple[float, str]] = {}
    for index, offsets in enumerate(encoded["offset_mapping"]):
        row_index = encoded["overflow_to_sample_mapping"][index]
        context, sequence = rows[row_index]["context"], encoded.sequence_ids(index)
        top_starts = np.argsort(start_logits[index])[::-1][:n_best]
        top_ends = np.argsort(end_logits[index])[::-1][:n_best]
        for start in top_starts:
            for end in top_ends:
                if (sequence[start] != context_id or sequence[end] != context_id or end < start
                        or end - start + 1 > max_answer_tokens):  # fmt: skip
                    continue
                score = float(start_logits[index][start] + end_logits[index][end])
                if row_index not in best or score > best[row_index][0]:
                    best[row_index] = (score, context[offsets[start][0] : offsets[end][1]])
    predictions = [{"id": str(row["id"]), "prediction_text": best.get(i, (0.0, ""))[1]} for i, row in enumerate(rows)]
    references = [{"id": str(row["id"]), "answers": row["answers"]} for row in rows]
    metric = evaluate.load(str(SQUAD_METRIC_PATH))
    return {**metric.compute(predictions=predictions, references=references), "num_questions": len(rows)}
