"""Your own text data: local files or Hub datasets -> batches for calibration and evaluation.

`TextData` names where the rows are and which columns to read: a CSV/TSV/JSON/JSONL/Parquet file, a folder of such
files (split by file name: ``train.*``, ``validation.*``/``dev.*``, ``test.*``), or a Hub dataset id, read with
`datasets`. Classification labels may be class ids or the model's own label names (``config.label2id``); a
regression head (``num_labels == 1``) takes numbers. Every problem a file can have (a missing column, no rows,
labels the model's head cannot take, labels of mixed types) is an error that names the file and the fix.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, MissingDataError


if TYPE_CHECKING:
    import datasets


#: File extensions `datasets` reads, by the builder that reads them (TSV is CSV with a tab separator).
BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
#: File stems accepted for each split of a folder.
SPLIT_FILES = {"train": ("train",), "validation": ("validation", "dev", "valid", "val"), "test": ("test",)}
#: Text columns tried, in order, when none are named (single sentences, then sentence pairs).
TEXT_COLUMN_GUESSES = (("sentence",), ("text",), ("sentence1", "sentence2"), ("question", "sentence"),
                       ("premise", "hypothesis"))  # fmt: skip


class DataError(MissingDataError):
    """A dataset cannot be used as asked (missing file or column, no rows, labels that do not fit the model)."""


@dataclass(frozen=True)
class TextData:
    """Where text rows come from, and which columns hold the text and the label.

    Args:
        path (`str`): A local file or folder, or a Hub dataset id.
        text_columns (`Sequence[str]`, *optional*): One column, or two for sentence pairs (default: the first of
            ``sentence``, ``text``, ``sentence1``+``sentence2``, ``question``+``sentence``, ``premise``+``hypothesis``
            that the data has).
        label_column (`str`, defaults to ``"label"``): The label (class id, class name or number).
        split (`str`, *optional*): Which split; default: ``train`` for calibration and training, ``validation``
            (or ``dev``, then ``test``) for evaluation.
    """

    path: str
    text_columns: tuple[str, ...] | None = None
    label_column: str = "label"
    split: str | None = None

    def load(self, purpose: str = "train") -> datasets.Dataset:
        """The rows of the split for ``purpose`` (``"train"`` or ``"validation"``), as a `datasets.Dataset`."""
        import datasets

        split = self.split or purpose
        local = Path(self.path).expanduser()
        if local.is_file():
            dataset = _read_files([local], self.path)
        elif local.is_dir():
            dataset = _read_files(_split_files(local, split, explicit=self.split is not None), self.path)
        elif local.suffix.lower() in BUILDERS or os.sep in self.path and not _looks_like_hub_id(self.path):
            raise DataError(f"--dataset {self.path} does not exist. Pass a CSV/TSV/JSON(L)/Parquet file or folder, "
                            "or a Hub dataset id.")  # fmt: skip
        else:
            try:
                dataset = datasets.load_dataset(self.path, split=_hub_split(self.path, split, self.split))
            except Exception as err:  # offline, unknown id, unknown split: all mean "nothing to read"
                raise DataError(f"Could not load the Hub dataset {self.path!r} (split {split!r}): "
                                f"{type(err).__name__}: {err}") from err  # fmt: skip
        if len(dataset) == 0:
            raise DataError(f"{self.path} (split {split!r}) holds no rows.")
        return dataset

    def columns(self, dataset: datasets.Dataset, with_labels: bool = True) -> tuple[tuple[str, ...], str | None]:
        """The text columns and (``with_labels``) the label column, checked against the data."""
        names = list(dataset.column_names)
        if self.text_columns is not None:
            text = tuple(self.text_columns)
            if not 1 <= len(text) <= 2:
                raise ConfigError(f"--text-columns takes one column, or two for sentence pairs; got {list(text)}.")
        else:
            text = next((guess for guess in TEXT_COLUMN_GUESSES if set(guess) <= set(names)), ())
            if not text:
                raise DataError(f"{self.path} has no column named like text ({', '.join(names)}); name them with "
                                "--text-columns (recipe key text_columns), e.g. --text-columns review.")  # fmt: skip
        missing = [column for column in (*text, *([self.label_column] if with_labels else [])) if column not in names]
        if missing:
            raise DataError(f"{self.path} has no column {missing}; its columns are {names}. Name the right ones with "
                            "--text-columns / --label-column.")  # fmt: skip
        return text, self.label_column if with_labels else None

    def texts(self, purpose: str = "train", limit: int | None = None) -> list[str]:
        """Sentences for label-free calibration: each text column's value on its own (both sentences of a pair),
        at most ``limit`` of them."""
        dataset = self.load(purpose)
        text, _ = self.columns(dataset, with_labels=False)
        if limit is not None:
            dataset = dataset.select(range(min(len(dataset), limit)))  # each row gives at least one sentence
        values = [str(row[column]) for row in dataset for column in text]
        return [value for value in values if value.strip()][:limit]


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~"))


def _hub_split(path: str, split: str, explicit: str | None) -> str:
    if explicit is not None or split != "validation":
        return split
    import datasets

    try:
        available = datasets.get_dataset_split_names(path)
    except Exception:  # noqa: BLE001 - the load below reports the real problem
        return split
    return next((name for name in (*SPLIT_FILES["validation"], "test") if name in available), split)


def _split_files(folder: Path, split: str, explicit: bool) -> list[Path]:
    files = sorted(file for file in folder.iterdir() if file.suffix.lower() in BUILDERS)
    if not files:
        raise DataError(f"{folder} holds no CSV/TSV/JSON(L)/Parquet files.")
    stems = SPLIT_FILES.get(split, (split,))
    if split == "validation" and not explicit:
        stems = (*stems, *SPLIT_FILES["test"])
    for stem in stems:
        chosen = [file for file in files if file.stem.lower() == stem]
        if chosen:
            return chosen
    if len(files) == 1 and not explicit and not (split == "validation" and files[0].stem.lower() == "train"):
        return files  # one file: it is the data, whatever its name (but a train file is never the evaluation data)
    raise DataError(f"{folder} has no file for the {split!r} split (looked for {', '.join(stems)} with a data "
                    f"extension; found {', '.join(f.name for f in files)}). Pass --split or the file itself.")


def _read_files(files: list[Path], where: str) -> datasets.Dataset:
    import datasets

    suffixes = {file.suffix.lower() for file in files}
    if len(suffixes) != 1 or next(iter(suffixes)) not in BUILDERS:
        raise DataError(f"{where}: expected .csv, .tsv, .json, .jsonl or .parquet; got {sorted(suffixes)}.")
    suffix = suffixes.pop()
    options: dict[str, Any] = {"sep": "\t"} if suffix == ".tsv" else {}
    if any(file.stat().st_size == 0 for file in files):
        raise DataError(f"{', '.join(str(f) for f in files if f.stat().st_size == 0)} is empty.")
    try:
        return datasets.load_dataset(BUILDERS[suffix], data_files=[str(f) for f in files], split="train", **options)
    except Exception as err:  # malformed JSON/CSV surfaces as several exception types inside datasets
        raise DataError(f"{where} cannot be read as {suffix[1:].upper()}: {type(err).__name__}: {err}") from err


def encode_labels(values: Sequence[Any], model_config: Any, where: str) -> list[int] | list[float]:
    """Labels as the model's head takes them: class ids in ``[0, num_labels)`` (names mapped through
    ``config.label2id``), or floats for a regression head."""
    num_labels = int(getattr(model_config, "num_labels", 2))
    kinds = {"number" if isinstance(v, numbers.Number) and not isinstance(v, bool) else type(v).__name__
             for v in values}  # fmt: skip
    if len(kinds) > 1:
        raise DataError(f"{where}: labels of mixed types ({', '.join(sorted(kinds))}); use class ids or class names "
                        "throughout (or numbers for a regression).")  # fmt: skip
    if num_labels == 1:
        if kinds != {"number"}:
            raise DataError(f"{where}: the model is a regression (num_labels=1), but the labels are {kinds.pop()}s.")
        return [float(value) for value in values]
    label2id = {str(name): int(index) for name, index in (getattr(model_config, "label2id", None) or {}).items()}
    if kinds == {"str"}:
        unknown = sorted({value for value in values if value not in label2id})
        if unknown:
            raise DataError(f"{where}: labels {unknown[:5]} are not among the model's label names "
                            f"{sorted(label2id)}.")  # fmt: skip
        return [label2id[value] for value in values]
    if kinds != {"number"}:
        raise DataError(f"{where}: labels must be class ids or class names; got {kinds.pop()}s.")
    bad = sorted({value for value in values if not float(value).is_integer() or not 0 <= value < num_labels})
    if bad:
        raise DataError(f"{where}: labels {bad[:5]} do not fit the model's head of {num_labels} classes (class ids "
                        f"0..{num_labels - 1}). Check --label-column, or load the model with num_labels set.")
    return [int(value) for value in values]


def labelled_batches(
    data: TextData,
    tokenizer: Any,
    model_config: Any,
    *,
    purpose: str = "train",
    num_examples: int | None = 512,
    batch_size: int = 32,
    max_seq_length: int = 128,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Padded, labelled batches of ``num_examples`` rows (a seeded random draw; all rows when ``None``)."""
    from transformers import DataCollatorWithPadding

    dataset = data.load(purpose)
    text, label = data.columns(dataset)
    if num_examples is not None and num_examples < len(dataset):
        dataset = dataset.shuffle(seed=seed).select(range(num_examples))
    labels = encode_labels(list(dataset[label]), model_config, f"{data.path} column {label!r}")
    encoded = tokenizer(*[[str(value) for value in dataset[column]] for column in text], truncation=True,
                        max_length=max_seq_length)  # fmt: skip
    collator = DataCollatorWithPadding(tokenizer)
    batches = []
    for start in range(0, len(labels), batch_size):
        rows = range(start, min(start + batch_size, len(labels)))
        batches.append(dict(collator([{**{key: encoded[key][i] for key in encoded}, "labels": labels[i]}
                                      for i in rows])))  # fmt: skip
    return batches


