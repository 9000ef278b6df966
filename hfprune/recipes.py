"""YAML recipes for whole runs (model, data, TrainingArguments, pruning, distillation) and the GLUE workflow.

`scripts/run_glue.py` and the CLI only parse arguments and call `train_glue`; the workflow lives here once.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .adapters.base import check_text_length
from .config import PruningConfig
from .data import TextData
from .distillation import DistillationConfig
from .errors import ConfigError, HfPruneError
from .field_types import coerce
from .registry import check_unknown_keys, tolerate_unknown_keys
from .tasks import HEAD_TASKS


def _check_keys(where: str, given: dict[str, Any], allowed: list[str]) -> None:
    # Recipes are written by hand, never by a newer hfprune: unknown keys are always errors.
    with tolerate_unknown_keys(False):
        check_unknown_keys(where, given, allowed)


def read_yaml_recipe(path: str | os.PathLike, what: str = "Recipe") -> dict[str, Any]:
    """Read a YAML mapping; a missing file, a folder, non-UTF-8 bytes or a YAML syntax error is a `ConfigError`
    that names the file (and the line) and says how to fix it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist. Check the path (it is relative to the working directory).")
    if not path.is_file():
        raise ConfigError(f"{what} {path} is a folder, not a YAML file. Pass the path of a .yaml file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at position {err.start}). Save it "
            "as UTF-8."
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {yaml_problem(err)}. Fix the syntax there.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} {path} must be a YAML mapping of `key: value` lines; it holds a {type(data).__name__}."
        )
    return data


def yaml_problem(err: yaml.YAMLError) -> str:
    """``"line 3, column 5: mapping values are not allowed here"`` from a PyYAML error, on one line."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


# ------------------------------------------------------------------------------------------------ value types
_SCALARS = (bool, int, float, str)
_SIMPLE_TYPES = (bool, int, float, str)


def _is_simple(hint: Any) -> bool:
    """``int``, ``float | None``, ``int | float``...: scalar hints this module converts. Enums, lists and
    ``str | dict`` (TrainingArguments has many) are left to the receiving class's own validation."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    concrete = [arg for arg in args if arg is not type(None)]
    return bool(concrete) and all(arg in _SIMPLE_TYPES for arg in concrete) and not (str in concrete and
                                                                                   len(concrete) > 1)  # fmt: skip


def coerce_value(value: Any, hint: Any, key: str, where: str, strict: bool = True) -> Any:
    """``value`` converted to the simple scalar type ``hint`` names (`hfprune.field_types.coerce`), or a
    `ConfigError` naming ``where``, ``key``, the value and the expected type; other hints pass ``value`` through.

    With ``strict=False`` (TrainingArguments, whose ``str`` fields such as ``resume_from_checkpoint`` also take
    ``true``) a bool given to a ``str`` field passes through."""
    if not _is_simple(hint):
        return value
    return coerce(value, hint, f"{where}: {key}", bool_as_str=not strict)


def coerce_mapping(value: Any, key: str, where: str, optional: bool) -> dict[str, Any] | None:
    """A section (``training:``, ``pruning:``) must be a mapping; an empty one is ``{}`` or ``None``."""
    if value is None:
        return None if optional else {}
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: {key} must be a section of `key: value` lines; got {value!r} ({type(value).__name__})."
        )
    return value


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a hint that does not resolve: leave every value to the class itself
        return {}


def coerce_fields(cls: type, values: dict[str, Any], where: str, strict: bool = True) -> dict[str, Any]:
    """``values`` (keywords of dataclass ``cls``) with simple scalar values converted to their field's type."""
    hints = _type_hints(cls)
    return {key: coerce_value(value, hints[key], key, where, strict) if key in hints else value
            for key, value in values.items()}  # fmt: skip


def _coerce_own_fields(recipe: Any, where: str) -> None:
    """Coerce a recipe dataclass's own fields in place: scalars to their type, sections to mappings."""
    hints = _type_hints(type(recipe))
    for item in dataclasses.fields(recipe):
        value = getattr(recipe, item.name)
        hint = hints.get(item.name)
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if hint is dict or origin is dict:
            setattr(recipe, item.name, coerce_mapping(value, item.name, where, optional=False))
        elif origin in (typing.Union, types.UnionType) and any(typing.get_origin(a) is dict for a in args):
            setattr(recipe, item.name, coerce_mapping(value, item.name, where, optional=True))
        elif hint is not None:
            setattr(recipe, item.name, coerce_value(value, hint, item.name, where))


def _check_positive(where: str, **values: Any) -> None:
    for key, value in values.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{where}: {key} must be positive; got {value!r}.")


def coerce_training_arguments(training: dict[str, Any], where: str = "the training section") -> dict[str, Any]:
    """``training:`` values converted to the simple scalar types of `transformers.TrainingArguments` fields."""
    from transformers import TrainingArguments

    return coerce_fields(TrainingArguments, training, where, strict=False)


def build_training_arguments(training: dict[str, Any]) -> Any:
    """`transformers.TrainingArguments` from a recipe's ``training:`` section; its own validation errors (an unknown
    strategy, inconsistent options) become a `ConfigError` that says where they come from."""
    from transformers import TrainingArguments

    try:
        return TrainingArguments(**coerce_training_arguments(training))
    except (ValueError, TypeError) as err:
        message = " ".join(str(err).split())
        raise ConfigError(f"The training section is not valid TrainingArguments: {message}") from None


