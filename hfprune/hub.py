"""Saving and loading pruned models: safetensors weights, JSON configs, a model card, atomic writes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from torch import nn

from .config import PruningConfig
from .errors import ConfigError, HfPruneError
from .masks import merged_state_dict
from .reporting import PruningReport, compare_reports


TEMPLATE_PATH = Path(__file__).parent / "model_cards" / "pruned_model.md"
STRUCTURE_PLOT_NAME = "kept_structure.png"
#: Where the card's loading snippets say the model is; `hfprune push` replaces it with the repository id.
CARD_PLACEHOLDER_PATH = "path/to/this/folder"


@contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block finishes without error.

    A crash or Ctrl-C inside the block leaves ``path`` untouched (and no half-written model behind).
    """
    final = Path(path).resolve()
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise HfPruneError(f"Output directory {final} exists and is not empty. Pass overwrite=True (--overwrite).")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = None
    if final.exists():
        backup = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(backup)
    staging.rename(final)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def load_model(name_or_path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a transformers model with the class named in its config (``architectures[0]``), else `AutoModel`."""
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path)
    except OSError as err:
        raise HfPruneError(
            f"Could not load a model config from {str(name_or_path)!r}: {err}. Pass a local folder with config.json "
            "(hub ids need network access)."
        ) from err
    architectures = getattr(config, "architectures", None) or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    if model_class is None:
        model_class = transformers.AutoModel
    return model_class.from_pretrained(name_or_path, config=config, **kwargs)


@dataclass
class CardEvaluation:
    """Metrics of the pruned model (and of the model it was pruned from) on one dataset, for the model card.

    They become the card's ``model-index`` eval results (`huggingface_hub.EvalResult`) and its results table.

    Args:
        task_type (`str`): Hub task id, e.g. ``"text-classification"`` or ``"image-classification"``.
        dataset_type (`str`): Hub dataset id, e.g. ``"nyu-mll/glue"``.
        dataset_name (`str`): Human-readable name, e.g. ``"GLUE SST-2"``.
        metrics (`dict[str, float]`): The pruned model's metrics, e.g. ``{"accuracy": 0.874}``.
        base_metrics (`dict[str, float]`, *optional*): The same metrics for the dense reference.
        dataset_config (`str`, *optional*): Dataset config, e.g. ``"sst2"``.
        dataset_split (`str`, *optional*): Split, e.g. ``"validation"``.
        base_label (`str`): What the reference is, e.g. ``"the dense teacher"`` when the base checkpoint itself
            was never trained on the task (its metric names in the model-index say so).
    """

    task_type: str
    dataset_type: str
    dataset_name: str
    metrics: dict[str, float]
    base_metrics: dict[str, float] = field(default_factory=dict)
    dataset_config: str | None = None
    dataset_split: str | None = None
    base_label: str = "the base model before pruning"

    def eval_results(self) -> list[EvalResult]:
        """One `EvalResult` per metric of the pruned model, plus one per base-model metric (named as such)."""
        common = dict(task_type=self.task_type, dataset_type=self.dataset_type, dataset_name=self.dataset_name,
                      dataset_config=self.dataset_config, dataset_split=self.dataset_split)  # fmt: skip
        results = [EvalResult(metric_type=name, metric_value=float(value), **common)  # type: ignore[arg-type]
                   for name, value in self.metrics.items()]  # fmt: skip
        results += [
            EvalResult(metric_type=name, metric_name=f"{name} of {self.base_label}",
                       metric_value=float(value), **common)  # type: ignore[arg-type]
            for name, value in self.base_metrics.items()
        ]  # fmt: skip
        return results

    def to_markdown(self) -> str:
        lines = [f"| metric | {self.base_label} | pruned | change |", "|---|---:|---:|---:|"]
        for name, value in self.metrics.items():
            base = self.base_metrics.get(name)
            change = f"{value - base:+.4f}" if base is not None else "-"
            lines.append(f"| {name} | {'-' if base is None else f'{base:.4f}'} | {value:.4f} | {change} |")
        split = f" ({self.dataset_split})" if self.dataset_split else ""
        return f"{self.dataset_name}{split}:\n\n" + "\n".join(lines) + "\n"


def structure_rows(plan: Any = None, report: PruningReport | None = None) -> list[tuple[str, str, int, int]]:
    """``(group, label, kept, total)`` rows describing what each layer kept: heads and neurons of a `PruningPlan`,
    channels of a `ChannelPlan`, else nonzero weights per layer from ``report``."""
    if plan is not None and hasattr(plan, "heads"):
        rows = [("heads", f"layer {i}", len(kept), plan.num_heads) for i, kept in enumerate(plan.heads)]
        return rows + [
            ("neurons", f"layer {i}", len(kept), plan.intermediate_size) for i, kept in enumerate(plan.neurons)
        ]
    if plan is not None and hasattr(plan, "kept"):
        return [("channels", name, len(kept), plan.num_channels[name]) for name, kept in plan.kept.items()]
    if report is not None:
        return [("nonzero weights", layer.name, layer.nonzeros, layer.params) for layer in report.layers]
    return []


def _structure_table(rows: list[tuple[str, str, int, int]]) -> str:
    if not rows:
        return "No per-layer structure was recorded."
    lines = ["| kind | layer | kept | of | kept % |", "|---|---|---:|---:|---:|"]
    lines += [f"| {group} | {label} | {kept:,} | {total:,} | {kept / total:.1%} |" if total else
              f"| {group} | {label} | {kept:,} | {total:,} | - |" for group, label, kept, total in rows]  # fmt: skip
    return "\n".join(lines) + "\n"


def _load_section(model: nn.Module, repo_or_path: str, plan: Any, library: str) -> str:
    architecture = type(model).__name__
    if library == "timm":
        return (
            "The convolutions were physically shrunk (`pruning_plan.json` lists the kept channels):\n\n"
            "```python\nfrom hfprune.channels import load_channel_pruned\n\n"
            f"model = load_channel_pruned({repo_or_path!r})  # base architecture -> plan -> weights\n```\n"
        )
    try:
        from .export import _auto_class

        auto = _auto_class(architecture)
    except ConfigError:
        auto = "AutoModel"
    if plan is None:
        return (
            "The pruned weights are zeros in the original shapes: plain transformers loads it, hfprune is not "
            "needed.\n\n"
            f"```python\nfrom transformers import {auto}\n\nmodel = {auto}.from_pretrained({repo_or_path!r})\n```\n"
        )
    return (
        "The layers were physically shrunk (`pruning_plan.json` lists the kept heads and neurons), so "
        "`from_pretrained` alone cannot rebuild them. With hfprune:\n\n"
        f"```python\nimport hfprune\n\nmodel = hfprune.load_pruned({repo_or_path!r})  # base architecture -> plan -> "
        "weights\n```\n\nWith plain transformers and no hfprune installed, export it once with modeling code that "
        "transformers runs (`trust_remote_code`):\n\n"
        f"```bash\nhfprune export --model {repo_or_path} --output exported --format remote-code\n```\n\n"
        f'```python\nfrom transformers import {auto}\n\nmodel = {auto}.from_pretrained("exported", '
        "trust_remote_code=True)\n```\n\n`--format plain` writes an ordinary checkpoint instead when every layer "
        "kept all its heads and the same FFN width.\n"
    )


def render_model_card(
    model: nn.Module,
    base_model: str,
    pruning_config: PruningConfig | None,
    report: PruningReport | None,
    base_report: PruningReport | None = None,
    repo_or_path: str = CARD_PLACEHOLDER_PATH,
    *,
    plan: Any = None,
    evaluation: CardEvaluation | None = None,
    method_notes: Sequence[str] = (),
    structure_plot: str | None = None,
    library: str = "transformers",
    model_name: str | None = None,
) -> ModelCard:
    """A `huggingface_hub.ModelCard` saying how the model was pruned, how well it does and what it costs.

    Args:
        model (`nn.Module`): The pruned model.
        base_model (`str`): What it was pruned from (a hub id becomes the card's ``base_model``).
        pruning_config (`PruningConfig`, *optional*): How it was pruned (``None``: not recorded).
        report / base_report (`PruningReport`, *optional*): Size, FLOPs and latency after and before pruning.
        repo_or_path (`str`): Where users load it from, for the code snippets.
        plan (`PruningPlan` or `ChannelPlan`, *optional*): The kept structure of a compacted model.
        evaluation (`CardEvaluation`, *optional*): Metrics after and before pruning (the card's model-index).
        method_notes (`Sequence[str]`): More lines for "What was done" (distillation, fine-tuning budget, ...).
        structure_plot (`str`, *optional*): File name of a kept-structure figure next to the card.
        library (`str`): ``"transformers"`` or ``"timm"``.
        model_name (`str`, *optional*): Name in the card's model-index (default: base model name + "-pruned").
    """
    from . import __version__

    if pruning_config is None:
        target = "not recorded (the plan in `pruning_plan.json` is what was kept)"
    elif pruning_config.target_flops is not None:
        target = f"keep {pruning_config.target_flops:.0%} of the FLOPs"
    elif pruning_config.target_params is not None:
        target = f"keep {pruning_config.target_params:.0%} of the encoder's head and FFN parameters"
    else:
        target = f"sparsity {pruning_config.sparsity} of the prunable {'units' if plan is not None else 'weights'}"
    tags = ["hfprune", "pruned", "structured-pruning" if plan is not None else "sparse"]
    hub_base = base_model if "/" in base_model and not Path(base_model).exists() else None
    card_data = ModelCardData(
        library_name=library,
        tags=tags,
        base_model=hub_base,
        model_name=(model_name or f"{Path(str(base_model)).name}-pruned") if evaluation is not None else None,
        eval_results=evaluation.eval_results() if evaluation is not None else None,
    )
    if report is not None and base_report is not None:
        summary = compare_reports(base_report, report)
    elif report is not None:
        summary = report.to_markdown(layers=False)
    else:
        summary = "Not measured."
    latency_report = report if report is not None and report.latency_ms is not None else None
    if latency_report is not None:
        speed_note = (
            f"Latency: median of {latency_report.latency_runs} forward passes at input shape "
            f"{latency_report.input_shape} on {latency_report.device or 'this machine'}, base and pruned interleaved."
        )
    else:
        speed_note = "Latency was not measured for this folder (`hfprune report --model DIR` measures it)."
    if (
        pruning_config is not None
        and plan is None
        and pruning_config.structure.registered_name in ("unstructured", "blocks")
    ):  # type: ignore[union-attr]
        speed_note += " Unstructured zeros keep the dense shapes: FLOPs and latency drop only with sparse kernels."
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name or f"{Path(str(base_model)).name} (pruned)",
        hfprune_version=__version__,
        base_model=base_model,
        dataset_name=evaluation.dataset_name if evaluation is not None else None,
        importance=pruning_config.importance.registered_name if pruning_config else "not recorded",  # type: ignore[union-attr]
        structure=pruning_config.structure.registered_name if pruning_config else "channels",  # type: ignore[union-attr]
        scope=pruning_config.scope if pruning_config else "-",
        target=target,
        method_notes=list(method_notes),
        eval_table=evaluation.to_markdown() if evaluation is not None else "",
        summary_table=summary,
        speed_note=speed_note,
        structure_table=_structure_table(structure_rows(plan, report)),
        structure_plot=structure_plot,
        load_section=_load_section(model, repo_or_path, plan, library),
        pruning_config=pruning_config.to_json_string().strip() if pruning_config else "{}",
    )


def write_model_card(
    directory: Path, model: nn.Module, base_model: str, pruning_config: PruningConfig | None, **kwargs: Any
) -> None:
    """Render the card into ``directory/README.md``, with a kept-structure figure when matplotlib is installed."""
    rows = structure_rows(kwargs.get("plan"), kwargs.get("report"))
    plot = None
    if rows:
        from .plotting import plot_kept_structure

        try:
            plot_kept_structure(rows, directory / STRUCTURE_PLOT_NAME, title="Kept per layer")
            plot = STRUCTURE_PLOT_NAME
        except ConfigError:  # matplotlib is an optional extra: the card keeps its table
            plot = None
    card = render_model_card(model, base_model, pruning_config, structure_plot=plot, **kwargs)
    card.save(directory / "README.md")


def save_pruned(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    pruning_config: PruningConfig,
    report: PruningReport | None = None,
    base_report: PruningReport | None = None,
    base_model: str | None = None,
    tokenizer: Any = None,
    extra_configs: tuple[Any, ...] = (),
    plan: Any = None,
    evaluation: CardEvaluation | None = None,
    method_notes: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """Write a pruned model folder atomically.

    The folder holds ``config.json`` and ``model.safetensors`` (masks multiplied in, no parametrization keys),
    ``pruning_config.json``, ``report.json`` and a ``README.md`` model card; plus the tokenizer and any
    ``extra_configs`` (objects with ``save_pretrained``, e.g. a `DistillationConfig`). With a ``plan`` (a
    compacted model) ``pruning_plan.json`` is written too; load such a folder with `hfprune.load_pruned`. The card
    gets ``evaluation`` as model-index eval results, and a ``kept_structure.png`` figure when matplotlib is there.
    """
    if not hasattr(model, "save_pretrained"):
        raise ConfigError(f"{type(model).__name__} has no save_pretrained(); save_pruned needs a transformers model.")
    base_model = base_model or str(getattr(getattr(model, "config", None), "_name_or_path", "") or "unknown")
    with atomic_directory(save_directory, overwrite=overwrite) as staging:
        model.save_pretrained(staging, state_dict=merged_state_dict(model))
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        pruning_config.save_pretrained(staging)
        if plan is not None:
            plan.save_pretrained(staging)
        for extra in extra_configs:
            extra.save_pretrained(staging)
        if report is not None:
            report.save(staging / "report.json")
        write_model_card(staging, model, base_model, pruning_config, report=report, base_report=base_report,
                         plan=plan, evaluation=evaluation, method_notes=method_notes,
                         model_name=Path(save_directory).name)  # fmt: skip
    return Path(save_directory)


def load_pruning_config(directory: str | os.PathLike) -> PruningConfig | None:
    """The `PruningConfig` saved in ``directory``, or ``None`` for a model hfprune did not write."""
    path = Path(directory) / PruningConfig.config_name
    if not path.is_file():
        return None
    return PruningConfig.from_dict(json.loads(path.read_text()))