def label_spec(values: Sequence[Any], where: str) -> dict[str, Any]:
    """The head the labels call for, as ``from_pretrained`` keywords: a regression (``num_labels=1``) for numbers
    that are not all whole, ``max + 1`` classes for class ids, or one class per name (sorted) for names."""
    kinds = {"number" if isinstance(v, numbers.Number) and not isinstance(v, bool) else type(v).__name__
             for v in values}  # fmt: skip
    if kinds == {"str"}:
        names = sorted(set(values))
        return {"num_labels": len(names), "id2label": dict(enumerate(names)),
                "label2id": {name: index for index, name in enumerate(names)}}  # fmt: skip
    if kinds != {"number"}:
        raise DataError(f"{where}: labels must be class ids, class names or numbers (one kind); got "
                        f"{', '.join(sorted(kinds))}.")  # fmt: skip
    if not all(float(value).is_integer() for value in values):
        return {"num_labels": 1}
    return {"num_labels": max(2, int(max(values)) + 1)}


def classification_metrics(predictions: Any, labels: Any) -> dict[str, float]:
    """Accuracy and macro F1 of class predictions, or Pearson and Spearman x 100 of float predictions."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score

    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.dtype.kind == "f":
        return {"pearson": float(pearsonr(predictions, labels).statistic * 100),
                "spearman": float(spearmanr(predictions, labels).statistic * 100)}  # fmt: skip
    return {"accuracy": float(np.mean(predictions == labels)),
            "f1_macro": float(f1_score(labels, predictions, average="macro"))}  # fmt: skip


def head_outputs(model: Any, batches: Sequence[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Any]]:
    """Each labelled batch with the model's outputs: eval mode, no autograd, inputs on the model's device, the
    labels kept out of the call (evaluation needs the logits, not the loss)."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in batches:
            yield batch, model(**{key: value.to(device) for key, value in batch.items() if key != "labels"})


def evaluate_classifier(model: Any, batches: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Accuracy (and macro F1) of a classification head, or Pearson and Spearman x 100 of a regression head."""
    import torch

    predicted, gold = [], []
    for batch, outputs in head_outputs(model, batches):
        logits = outputs.logits.float().cpu()
        predicted.append(logits.reshape(-1) if logits.shape[-1] == 1 else logits.argmax(-1))
        gold.append(batch["labels"])
    labels = torch.cat(gold).numpy()
    return {**classification_metrics(torch.cat(predicted).numpy(), labels), "num_rows": len(labels)}