def set_dotted(data: dict[str, Any], assignment: str) -> None:
    """Apply ``"a.b=value"`` (value parsed as YAML) to a nested dict, creating sections as needed."""
    if "=" not in assignment:
        raise ConfigError(f"Override {assignment!r} must look like section.key=value (e.g. training.max_steps=100).")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    node = data
    for key in keys[:-1]:
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigError(f"Override {assignment!r}: {key!r} is not a section.")
    if not all(keys):
        raise ConfigError(f"Override {assignment!r} has an empty key; write section.key=value.")
    try:
        node[keys[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"Override {assignment!r}: the value is not valid YAML ({yaml_problem(err)}). Quote it, e.g. "
            f"{path}='\"{raw}\"'."
        ) from None


@dataclass
class GlueRecipe:
    """A fine-tuning / fine-pruning run of a sequence classifier on a GLUE task or on your own data.

    Args:
        model (`str`): Student model folder or hub id.
        task (`str`, *optional*): GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte).
        dataset (`dict`, *optional*): Your own data instead of ``task`` (`hfprune.data.TextData`): ``path`` (a
            file, a folder with ``train.*`` and ``validation.*``/``dev.*`` files, or a Hub id), ``text_columns``,
            ``label_column``. Class ids, class names or (regression) numbers. ``task``: ``question-answering``
            (SQuAD-format files) or ``token-classification`` (CoNLL-style files, or rows with ``tokens``/``tags``
            columns, renamed by ``text_columns``/``label_column``) trains that head instead; the default is the
            head the model's config names, else ``text-classification``.
        data_dir (`str`, *optional*): Folder of original GLUE TSVs; ``None`` loads ``nyu-mll/glue`` from the Hub.
        teacher (`str`, *optional*): Fine-tuned teacher for distillation (same task and tokenizer).
        max_seq_length (`int`, defaults to 128): Truncation length; batches are padded dynamically.
        max_train_samples / max_eval_samples (`int`, *optional*): Use only the first N rows of each split.
        output_dir (`str`, *optional*): Where the final pruned model goes (default ``<training.output_dir>/final``).
        score_learning_rate (`float`, *optional*): Learning rate of movement scores (default: `PruningTrainer`'s,
            1e-2 or, for soft movement with a threshold, 30 / ramp steps when larger).
        training (`dict`): `transformers.TrainingArguments` keywords.
        pruning (`dict`, *optional*): `PruningConfig` fields; ``None`` trains dense.
        distillation (`dict`, *optional*): `DistillationConfig` fields; used only with a teacher.
    """

    model: str
    task: str | None = None
    dataset: dict[str, Any] | None = None
    data_dir: str | None = None
    teacher: str | None = None
    max_seq_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    output_dir: str | None = None
    score_learning_rate: float | None = None
    training: dict[str, Any] = field(default_factory=dict)
    pruning: dict[str, Any] | None = None
    distillation: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        from transformers import TrainingArguments

        from .glue import get_task

        _coerce_own_fields(self, "GLUE recipe")
        if (self.task is None) == (self.dataset is None):
            raise ConfigError("A training recipe needs either `task` (a GLUE task) or `dataset` (your own data).")
        if self.task is not None:
            get_task(self.task)
        else:
            self.text_data("train")  # checks the section's keys
        _check_positive("GLUE recipe", max_seq_length=self.max_seq_length,
                        max_train_samples=self.max_train_samples, max_eval_samples=self.max_eval_samples,
                        score_learning_rate=self.score_learning_rate)  # fmt: skip
        allowed = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
        _check_keys("the training section (TrainingArguments)", self.training, allowed)
        self.training = coerce_training_arguments(self.training)
        if self.training.get("output_dir") is None:
            raise ConfigError("The training section needs output_dir (where checkpoints go).")
        if self.output_dir is not None:
            final = Path(self.output_dir).expanduser().resolve()
            checkpoints = Path(str(self.training["output_dir"])).expanduser().resolve()
            if final == checkpoints or final in checkpoints.parents:
                # Training writes checkpoints there, and the final save refuses (or would replace) a folder
                # holding them: the run would train every step and then lose its model.
                raise ConfigError(
                    f"output_dir ({final}) is, or contains, training.output_dir ({checkpoints}), where training "
                    "writes its checkpoints; the final model could not be saved there. Choose a separate output_dir "
                    "(or leave it out: the model goes to <training.output_dir>/final)."
                )
        if self.pruning is not None:
            _check_keys("the pruning section", self.pruning, [f.name for f in dataclasses.fields(PruningConfig)])
        if self.distillation is not None:
            _check_keys("the distillation section", self.distillation,
                        [f.name for f in dataclasses.fields(DistillationConfig)])  # fmt: skip
            if self.teacher is None:
                raise ConfigError("The recipe has a distillation section but no teacher.")

    def text_data(self, purpose: str) -> TextData:
        """The `dataset` section as the `TextData` of ``purpose`` (``"train"`` or ``"validation"``)."""
        section = dict(self.dataset or {})
        _check_keys("the dataset section", section,
                    ["path", "text_columns", "label_column", "train_split", "eval_split", "task"])  # fmt: skip
        if not isinstance(section.get("path"), str):
            raise ConfigError("The dataset section needs `path` (a file, a folder or a Hub dataset id).")
        if section.get("task") not in (None, *HEAD_TASKS):
            raise ConfigError(f"dataset.task is {section['task']!r}; choose one of {', '.join(HEAD_TASKS)}.")
        columns = section.get("text_columns")
        if isinstance(columns, str):
            columns = [column.strip() for column in columns.split(",") if column.strip()]
        split = section.get("train_split" if purpose == "train" else "eval_split")
        return TextData(section["path"], text_columns=tuple(columns) if columns else None,
                        label_column=str(section.get("label_column", "label")), split=split)  # fmt: skip

    def head_task(self) -> str:
        """The head a `dataset` recipe trains: ``dataset.task``, else the one the model's config names (a
        ``...ForQuestionAnswering`` or ``...ForTokenClassification`` checkpoint), else text classification."""
        if self.task is not None:
            return "text-classification"
        if (self.dataset or {}).get("task") is not None:
            return str(self.dataset["task"])
        from transformers import AutoConfig

        from .tasks import task_of

        architectures = getattr(AutoConfig.from_pretrained(self.model), "architectures", None) or [None]
        return task_of(architectures[0])

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> GlueRecipe:
        """Read a recipe; ``overrides`` are ``section.key=value`` strings applied on top."""
        path = Path(path)
        data = read_yaml_recipe(path)
        for assignment in overrides or []:
            set_dotted(data, assignment)
        _check_keys(f"recipe {path}", data, [f.name for f in dataclasses.fields(cls)])
        if "model" not in data:
            raise ConfigError(f"Recipe {path} needs a 'model' key.")
        return cls(**data)

    def pruning_config(self) -> PruningConfig | None:
        return None if self.pruning is None else PruningConfig.from_dict(self.pruning)

    def distillation_config(self) -> DistillationConfig | None:
        if self.teacher is None:
            return None
        return DistillationConfig.from_dict(self.distillation or {})


def check_model_source(name: str | os.PathLike | None, what: str = "model") -> None:
    """Refuse a local model path that does not exist (or is a file) before anything is loaded; Hub ids
    (``user/name``) pass, the loader reports those. Without this, a mistyped folder reads as a bad repo id."""
    if name is None:
        return
    text = str(name)
    path = Path(text).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ConfigError(f"{what} {text} is a file; pass the model's folder (the one holding config.json).")
    if _looks_like_hub_id(text):
        from huggingface_hub import constants, try_to_load_from_cache

        if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(text, "config.json"), str):
            raise ConfigError(
                f"{what} {text} is not an existing folder, and the Hub is off (HF_HUB_OFFLINE=1) with no cached copy "
                "of a Hub model of that name. Check the folder path, or allow Hub access to download it."
            )
        return
    raise ConfigError(
        f"{what} folder {text} does not exist. Check the path (relative paths start from the working directory), "
        "or pass a Hub id such as user/model-name."
    )


