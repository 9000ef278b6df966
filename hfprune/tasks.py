"""Which data a model's head learns from, and how it is scored: one entry point per purpose for every head.

Sequence classification and regression read `hfprune.data.TextData` rows; extractive QA reads SQuAD-format questions
(`hfprune.question_answering`); token classification reads tagged sentences (`hfprune.token_classification`).
The CLI's ``--dataset`` goes through here, so it needs to know no head.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data import BUILDERS, SPLIT_FILES, DataError, TextData, evaluate_classifier, labelled_batches
from .errors import HfPruneWarning


#: The data a model's head learns from, by the suffix of its class name.
TASKS = {"ForQuestionAnswering": "question-answering", "ForTokenClassification": "token-classification"}
#: Every head hfprune trains, prunes and scores.
HEAD_TASKS = ("text-classification", *TASKS.values())


def task_of(architecture: str | None) -> str:
    """``"question-answering"``, ``"token-classification"`` or (any other head) ``"text-classification"``."""
    return next((task for suffix, task in TASKS.items() if (architecture or "").endswith(suffix)),
                "text-classification")  # fmt: skip


def _task_file(data: TextData, purpose: str) -> Path:
    """The one local file QA and token-classification readers take: the file itself, or a folder's split file."""
    local = Path(data.path).expanduser()
    if local.is_dir():
        suffixes = (*BUILDERS, ".txt", ".conll", ".iob", ".bio")
        files = sorted(f for f in local.iterdir() if f.suffix.lower() in suffixes)
        stems = SPLIT_FILES.get(data.split or purpose, (data.split or purpose,))
        if purpose == "validation" and data.split is None:
            stems = (*stems, *SPLIT_FILES["test"])
        chosen = next((f for stem in stems for f in files if f.stem.lower() == stem), None)
        if chosen is None:
            raise DataError(f"{local} has no file for the {data.split or purpose!r} split (looked for "
                            f"{', '.join(stems)}; found {', '.join(f.name for f in files) or 'nothing'}).")
        return chosen
    if not local.is_file():
        raise DataError(f"--dataset {data.path}: question answering and token classification read local files "
                        "(SQuAD JSON, CoNLL text, JSON(L)/Parquet rows); it does not exist.")  # fmt: skip
    return local


def task_rows(data: TextData, task: str, purpose: str) -> list[dict[str, Any]]:
    """QA questions (`read_squad`) or tagged sentences (`read_tagged`) of ``purpose``'s split."""
    if task == "question-answering":
        from .question_answering import read_squad

        return read_squad(_task_file(data, purpose))
    from .token_classification import read_tagged

    tokens = (data.text_columns or ("tokens",))[0]
    tags = data.label_column if data.label_column != "label" else "tags"
    return read_tagged(_task_file(data, purpose), tokens_column=tokens, tags_column=tags)


def check_task_data(data: TextData, task: str, purposes: Sequence[str]) -> None:
    """Read what each purpose needs, so a bad file fails before the model loads; say when calibration and
    evaluation would read the same file (the score is then not held out)."""
    if {"train", "validation"} <= set(purposes) and Path(data.path).expanduser().is_file():
        warnings.warn(f"--dataset {data.path} is one file, so --eval scores rows that calibration may also have "
                      "read. Pass a folder with train and validation files for a held-out score.", HfPruneWarning,
                      stacklevel=2)  # fmt: skip
    for purpose in purposes:
        if task == "text-classification":
            data.columns(data.load(purpose))
        else:
            task_rows(data, task, purpose)


def task_batches(
    data: TextData, model: Any, tokenizer: Any, *, purpose: str = "train", num_examples: int | None = 512,
    max_seq_length: int = 128, seed: int = 0,
) -> list[dict[str, Any]]:  # fmt: skip
    """Labelled batches for the model's head (its loss is the calibration loss): class labels, token tags, or
    answer spans."""
    task = task_of(type(model).__name__)
    if task == "text-classification":
        return labelled_batches(data, tokenizer, model.config, purpose=purpose, num_examples=num_examples,
                                max_seq_length=max_seq_length, seed=seed)  # fmt: skip
    rows = task_rows(data, task, purpose)
    if task == "question-answering":
        from .question_answering import qa_batches

        return qa_batches(rows, tokenizer, num_examples=num_examples, max_seq_length=max(max_seq_length, 64))
    from .token_classification import tagged_batches

    return tagged_batches(rows, tokenizer, model.config, num_examples=num_examples, max_seq_length=max_seq_length)


def evaluate_task(
    data: TextData, models: Sequence[Any], tokenizer: Any, *, max_seq_length: int = 128,
    num_examples: int | None = None,
) -> list[dict[str, float]]:  # fmt: skip
    """The heads' metrics on the evaluation split, for each of ``models`` (e.g. dense and pruned; the data is read
    and tokenized once): accuracy/F1 (or Pearson/Spearman), entity F1, or SQuAD EM/F1. ``num_examples``: the first N
    questions or sentences (QA and token classification)."""
    first = models[0]
    task = task_of(type(first).__name__)
    if task == "text-classification":
        batches = labelled_batches(data, tokenizer, first.config, purpose="validation", num_examples=None,
                                   max_seq_length=max_seq_length)  # fmt: skip
        return [evaluate_classifier(model, batches) for model in models]
    rows = task_rows(data, task, "validation")[:num_examples]
    if task == "question-answering":
        from .question_answering import evaluate_question_answering

        return [evaluate_question_answering(model, tokenizer, rows, max_seq_length=max(max_seq_length, 64))
                for model in models]  # fmt: skip
    from .token_classification import evaluate_token_classification, tagged_batches

    batches = tagged_batches(rows, tokenizer, first.config, max_seq_length=max_seq_length)
    return [evaluate_token_classification(model, batches) for model in models]
