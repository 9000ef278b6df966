"""GLUE tasks as data: names, columns, labels, metrics and splits, loading from the Hub or from the original TSVs.

`load_glue` returns the same `datasets.DatasetDict` either way: the Hub's ``nyu-mll/glue`` when ``data_dir`` is
``None``, or the files written by GLUE's ``download_glue_data.py`` (``<data_dir>/SST-2/train.tsv`` and so on)
read offline, with ``nyu-mll/glue``'s column names, label ids and features. `compute_glue_metrics` scores
predictions with the local GLUE metric script ``hfprune/metrics/glue_metric.py``, which needs no network.
"""

from __future__ import annotations

import csv
import difflib
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .adapters.base import check_text_length
from .errors import ConfigError, HfPruneError, HfPruneWarning, MissingDataError


if TYPE_CHECKING:
    import datasets
    import evaluate


class GlueDataError(HfPruneError, ValueError):
    """A GLUE TSV file cannot be read as the original GLUE file (empty, no header, wrong encoding, bad label)."""


GLUE_HUB_ID = "nyu-mll/glue"
GLUE_METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "glue_metric.py"


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task, described with the names Hugging Face's ``nyu-mll/glue`` dataset and ``glue`` metric use.

    Args:
        name (`str`): Canonical name (``"sst2"``): the ``nyu-mll/glue`` config name and the metric's config name.
        text_keys (`tuple[str, ...]`): The 1 or 2 text columns, in the order a tokenizer takes them
            (``tokenizer(*[batch[k] for k in task.text_keys])``).
        num_labels (`int`): Classes to predict; 1 for ``stsb``, which is a regression. Pass it to
            ``AutoModelForSequenceClassification.from_pretrained(..., num_labels=task.num_labels)``.
        label_names (`tuple[str, ...]`): Class names by label id, as in the dataset's `ClassLabel`; empty for
            ``stsb``.
        metric_names (`tuple[str, ...]`): Keys of the dict `compute_glue_metrics` returns for this task.
        eval_splits (`tuple[str, ...]`, defaults to ``("validation",)``): Splits a model is evaluated on. MNLI has
            two: ``validation_matched`` and ``validation_mismatched``.
    """

    name: str
    text_keys: tuple[str, ...]
    num_labels: int
    label_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    eval_splits: tuple[str, ...] = ("validation",)

    def __post_init__(self) -> None:
        if len(self.text_keys) not in (1, 2):
            raise ConfigError(f"A GLUE task has 1 or 2 text columns; {self.name!r} got {self.text_keys}.")
        expected = 0 if self.num_labels == 1 else self.num_labels
        if len(self.label_names) != expected:
            raise ConfigError(
                f"GLUE task {self.name!r} has num_labels={self.num_labels} but {len(self.label_names)} label names "
                f"{self.label_names}; give one name per class, or none for a regression (num_labels=1)."
            )

    @property
    def is_regression(self) -> bool:
        """Whether labels are float scores (``stsb``) rather than class ids."""
        return self.num_labels == 1


_GLUE_TASK_LIST = (
    GlueTask("cola", ("sentence",), 2, ("unacceptable", "acceptable"), ("matthews_correlation",)),
    GlueTask("sst2", ("sentence",), 2, ("negative", "positive"), ("accuracy",)),
    GlueTask("mrpc", ("sentence1", "sentence2"), 2, ("not_equivalent", "equivalent"), ("accuracy", "f1")),
    GlueTask("stsb", ("sentence1", "sentence2"), 1, (), ("pearson", "spearmanr")),
    GlueTask("qqp", ("question1", "question2"), 2, ("not_duplicate", "duplicate"), ("accuracy", "f1")),
    GlueTask(
        "mnli",
        ("premise", "hypothesis"),
        3,
        ("entailment", "neutral", "contradiction"),
        ("accuracy",),
        eval_splits=("validation_matched", "validation_mismatched"),
    ),
    GlueTask("qnli", ("question", "sentence"), 2, ("entailment", "not_entailment"), ("accuracy",)),
    GlueTask("rte", ("sentence1", "sentence2"), 2, ("entailment", "not_entailment"), ("accuracy",)),
)
GLUE_TASKS: dict[str, GlueTask] = {task.name: task for task in _GLUE_TASK_LIST}


@dataclass(frozen=True)
class _TsvLayout:
    """Where a task's fields sit in the original GLUE TSV files (``download_glue_data.py`` output).

    ``text_columns`` and ``label_column`` are header names, or positions for files without a header (CoLA) or
    where the position is the reliable part (STS-B's score is always the last column).
    """

    folder: str
    text_columns: tuple[str | int, ...]
    label_column: str | int
    has_header: bool = True
    strip_text: bool = False


_TSV_LAYOUTS: dict[str, _TsvLayout] = {
    # CoLA train/dev have no header: source, label, original mark, sentence.
    "cola": _TsvLayout("CoLA", (3,), 1, has_header=False),
    # Every SST-2 sentence ends with a space before the tab ("... units \t0"); strip it so the text is the
    # sentence itself (tokenizers ignore the space, exact string comparisons and dataset fingerprints do not).
    "sst2": _TsvLayout("SST-2", ("sentence",), "label", strip_text=True),
    # The header starts with a UTF-8 BOM ("\ufeffQuality"); reading with utf-8-sig removes it.
    "mrpc": _TsvLayout("MRPC", ("#1 String", "#2 String"), "Quality"),
    "stsb": _TsvLayout("STS-B", ("sentence1", "sentence2"), -1),
    "qqp": _TsvLayout("QQP", ("question1", "question2"), "is_duplicate"),
    "mnli": _TsvLayout("MNLI", ("sentence1", "sentence2"), "gold_label"),
    "qnli": _TsvLayout("QNLI", ("question", "sentence"), "label"),
    "rte": _TsvLayout("RTE", ("sentence1", "sentence2"), "label"),
}


def _normalize(name: str) -> str:
    # "SST-2", "sst_2", "Sst2" -> "sst2"; "STS-B" -> "stsb": GLUE's folder names and the Hub's config names agree.
    return re.sub(r"[^a-z0-9]", "", name.lower())


def get_task(name: str | GlueTask) -> GlueTask:
    """Return the `GlueTask` called ``name``.

    Args:
        name (`str` or `GlueTask`): A task name in any common spelling: ``"sst2"``, ``"SST-2"``, ``"sst-2"``,
            ``"STS-B"``. A `GlueTask` is returned unchanged.

    Returns:
        `GlueTask`: The task's description.

    Raises:
        `ConfigError`: The name is not a GLUE task; the message lists the valid names and the closest one.
    """
    if isinstance(name, GlueTask):
        return name
    if not isinstance(name, str):
        raise ConfigError(f"A GLUE task name must be a string such as 'sst2'; got {type(name).__name__}: {name!r}.")
    key = _normalize(name)
    if key in GLUE_TASKS:
        return GLUE_TASKS[key]
    message = f"Unknown GLUE task {name!r}. Valid tasks: {', '.join(sorted(GLUE_TASKS))}."
    close = difflib.get_close_matches(key, list(GLUE_TASKS), n=1)
    if close:
        message += f" Did you mean {close[0]!r}?"
    raise ConfigError(message)


def _split_file(split: str) -> str:
    # GLUE names its validation files "dev": validation -> dev.tsv, validation_matched -> dev_matched.tsv.
    return "dev" + split[len("validation") :] + ".tsv" if split.startswith("validation") else split + ".tsv"


def _resolve_splits(task: GlueTask, splits: str | Sequence[str], local: bool) -> list[str]:
    requested = [splits] if isinstance(splits, str) else list(splits)
    if not requested:
        raise ConfigError(f"splits is empty; pass e.g. ('train', 'validation') for GLUE task {task.name!r}.")
    local_splits = ["train", *task.eval_splits]
    resolved: list[str] = []
    for split in requested:
        # "validation" means every evaluation split, so code can stay the same for MNLI and the other tasks.
        for name in task.eval_splits if split == "validation" else (split,):
            if local and name not in local_splits:
                hint = " GLUE test files have no labels." if name.startswith("test") else ""
                raise ConfigError(
                    f"Unknown split {name!r} for local GLUE task {task.name!r}.{hint} Valid: "
                    f"{['validation', *local_splits]}; test splits (labels -1) load only from the Hub (data_dir=None)."
                )
            if name not in resolved:
                resolved.append(name)
    # Hub split names are checked against what nyu-mll/glue has, after loading.
    return resolved


def _check_max_samples(max_samples: int | None) -> None:
    valid = isinstance(max_samples, int) and not isinstance(max_samples, bool) and max_samples >= 1
    if max_samples is not None and not valid:
        raise ConfigError(f"max_samples must be a positive int or None (all rows); got {max_samples!r}.")


def load_glue(
    task: str | GlueTask,
    data_dir: str | os.PathLike | None = None,
    splits: str | Sequence[str] = ("train", "validation"),
    max_samples: int | None = None,
) -> datasets.DatasetDict:
    """Load a GLUE task from the Hub or from the original GLUE TSV files.

    Both sources give the same columns and features as ``nyu-mll/glue``: the task's text columns (``sentence``,
    ``sentence1``/``sentence2``, ``question1``/``question2``, ``premise``/``hypothesis`` or
    ``question``/``sentence``), ``label`` (a `ClassLabel`, or ``float32`` for ``stsb``) and ``idx`` (``int32``).
    Local files differ from the Hub copy in two details: SST-2 sentences have their trailing space stripped, and
    MRPC's ``idx`` is the row's position in ``train.tsv``/``dev.tsv`` (the Hub numbers MRPC rows by their
    position in ``msr_paraphrase_train.txt``).

    Args:
        task (`str` or `GlueTask`): Task name in any common spelling (``"sst2"``, ``"SST-2"``), see `get_task`.
        data_dir (`str` or `os.PathLike`, *optional*): Folder holding the original GLUE TSVs, either the GLUE
            root (``glue_data/`` with ``SST-2/``, ``CoLA/``, ... inside) or the task's folder itself. Each task
            folder needs ``train.tsv`` and ``dev.tsv`` (MNLI: ``dev_matched.tsv`` and ``dev_mismatched.tsv``).
            ``None`` downloads ``nyu-mll/glue`` with `datasets.load_dataset` (or reads it from the HF cache).
        splits (`str` or `Sequence[str]`, defaults to ``("train", "validation")``): Splits to load.
            ``"validation"`` stands for all of the task's `GlueTask.eval_splits`, so for MNLI it loads
            ``validation_matched`` and ``validation_mismatched``. Test splits (labels -1) exist only on the Hub.
        max_samples (`int`, *optional*): Keep only the first ``max_samples`` rows of each split, in file order
            (deterministic, for quick runs). ``None`` keeps all rows.

    Returns:
        `datasets.DatasetDict`: One `datasets.Dataset` per split, keyed by split name.

    Raises:
        `ConfigError`: Unknown task or split, or an invalid ``max_samples``.
        `MissingDataError`: ``data_dir``, the task folder or a split file does not exist, or the Hub cannot be
            reached without a local copy.
        `ValueError`: A TSV file does not have the expected columns or holds a label that is not valid.

    Example:
        ```python
        from hfprune.glue import load_glue

        raw = load_glue("sst2", data_dir="glue_data", max_samples=1000)
        raw["validation"].features["label"].names  # ['negative', 'positive']
        ```
    """
    task = get_task(task)
    _check_max_samples(max_samples)
    resolved = _resolve_splits(task, splits, local=data_dir is not None)
    if data_dir is None:
        return _load_from_hub(task, resolved, max_samples)

    import datasets

    paths = glue_files(task, data_dir, resolved)
    return datasets.DatasetDict({split: _read_tsv(task, path, split, max_samples) for split, path in paths.items()})


def glue_files(
    task: str | GlueTask, data_dir: str | os.PathLike, splits: str | Sequence[str] = ("train", "validation")
) -> dict[str, Path]:
    """The original GLUE TSV file of each split, checked to exist (nothing is read): call it to fail early.

    Raises:
        `ConfigError`: Unknown task or split.
        `MissingDataError`: ``data_dir``, the task folder or a split file does not exist.
    """
    task = get_task(task)
    resolved = _resolve_splits(task, splits, local=True)
    folder = _task_folder(task, Path(data_dir).expanduser())
    paths = {split: folder / _split_file(split) for split in resolved}
    # Check every file before reading any, so a missing dev file fails at once instead of after the train file.
    for split, path in paths.items():
        if not path.is_file():
            present = sorted(p.name for p in folder.iterdir() if p.suffix == ".tsv")
            raise MissingDataError(
                f"Missing {path} for split {split!r} of GLUE task {task.name!r}. Expected the original GLUE layout "
                f"(download_glue_data.py output): {_expected_layout(task, folder)}. TSV files found in {folder}: "
                f"{present or 'none'}."
            )
    return paths


def _expected_layout(task: GlueTask, folder: Path) -> str:
    splits = ["train", *task.eval_splits]
    return ", ".join(str(folder / _split_file(split)) for split in splits)


def _task_folder(task: GlueTask, data_dir: Path) -> Path:
    layout = _TSV_LAYOUTS[task.name]
    if not data_dir.is_dir():
        raise MissingDataError(
            f"GLUE data_dir {data_dir} does not exist or is not a folder. Pass the GLUE root holding "
            f"{layout.folder}/train.tsv and {layout.folder}/dev.tsv (the layout download_glue_data.py writes), the "
            f"{layout.folder}/ folder itself, or data_dir=None to load {GLUE_HUB_ID} from the Hub."
        )
    if (data_dir / layout.folder).is_dir():
        return data_dir / layout.folder
    # Also accept other spellings of the folder name ("sst2/", "sst-2/").
    for child in sorted(data_dir.iterdir()):
        if child.is_dir() and _normalize(child.name) == task.name:
            return child
    # data_dir may be the task folder itself, unless it is clearly another task's folder.
    other = _normalize(data_dir.name)
    if other in GLUE_TASKS and other != task.name:
        raise MissingDataError(
            f"data_dir {data_dir} is the folder of GLUE task {other!r}, but task {task.name!r} was requested. "
            f"Pass the GLUE root (holding {layout.folder}/) or the {layout.folder}/ folder."
        )
    if other == task.name or any((data_dir / _split_file(s)).is_file() for s in ("train", *task.eval_splits)):
        return data_dir
    found = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    raise MissingDataError(
        f"No {layout.folder}/ folder for GLUE task {task.name!r} in {data_dir}. Expected the original GLUE layout "
        f"(download_glue_data.py output): {_expected_layout(task, data_dir / layout.folder)}; data_dir may also be "
        f"the {layout.folder}/ folder itself. Folders found in {data_dir}: {found or 'none'}."
    )


def _features(task: GlueTask) -> datasets.Features:
    import datasets

    features: dict[str, Any] = {key: datasets.Value("string") for key in task.text_keys}
    features["label"] = (
        datasets.Value("float32") if task.is_regression else datasets.ClassLabel(names=list(task.label_names))
    )
    features["idx"] = datasets.Value("int32")
    return datasets.Features(features)


def _parse_label(task: GlueTask, raw: str, where: str) -> int | float:
    raw = raw.strip()
    if task.is_regression:
        try:
            return float(raw)
        except ValueError:
            raise GlueDataError(f"{where}: the {task.name} score {raw!r} is not a number.") from None
    if raw in task.label_names:
        # RTE/QNLI/MNLI store class names; their id is the position in nyu-mll/glue's ClassLabel (entailment=0).
        return task.label_names.index(raw)
    try:
        label = int(raw)
    except ValueError:
        label = -1
    if not 0 <= label < task.num_labels:
        raise GlueDataError(
            f"{where}: label {raw!r} is neither a class id in 0..{task.num_labels - 1} nor one of "
            f"{list(task.label_names)}. Is this the original GLUE {_TSV_LAYOUTS[task.name].folder} file?"
        )
    return label


def _read_tsv(task: GlueTask, path: Path, split: str, max_samples: int | None) -> datasets.Dataset:
    """`_read_tsv_rows` with the ways a user's file can be broken turned into `GlueDataError`s that say so."""
    layout = _TSV_LAYOUTS[task.name]
    original = f"the original GLUE {layout.folder}/{path.name} (download_glue_data.py output)"
    if path.stat().st_size == 0:
        raise GlueDataError(f"{path} is empty. Replace it with {original}.")
    try:
        dataset = _read_tsv_rows(task, path, split, max_samples)
    except UnicodeDecodeError as err:
        raise GlueDataError(
            f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at position {err.start}); GLUE files are "
            f"UTF-8. Re-save it as UTF-8, or replace it with {original}."
        ) from None
    except csv.Error as err:
        raise GlueDataError(f"{path} is not a tab-separated text file ({err}). Replace it with {original}.") from None
    if len(dataset) == 0:
        raise GlueDataError(
            f"{path} has no data rows{' after its header' if layout.has_header else ''}. Replace it with {original}."
        )
    return dataset