def _looks_like_hub_id(text: str) -> bool:
    import re

    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1:
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", text) is not None and ".." not in text


def check_resume_checkpoint(
    resume: str | bool | None, output_dir: str | os.PathLike | None, needs_pruner_state: bool = True
) -> Path | None:
    """Check a checkpoint to resume from before any model is loaded: it exists, and its files are readable.

    A damaged file (a crash while saving, a partial copy) is a `HfPruneError` that names the file and the earlier
    checkpoint to resume from instead; hfprune never suggests loading it with ``weights_only=False``."""
    if resume in (None, False, "") or str(resume).lower() == "false":
        return None
    from .trainer import last_complete_checkpoint

    if resume is True or str(resume).lower() == "true":
        # The checkpoint `PruningTrainer.train` will pick: the newest complete one.
        folder = Path(str(output_dir)) if output_dir else None
        checkpoint = last_complete_checkpoint(folder, needs_pruner_state)[0] if folder is not None else None
        if checkpoint is None:
            raise ConfigError(f"resume_from_checkpoint is true but {folder} holds no complete checkpoint-N folder; "
                              "drop resume_from_checkpoint to train from the start, or name a checkpoint.")
        checkpoint_path = Path(checkpoint)
    else:
        checkpoint_path = Path(str(resume))
        if not checkpoint_path.is_dir():
            raise ConfigError(f"resume_from_checkpoint {checkpoint_path} is not a folder; pass a checkpoint-N folder "
                              "the Trainer wrote (or true for the last one in training.output_dir).")  # fmt: skip

    def step(path: Path) -> int:
        suffix = path.name.rsplit("-", 1)[-1]
        return int(suffix) if suffix.isdigit() else -1

    earlier = sorted((p for p in checkpoint_path.parent.glob("checkpoint-*") if p.is_dir()
                      and -1 < step(p) < step(checkpoint_path)), key=step, reverse=True)  # fmt: skip
    for file in sorted(checkpoint_path.iterdir()):
        problem = _damaged(file)
        if problem is None:
            continue
        if earlier:
            fix = (f"Resume from the earlier checkpoint {earlier[0]} (training.resume_from_checkpoint={earlier[0]}), "
                   f"and delete {checkpoint_path}.")  # fmt: skip
        else:
            fix = f"There is no earlier checkpoint: delete {checkpoint_path} and train from the start."
        raise HfPruneError(f"Checkpoint file {file} is damaged ({problem}). {fix}")
    return checkpoint_path