def _read_tsv_rows(task: GlueTask, path: Path, split: str, max_samples: int | None) -> datasets.Dataset:
    import datasets

    layout = _TSV_LAYOUTS[task.name]
    # utf-8-sig drops MRPC's BOM. QUOTE_NONE because GLUE sentences contain bare '"' characters that are text,
    # not CSV quoting (read with the default quoting, MRPC rows run together).
    with open(path, encoding="utf-8-sig", newline="") as file:
        reader = csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        header: list[str] = next(reader, []) if layout.has_header else []
        needed = [c for c in (*layout.text_columns, layout.label_column) if isinstance(c, str)]
        missing = [c for c in needed if c not in header]
        if missing:
            headerless = header and not any(c in header for c in needed)
            raise GlueDataError(
                f"{path} has no column(s) {missing}; its "
                + (f"first line {header[:4]} is not a header (a file without its header row?)" if headerless
                   else f"header is {header}")
                + f". Expected the original GLUE {layout.folder} file, whose header names {needed}."
            )  # fmt: skip
        positions = [header.index(c) if isinstance(c, str) else c for c in layout.text_columns]
        label_position = layout.label_column
        if isinstance(label_position, str):
            label_position = header.index(label_position)
        min_fields = max(p + 1 if p >= 0 else -p for p in (*positions, label_position))
        columns: dict[str, list[Any]] = {key: [] for key in (*task.text_keys, "label", "idx")}
        skipped: list[int] = []
        row_number = 0
        for row in reader:
            if not row:  # blank line, e.g. a trailing one
                continue
            if max_samples is not None and len(columns["idx"]) >= max_samples:
                break
            # Like nyu-mll/glue, keep counting skipped rows so idx stays the row's position in the file.
            number, row_number = row_number, row_number + 1
            if len(row) < min_fields:
                skipped.append(reader.line_num)
                continue
            for key, position in zip(task.text_keys, positions, strict=True):
                columns[key].append(row[position].strip() if layout.strip_text else row[position])
            columns["label"].append(_parse_label(task, row[label_position], f"{path}, line {reader.line_num}"))
            columns["idx"].append(number)
    if skipped:
        warnings.warn(
            f"Skipped {len(skipped)} row(s) of {path} with fewer than {min_fields} tab-separated fields (lines "
            f"{skipped[:5]}{' ...' if len(skipped) > 5 else ''}); nyu-mll/glue drops such rows too.",
            HfPruneWarning,
            stacklevel=3,
        )
    return datasets.Dataset.from_dict(columns, features=_features(task), split=datasets.NamedSplit(split))


def _load_from_hub(task: GlueTask, splits: list[str], max_samples: int | None) -> datasets.DatasetDict:
    import datasets

    try:
        loaded = datasets.load_dataset(GLUE_HUB_ID, task.name)
    except ConnectionError as err:
        raise MissingDataError(
            f"Could not load {GLUE_HUB_ID} ({task.name}) from the Hub and it is not in the HF cache: {err}. "
            f"Offline, pass data_dir=<folder with the original GLUE TSVs, e.g. glue_data/ holding "
            f"{_TSV_LAYOUTS[task.name].folder}/train.tsv>."
        ) from err
    missing = [split for split in splits if split not in loaded]
    if missing:
        raise ConfigError(f"{GLUE_HUB_ID} ({task.name}) has no split(s) {missing}; it has {sorted(loaded)}.")
    result = datasets.DatasetDict()
    for split in splits:
        dataset = loaded[split]
        if max_samples is not None and max_samples < len(dataset):
            dataset = dataset.select(range(max_samples))
        result[split] = dataset
    return result


def glue_metric(task: str | GlueTask, **load_kwargs: Any) -> evaluate.EvaluationModule:
    """Load the GLUE metric for ``task`` from the local script ``hfprune/metrics/glue_metric.py``, offline.

    Args:
        task (`str` or `GlueTask`): Task name in any common spelling, see `get_task`. It becomes the metric's
            ``config_name``.
        **load_kwargs: Passed to `evaluate.load`, e.g. ``keep_in_memory=True``, ``cache_dir``, ``num_process``
            and ``process_id`` for distributed evaluation.

    Returns:
        `evaluate.EvaluationModule`: A metric whose ``compute(predictions=..., references=...)`` returns the keys
        listed in ``get_task(task).metric_names``.
    """
    import evaluate

    task = get_task(task)
    # evaluate.load on a local .py path never contacts the Hub (LocalEvaluationModuleFactory; download counts are
    # only sent for Hub ids), so this works with HF_HUB_OFFLINE=1. It copies the script into
    # HF_MODULES_CACHE/evaluate_modules/metrics/glue_metric/<sha256 of the file>/ and imports it from there, so
    # that folder must be writable; the metric's own arrow/lock files go to HF_METRICS_CACHE (or cache_dir).
    # Both default to ~/.cache/huggingface. A read-only home fails with an OSError, which we re-raise with the fix.
    try:
        return evaluate.load(str(GLUE_METRIC_PATH), config_name=task.name, **load_kwargs)
    except OSError as err:
        raise OSError(
            f"Could not load the GLUE metric script {GLUE_METRIC_PATH}: {err}. evaluate copies it into "
            f"{evaluate.config.HF_MODULES_CACHE} and writes cache files to {evaluate.config.HF_METRICS_CACHE}; set "
            f"the HF_MODULES_CACHE environment variable (before importing evaluate) to a writable folder and pass "
            f"cache_dir=<writable folder>."
        ) from err