def _damaged(file: Path) -> str | None:
    """Why ``file`` (a checkpoint entry) cannot be read, or ``None``; checks without building a model."""
    import zipfile

    from .trainer import PRUNER_STATE_NAME

    if not file.is_file():
        return None
    try:
        if file.suffix == ".json":
            json.loads(file.read_text(encoding="utf-8"))
        elif file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        elif file.name == PRUNER_STATE_NAME:
            import torch

            state = torch.load(file, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                return "it does not hold a pruner state"
        elif file.suffix in (".pt", ".pth", ".bin"):
            if not zipfile.is_zipfile(file):
                return "not a PyTorch zip archive"
            with zipfile.ZipFile(file) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"entry {bad} fails its checksum"
    except Exception as err:  # noqa: BLE001 - any failure to read is the diagnosis; the text is not advice
        return f"cannot be read: {type(err).__name__}"
    return None


def mask_digest(masks: dict[str, Any]) -> str:
    """SHA-256 over mask names and bits: equal digests mean equal masks (used to check ranks agree)."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(masks[name].cpu().numpy().tobytes())
    return digest.hexdigest()


def train_glue(recipe: GlueRecipe) -> dict[str, Any]:
    """Fine-tune or fine-prune on a GLUE task, evaluate, and save the (pruned) model.

    Works under ``python`` and ``accelerate launch`` (the Trainer picks up the distributed setup). Data is
    tokenized on the main process first; printing and saving happen on the main process only. Before saving,
    every rank's masks are compared and a mismatch is an error.

    Returns:
        `dict`: evaluation metrics per eval split, the final sparsity, the mask digest and where the model went.
    """
    import numpy as np
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, set_seed

    from .data import classification_metrics, encode_labels, evaluate_classifier, label_spec
    from .glue import compute_glue_metrics, get_task, glue_card_evaluation, load_glue
    from .hub import check_output_directory
    from .trainer import PruningTrainer

    task = get_task(recipe.task) if recipe.task is not None else None
    args = build_training_arguments(recipe.training)
    # Everything that can fail on the user's input fails here, before models load and data is tokenized.
    check_model_source(recipe.model, "model")
    check_model_source(recipe.teacher, "teacher")
    check_resume_checkpoint(args.resume_from_checkpoint, args.output_dir, recipe.pruning is not None)
    own = {purpose: recipe.text_data(purpose) for purpose in ("train", "validation")} if task is None else None
    if own and recipe.head_task() != "text-classification":
        return _train_answers_or_tags(recipe, args, own, recipe.head_task())
    own_rows = {purpose: data.load(purpose) for purpose, data in own.items()} if own else None
    if own and own_rows:
        text_columns, label_column = own["train"].columns(own_rows["train"])
        own["validation"].columns(own_rows["validation"])
        head = label_spec(list(own_rows["train"][label_column]), f"{own['train'].path} column {label_column!r}")
    if recipe.data_dir is not None and task is not None:
        from .glue import glue_files

        glue_files(task, recipe.data_dir)
    check_output_directory(recipe.output_dir or Path(args.output_dir) / "final", overwrite=True,
                           inputs=[recipe.model, recipe.teacher, recipe.data_dir])  # fmt: skip
    set_seed(args.seed)
    pruning_config = recipe.pruning_config()
    distillation_config = recipe.distillation_config()

    with args.main_process_first(desc="loading and tokenizing the data"):
        tokenizer = AutoTokenizer.from_pretrained(recipe.model)
        if task is not None:
            raw = load_glue(task, recipe.data_dir, max_samples=None)
            text_keys = tuple(task.text_keys)
        else:
            raw, text_keys = own_rows, text_columns

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            encoded = tokenizer(*[[str(text) for text in batch[key]] for key in text_keys], truncation=True,
                                max_length=recipe.max_seq_length)  # fmt: skip
            if task is None:  # class names -> ids, checked against the head the training labels call for
                encoded["labels"] = encode_labels(batch[label_column], types.SimpleNamespace(**head),
                                                  f"{own['train'].path} column {label_column!r}")  # fmt: skip
            return encoded

        limits = {"train": recipe.max_train_samples}
        encoded = {}
        for split, dataset in raw.items():
            limit = limits.get(split, recipe.max_eval_samples)
            if limit is not None:
                dataset = dataset.select(range(min(limit, len(dataset))))
            keep = () if task is None else ("label",)
            encoded[split] = dataset.map(tokenize, batched=True,
                                         remove_columns=[c for c in dataset.column_names if c not in keep])

    if task is not None:
        label_kwargs: dict[str, Any] = {"num_labels": task.num_labels}
        if not task.is_regression:
            label_kwargs["id2label"] = dict(enumerate(task.label_names))
            label_kwargs["label2id"] = {name: i for i, name in enumerate(task.label_names)}
    else:
        label_kwargs = head
    model = AutoModelForSequenceClassification.from_pretrained(recipe.model, **label_kwargs)
    teacher = None
    if recipe.teacher is not None:
        teacher = AutoModelForSequenceClassification.from_pretrained(recipe.teacher)
    for network in (model, teacher):
        if network is not None:
            check_text_length(network, recipe.max_seq_length, "max_seq_length")  # before any training step

    regression = label_kwargs["num_labels"] == 1

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted = logits.reshape(-1) if regression else np.argmax(logits, axis=-1)
        if task is None:
            return classification_metrics(predicted, prediction.label_ids)
        return compute_glue_metrics(task, predicted, prediction.label_ids)

    eval_splits = list(task.eval_splits) if task is not None else ["validation"]
    trainer = PruningTrainer(
        model=model,
        args=args,
        train_dataset=encoded["train"],
        eval_dataset={split: encoded[split] for split in eval_splits},
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        pruning_config=pruning_config,
        teacher_model=teacher,
        distillation_config=distillation_config,
        score_learning_rate=recipe.score_learning_rate,
    )
    train_output = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    metrics = {split: trainer.evaluate(encoded[split], metric_key_prefix=f"eval_{split}") for split in eval_splits}

    split = eval_splits[0]
    teacher_metrics = None
    base_label = f"the dense teacher ({Path(str(recipe.teacher)).name})"
    evaluate_teacher_here = teacher is not None and _evaluates_here(trainer)
    if task is not None:
        if evaluate_teacher_here:
            # The dense teacher is the card's reference: same dev data and metric, apart from the run's logs.
            from .glue import evaluate_glue

            teacher_metrics = evaluate_glue(teacher, tokenizer, task, recipe.data_dir,
                                            batch_size=args.per_device_eval_batch_size,
                                            max_length=recipe.max_seq_length)  # fmt: skip
        evaluation = glue_card_evaluation(task, {split: _task_metrics(metrics[split], split)}, teacher_metrics,
                                          base_label=base_label)  # fmt: skip
    else:
        from .hub import CardEvaluation

        if evaluate_teacher_here:
            # The whole split (tokenizer outputs and labels only): the trainer's evaluation loader gives each process
            # only its share of it.
            dev = DataLoader(encoded[split], args.per_device_eval_batch_size, collate_fn=trainer.data_collator)
            teacher_metrics = {k: v for k, v in evaluate_classifier(teacher, list(dev)).items() if k != "num_rows"}
        evaluation = CardEvaluation(task_type="text-classification", dataset_type=own["validation"].path,
                                    dataset_name=own["validation"].path, metrics=_task_metrics(metrics[split], split),
                                    base_metrics=teacher_metrics or {}, base_label=base_label)  # fmt: skip
    return _save_trained(trainer, recipe, args, train_output, metrics, evaluation,
                         task.name if task is not None else own["train"].path)  # fmt: skip


def _train_answers_or_tags(
    recipe: GlueRecipe, args: Any, data: dict[str, TextData], head_task: str
) -> dict[str, Any]:  # fmt: skip
    """`train_glue` for an extractive-QA or token-classification head on the recipe's own files: training
    features from `hfprune.question_answering` / `hfprune.token_classification`, the head's own loss (and KD on
    its logits), then SQuAD EM/F1 or entity F1 on the validation file for the pruned model and the teacher."""
    import transformers
    from datasets import Dataset

    from .hub import CardEvaluation, check_output_directory
    from .tasks import evaluate_task, task_rows
    from .trainer import PruningTrainer

    rows = {purpose: task_rows(source, head_task, purpose) for purpose, source in data.items()}
    rows["train"] = rows["train"][: recipe.max_train_samples]
    check_output_directory(recipe.output_dir or Path(args.output_dir) / "final", overwrite=True,
                           inputs=[recipe.model, recipe.teacher])  # fmt: skip
    transformers.set_seed(args.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(recipe.model)
    if head_task == "question-answering":
        from .question_answering import qa_features

        model_class, label_kwargs = transformers.AutoModelForQuestionAnswering, {}
        collator = transformers.default_data_collator
        features = {purpose: qa_features(part, tokenizer, max_seq_length=recipe.max_seq_length)
                    for purpose, part in rows.items()}  # fmt: skip
        model = model_class.from_pretrained(recipe.model)
    else:
        from .tasks import task_of
        from .token_classification import tag_labels, tagged_features

        model_class, collator = transformers.AutoModelForTokenClassification, None
        config = transformers.AutoConfig.from_pretrained(recipe.model)
        has_head = task_of((getattr(config, "architectures", None) or [None])[0]) == head_task
        # A checkpoint with a tagging head keeps its labels; a new head is given the training file's tags.
        label_kwargs = {} if has_head else tag_labels(rows["train"])
        model = model_class.from_pretrained(recipe.model, **label_kwargs)
        collator = transformers.DataCollatorForTokenClassification(tokenizer)
        features = {purpose: tagged_features(part, tokenizer, model.config, max_seq_length=recipe.max_seq_length)
                    for purpose, part in rows.items()}  # fmt: skip
    teacher = model_class.from_pretrained(recipe.teacher) if recipe.teacher is not None else None
    for network in (model, teacher):
        if network is not None:
            check_text_length(network, recipe.max_seq_length, "max_seq_length")
    trainer = PruningTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(features["train"]),
        eval_dataset=Dataset.from_list(features["validation"][: recipe.max_eval_samples]), processing_class=tokenizer,
        data_collator=collator, pruning_config=recipe.pruning_config(), teacher_model=teacher,
        distillation_config=recipe.distillation_config(), score_learning_rate=recipe.score_learning_rate,
    )  # fmt: skip
    train_output = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    metrics: dict[str, dict[str, float]] = {"validation": {}}
    teacher_metrics: dict[str, float] = {}
    if _evaluates_here(trainer):
        models = [trainer.model] + ([teacher] if teacher is not None else [])
        scored = evaluate_task(data["validation"], models, tokenizer, max_seq_length=recipe.max_seq_length,
                               num_examples=recipe.max_eval_samples)  # fmt: skip
        counts = ("num_questions", "num_sentences")
        metrics["validation"] = {key: value for key, value in scored[0].items() if key not in counts}
        if teacher is not None:
            teacher_metrics = {key: value for key, value in scored[1].items() if key not in counts}
    source = data["validation"].path
    evaluation = CardEvaluation(task_type=head_task, dataset_type=source, dataset_name=source,
                                metrics=metrics["validation"], base_metrics=teacher_metrics,
                                base_label=f"the dense teacher ({Path(str(recipe.teacher)).name})")  # fmt: skip
    return _save_trained(trainer, recipe, args, train_output, metrics, evaluation, data["train"].path)


def _evaluates_here(trainer: Any) -> bool:
    """Whether this process runs the workflow's own evaluations (beyond `Trainer.evaluate`): the main process, or
    under FSDP every process, on the same batches, since a sharded model gathers its weights from all ranks in each
    forward and run by the main process alone it would wait for the others forever."""
    return trainer.is_world_process_zero() or trainer.is_fsdp_enabled


def _save_trained(
    trainer: Any, recipe: GlueRecipe, args: Any, train_output: Any, metrics: dict[str, Any], evaluation: Any,
    task_name: str,
) -> dict[str, Any]:  # fmt: skip
    """Check that every rank holds the same masks, save the (pruned) model with its card, and report."""
    from accelerate.utils import gather_object

    digest = mask_digest(trainer.pruner.masks()) if trainer.pruner is not None else None
    digests = gather_object([digest])
    if len(set(digests)) != 1:
        raise RuntimeError(f"Pruning masks differ across processes ({digests}); the run is not consistent.")
    sparsity = trainer.pruner.mask_sparsity() if trainer.pruner is not None else 0.0
    output_dir = recipe.output_dir or str(Path(args.output_dir) / "final")
    distillation_config = recipe.distillation_config()
    notes = [f"Fine-pruned for {train_output.global_step} steps with `PruningTrainer`"
             + (f", distilled from `{recipe.teacher}`" if recipe.teacher is not None else "")]  # fmt: skip
    if distillation_config is not None:
        notes.append(f"Distillation: temperature {distillation_config.temperature}, alpha {distillation_config.alpha}")
    # A rerun replaces its own earlier output only (checked before training): never checkpoints or user files.
    trainer.save_pruned_model(output_dir, evaluation=evaluation, method_notes=notes, overwrite=True)
    result = {
        "task": task_name,
        "metrics": metrics,
        "sparsity": sparsity,
        "mask_digest": digest,
        "num_processes": trainer.accelerator.num_processes,
        "train_runtime_s": train_output.metrics.get("train_runtime"),
        "train_steps": train_output.global_step,
        "output_dir": output_dir,
    }
    if trainer.is_world_process_zero():
        Path(output_dir, "eval_results.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print("hfprune eval results: " + json.dumps(result, sort_keys=True), flush=True)
    return result


def _task_metrics(evaluated: dict[str, float], split: str) -> dict[str, float]:
    """``{"eval_validation_accuracy": 0.9, "eval_validation_loss": ...}`` -> ``{"accuracy": 0.9}``."""
    prefix = f"eval_{split}_"
    skip = ("loss", "runtime", "samples_per_second", "steps_per_second", "model_preparation_time")
    return {key[len(prefix):]: float(value) for key, value in evaluated.items()
            if key.startswith(prefix) and key[len(prefix):] not in skip}  # fmt: skip


def glue_calibration_batches(
    task: str,
    data_dir: str | os.PathLike | None,
    tokenizer: Any,
    num_examples: int = 512,
    batch_size: int = 32,
    max_seq_length: int = 128,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``num_examples`` training rows of a GLUE task, drawn at random (seeded), as padded, labelled batches.

    A random draw rather than the first rows: GLUE training files are not shuffled (SST-2 starts with short
    phrases), and Fisher scores and least-squares targets should see the task's real distribution.
    """
    from transformers import DataCollatorWithPadding

    from .glue import get_task, load_glue

    for key, value in (("num_examples", num_examples), ("batch_size", batch_size), ("max_seq_length", max_seq_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"Calibration {key} must be a positive integer; got {value!r}.")
    glue_task = get_task(task)
    rows = load_glue(glue_task, data_dir, splits="train")["train"]
    rows = rows.shuffle(seed=seed).select(range(min(num_examples, len(rows))))
    texts = [list(rows[key]) for key in glue_task.text_keys]
    encoded = tokenizer(*texts, truncation=True, max_length=max_seq_length)
    collator = DataCollatorWithPadding(tokenizer)
    batches = []
    for start in range(0, len(rows), batch_size):
        features = [
            {**{key: encoded[key][i] for key in encoded}, "labels": rows[i]["label"]}
            for i in range(start, min(start + batch_size, len(rows)))
        ]
        batches.append(dict(collator(features)))
    return batches


@dataclass
class ImageRecipe:
    """A CNN prune / fine-tune / evaluate run on ImageNet-format data.

    Args:
        model (`str`): timm name (``cifar_resnet56``, ``resnet50``) or ``torchvision:<name>``.
        num_classes (`int`): Classifier outputs.
        checkpoint_path (`str`, *optional*): Weights to start from (timm ``checkpoint_path``).
        eval_data / eval_labels: Evaluation folder (or zip) and optional labels CSV.
        train_data / train_labels: Training folder (or zip) and labels CSV, for adaptive BN and fine-tuning.
        train_indices / eval_indices (`str`, *optional*): Text files of row indices selecting a fixed split.
        pruning (`dict`, *optional*): `PruningConfig` fields (``structure: channels``); ``None`` skips pruning.
        eagleeye (`dict`, *optional*): ``{num_candidates, max_ratio, bn_batches, eval_batches, seed}`` to choose
            per-layer widths by EagleEye instead of uniform ratios.
        lottery (`dict`, *optional*): `LotteryConfig` fields (``rounds``, ``prune_rate``, ``rewind_step``,
            ``pruning``, ``rate_overrides``): instead of pruning once, search for a lottery ticket, each round
            trained with ``training`` on ``train_data`` (`hfprune.workflows.lottery`).
        distillation (`dict`, *optional*): `DistillationConfig` fields; the dense model is the teacher.
        training (`dict`, *optional*): `TrainingArguments` for fine-tuning; ``None`` skips fine-tuning.
        output_dir (`str`): Where the pruned model and results go.
        classes (`list[str]` or `str`, *optional*): Class-folder names in label order (or a text file with one per
            line) for ImageFolder data; default: the model's label names, else all class folders sorted.
    """

    model: str
    num_classes: int
    output_dir: str
    checkpoint_path: str | None = None
    eval_data: str | None = None
    eval_labels: str | None = None
    train_data: str | None = None
    train_labels: str | None = None
    train_indices: str | None = None
    eval_indices: str | None = None
    batch_size: int = 64
    classes: list[str] | str | None = None
    pruning: dict[str, Any] | None = None
    eagleeye: dict[str, Any] | None = None
    lottery: dict[str, Any] | None = None
    distillation: dict[str, Any] | None = None
    training: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _coerce_own_fields(self, "Image recipe")
        _check_positive("Image recipe", num_classes=self.num_classes, batch_size=self.batch_size)
        self.classes = class_list(self.classes, self.num_classes)
        if self.pruning is not None:
            _check_keys("the pruning section", self.pruning, [f.name for f in dataclasses.fields(PruningConfig)])
        if self.eagleeye is not None:
            _check_keys("the eagleeye section", self.eagleeye, list(EAGLEEYE_KEYS))
            self.eagleeye = {key: coerce_value(value, EAGLEEYE_KEYS[key], key, "the eagleeye section")
                             for key, value in self.eagleeye.items()}  # fmt: skip
            _check_positive("the eagleeye section", **{key: self.eagleeye.get(key) for key in
                                                        ("num_candidates", "max_ratio", "bn_batches", "eval_batches")})
        if self.lottery is not None:
            if self.pruning is not None or self.eagleeye is not None or self.distillation is not None:
                raise ConfigError(
                    "A lottery section runs its own pruning rounds: remove the pruning, eagleeye and distillation "
                    "sections (what to prune goes in lottery.pruning)."
                )
            if self.training is None:
                raise ConfigError("A lottery section needs a training section: every round trains the network.")
        if self.training is not None:
            from transformers import TrainingArguments

            allowed = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
            _check_keys("the training section (TrainingArguments)", self.training, allowed)
            self.training = coerce_training_arguments(self.training)
            if self.train_data is None:
                raise ConfigError("A training section needs train_data (and usually train_labels).")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> ImageRecipe:
        path = Path(path)
        data = read_yaml_recipe(path)
        for assignment in overrides or []:
            set_dotted(data, assignment)
        _check_keys(f"recipe {path}", data, [f.name for f in dataclasses.fields(cls)])
        for required in ("model", "num_classes", "output_dir"):
            if required not in data:
                raise ConfigError(f"Recipe {path} needs a {required!r} key.")
        return cls(**data)


#: Keys of an image recipe's ``eagleeye:`` section and their types.
EAGLEEYE_KEYS: dict[str, Any] = {"num_candidates": int, "max_ratio": float, "bn_batches": int, "eval_batches": int,
                                 "seed": int}  # fmt: skip


def class_list(classes: Any, num_classes: int | None) -> list[str] | None:
    """A recipe's ``classes:``: a list of class-folder names in label order, or a text file with one per line."""
    if classes is None:
        return None
    if isinstance(classes, str):
        path = Path(classes)
        if not path.is_file():
            raise ConfigError(
                f"classes: {classes!r} is not a file. Give the class-folder names in label order, as a YAML list or "
                "a text file with one name per line."
            )
        classes = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not isinstance(classes, list) or not all(isinstance(name, (str, int)) and not isinstance(name, bool)
                                                for name in classes):  # fmt: skip
        raise ConfigError(f"classes must be a list of class-folder names in label order; got {classes!r}.")
    names = [str(name) for name in classes]
    if len(set(names)) != len(names):
        raise ConfigError(f"classes lists a name twice: {sorted(n for n in set(names) if names.count(n) > 1)}.")
    if num_classes is not None and len(names) != num_classes:
        raise ConfigError(f"classes has {len(names)} names but num_classes is {num_classes}; give one per class.")
    return names


def _subset(dataset: Any, indices_file: str | None) -> Any:
    if indices_file is None:
        return dataset
    from torch.utils.data import Subset

    path = Path(indices_file)
    if not path.is_file():
        raise ConfigError(f"Indices file {path} does not exist (or is a folder). Pass a text file of row indices.")
    try:
        words = path.read_text(encoding="utf-8").split()
    except UnicodeDecodeError:
        raise ConfigError(f"Indices file {path} is not UTF-8 text; it must hold one row index per line.") from None
    bad = [word for word in words if not word.isdigit()]
    if bad or not words:
        raise ConfigError(f"Indices file {path} must hold one non-negative integer per line; "
                          + (f"found {bad[:3]}." if bad else "it is empty."))  # fmt: skip
    indices = [int(word) for word in words]
    if max(indices) >= len(dataset):
        raise ConfigError(f"Indices file {path} selects row {max(indices)}, but the data has {len(dataset)} rows.")
    return Subset(dataset, indices)


def _weights_digest(model: Any) -> str:
    # Parameters only: DDP syncs BatchNorm statistics from rank 0 before each step, not after the last one.
    return mask_digest({name: param.detach().float() for name, param in model.named_parameters()})


def train_image(recipe: ImageRecipe) -> dict[str, Any]:
    """Prune (uniform or EagleEye), optionally fine-tune with distillation, evaluate top-1/top-5, save; or, with a
    ``lottery`` section, search for a lottery ticket (`hfprune.workflows.lottery.run_lottery_recipe`)."""
    if recipe.lottery is not None:
        from .workflows.lottery import run_lottery_recipe

        return run_lottery_recipe(recipe)
    import copy

    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object
    from torch.utils.data import DataLoader
    from transformers import set_seed

    from .channels import (
        ChannelPlan,
        apply_channel_plan_,
        count_flops,
        create_base_model,
        eagleeye_search,
        plan_channels,  # fmt: skip
    )

    # Under `accelerate launch` every rank runs this function: the main process plans, evaluates and writes; the
    # others receive its plan and only take part in fine-tuning.
    from .hub import check_output_directory, save_channel_pruned
    from .vision import ImageClassifier, LabelledImages, eval_transform, evaluate_images, model_class_names

    training_args = build_training_arguments(recipe.training) if recipe.training is not None else None
    # Before the model is built: the saver at the end replaces only an earlier hfprune output (overwrite=True).
    check_output_directory(recipe.output_dir, overwrite=True,
                           inputs=[recipe.checkpoint_path, recipe.eval_data, recipe.train_data])  # fmt: skip
    # Without GPUs, torchrun ranks form a gloo group only when accelerate is told it runs on the CPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    main = state.is_main_process
    # Same initial weights on every rank (random-init models, and the dense teacher each rank keeps).
    set_seed((recipe.training or {}).get("seed", 42))
    model = create_base_model(recipe.model, recipe.num_classes)
    if recipe.checkpoint_path:
        from .models.cifar_resnet import load_cifar_checkpoint

        load_cifar_checkpoint(model, recipe.checkpoint_path)
    model.eval()
    transform = eval_transform(model)
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    example = torch.zeros(1, *size)

    # One label mapping for every split: the recipe's classes, else the model's label names (else sorted folders).
    class_names = recipe.classes or model_class_names(model)

    def dataset(root: str | None, labels: str | None, indices: str | None, as_dict: bool = False) -> Any:
        if root is None:
            return None
        return _subset(LabelledImages(root, labels, transform, class_names=class_names,
                                      num_classes=recipe.num_classes, as_dict=as_dict), indices)  # fmt: skip

    eval_set = dataset(recipe.eval_data, recipe.eval_labels, recipe.eval_indices)
    train_set = dataset(recipe.train_data, recipe.train_labels, recipe.train_indices)
    result: dict[str, Any] = {"model": recipe.model, "dense_flops": count_flops(model, example),
                              "dense_params": sum(p.numel() for p in model.parameters())}  # fmt: skip
    if eval_set is not None and main:
        result["dense"] = evaluate_images(model, eval_set, recipe.batch_size)
    dense = copy.deepcopy(model)
    plan = None
    if recipe.pruning is not None:
        config = PruningConfig.from_dict(recipe.pruning)
        # Checked on every rank: the others must not wait in a collective for a main process that failed.
        if recipe.eagleeye is not None and train_set is None:
            raise ConfigError("EagleEye needs train_data for adaptive BN and candidate scoring.")
        planning_error = None
        try:
            if main and recipe.eagleeye is not None:
                options = dict(recipe.eagleeye)
                loader = iter(DataLoader(train_set, batch_size=recipe.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(options.get("seed", 0))))  # fmt: skip
                bn_batches = [next(loader) for _ in range(options.pop("bn_batches", 10))]
                eval_batches = [next(loader) for _ in range(options.pop("eval_batches", 5))]
                plan, candidates = eagleeye_search(model, config, example, bn_batches, eval_batches, **options)
                result["eagleeye_candidates"] = candidates
            elif main:
                data = DataLoader(train_set, batch_size=recipe.batch_size) if train_set is not None else None
                plan = plan_channels(model, config, example, data, num_batches=10)
        except Exception as err:  # re-raised below, after the other ranks have heard of it
            if state.num_processes == 1:
                raise
            planning_error = f"{type(err).__name__}: {err}"
        if state.num_processes > 1:
            shared = [{"error": planning_error} if planning_error else (plan.to_dict() if main else None)]
            broadcast_object_list(shared)
            if "error" in shared[0]:
                raise HfPruneError(f"Planning failed on the main process: {shared[0]['error']}")
            plan = ChannelPlan.from_dict(shared[0])
        apply_channel_plan_(model, plan, example)
        result["pruned_flops"] = count_flops(model, example)
        result["pruned_params"] = sum(p.numel() for p in model.parameters())
        if eval_set is not None and main:
            result["pruned"] = evaluate_images(model, eval_set, recipe.batch_size)
    if training_args is not None:
        from .distillation import DistillationConfig
        from .trainer import PruningTrainer

        train_dict = dataset(recipe.train_data, recipe.train_labels, recipe.train_indices, as_dict=True)
        distillation = DistillationConfig.from_dict(recipe.distillation) if recipe.distillation else None
        trainer = PruningTrainer(
            model=ImageClassifier(model), args=training_args, train_dataset=train_dict,
            teacher_model=ImageClassifier(dense) if distillation is not None else None,
            distillation_config=distillation,
        )  # fmt: skip
        trainer.train()
        model.eval()
        # DDP keeps replicas in sync; a differing digest means the ranks did not train one model.
        digests = gather_object([_weights_digest(model)])
        if len(set(digests)) != 1:
            raise RuntimeError(f"Fine-tuned weights differ across processes ({digests}); the run is not consistent.")
        result["num_processes"] = state.num_processes
        if eval_set is not None and main:
            result["fine_tuned"] = evaluate_images(model, eval_set, recipe.batch_size)
    if not main:
        return result
    if plan is not None:
        after = result.get("fine_tuned") or result.get("pruned")
        evaluation = None
        if after is not None:
            from .vision import image_card_evaluation

            evaluation = image_card_evaluation(after, result["dense"], Path(str(recipe.eval_data)).name)
        notes = ["Per-layer widths chosen by EagleEye (adaptive-BN candidate evaluation)"] if recipe.eagleeye else []
        if training_args is not None:
            budget = f"{training_args.max_steps} steps" if training_args.max_steps > 0 else "the configured epochs"
            kd = ", distilled from the dense model" if recipe.distillation else ""
            notes.append(f"Fine-tuned with `PruningTrainer` for {budget}{kd}")
        save_channel_pruned(model, recipe.output_dir, plan, architecture=recipe.model, num_classes=recipe.num_classes,
                            pruning_config=PruningConfig.from_dict(recipe.pruning or {}), base_model=recipe.model,
                            evaluation=evaluation, method_notes=notes, overwrite=True)  # fmt: skip
        Path(recipe.output_dir, "eval_results.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print("hfprune image results: " + json.dumps({k: v for k, v in result.items() if k != "eagleeye_candidates"},
                                                 sort_keys=True), flush=True)  # fmt: skip
    return result