# One metric instance per task for compute_glue_metrics; compute() with explicit predictions/references resets
# the instance's state, so reusing it is safe and saves re-importing the script on every evaluation.
_METRIC_CACHE: dict[str, evaluate.EvaluationModule] = {}


def compute_glue_metrics(
    task: str | GlueTask, predictions: Sequence[Any], references: Sequence[Any]
) -> dict[str, float]:
    """Score predictions with the GLUE metric of ``task``.

    Args:
        task (`str` or `GlueTask`): Task name in any common spelling, see `get_task`.
        predictions (`Sequence`): Predicted class ids (the argmax of the logits, not the logits), or predicted
            scores for ``stsb``; a list, numpy array or tensor. An ``stsb`` array of shape ``(n, 1)``, as a
            regression head returns it, is flattened.
        references (`Sequence`): Gold class ids, or gold scores for ``stsb``, same length as ``predictions``.

    Returns:
        `dict[str, float]`: ``{"matthews_correlation"}`` for cola; ``{"accuracy"}`` for sst2, qnli, rte and mnli;
        ``{"accuracy", "f1"}`` for mrpc and qqp; ``{"pearson", "spearmanr"}`` for stsb. Correlations are ``nan``
        when one side is constant.

    Raises:
        `ConfigError`: Unknown task.
        `ValueError`: The lengths differ, or classification predictions are not 1-D class ids.
    """
    import numpy as np

    task = get_task(task)
    predictions = np.asarray(predictions)
    references = np.asarray(references)
    if task.is_regression and predictions.ndim == 2 and predictions.shape[1] == 1:
        predictions = predictions.reshape(-1)
    if predictions.ndim != 1:
        hint = " Take logits.argmax(-1) first." if predictions.ndim == 2 and not task.is_regression else ""
        raise ValueError(
            f"{task.name} predictions must be 1-D ({'scores' if task.is_regression else 'class ids'}); got shape "
            f"{predictions.shape}.{hint}"
        )
    if predictions.shape != references.shape:
        raise ValueError(
            f"predictions and references must have the same length; got {predictions.shape[0]} predictions and "
            f"references of shape {references.shape}."
        )
    if task.name not in _METRIC_CACHE:
        # keep_in_memory: one-shot computation, no arrow cache file to write or lock.
        _METRIC_CACHE[task.name] = glue_metric(task, keep_in_memory=True)
    result = _METRIC_CACHE[task.name].compute(predictions=predictions, references=references)
    return {key: float(value) for key, value in result.items()}


def evaluate_glue(
    model: Any,
    tokenizer: Any,
    task: str | GlueTask,
    data_dir: str | os.PathLike | None = None,
    *,
    batch_size: int = 32,
    max_length: int = 128,
) -> dict[str, dict[str, float]]:
    """Metrics of ``model`` on every evaluation split of ``task``: ``{"validation": {"accuracy": ...}}``.

    Batches are padded per batch (no length bucketing), under `torch.inference_mode`; the model is put in eval mode.
    """
    import numpy as np
    import torch

    task = get_task(task)
    check_text_length(model, max_length, "max_length")
    model.eval()
    device = next(model.parameters()).device
    results: dict[str, dict[str, float]] = {}
    for split, rows in load_glue(task, data_dir, splits="validation").items():
        predictions = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = tokenizer(*[list(chunk[key]) for key in task.text_keys], truncation=True, max_length=max_length,
                              padding=True, return_tensors="pt").to(device)  # fmt: skip
            with torch.inference_mode():
                logits = model(**batch).logits
            predictions.append((logits.reshape(-1) if task.is_regression else logits.argmax(-1)).cpu())
        predicted = torch.cat(predictions).numpy()
        results[split] = compute_glue_metrics(task, predicted, np.asarray(list(rows["label"])))
    return results


def glue_card_evaluation(
    task: str | GlueTask,
    after: dict[str, dict[str, float]],
    before: dict | None = None,
    base_label: str = "the base model before pruning",
) -> Any:
    """A model card's `CardEvaluation` from `evaluate_glue` results (first eval split) after and before pruning."""
    from .hub import CardEvaluation

    task = get_task(task)
    split = task.eval_splits[0]
    return CardEvaluation(
        task_type="text-regression" if task.is_regression else "text-classification",
        dataset_type="nyu-mll/glue",
        dataset_name=f"GLUE {task.name.upper()}",
        dataset_config=task.name,
        dataset_split=split,
        metrics=dict(after[split]),
        base_metrics=dict(before[split]) if before else {},
        base_label=base_label,
    )
