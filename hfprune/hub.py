"""Saving and loading pruned models: safetensors weights, JSON configs, a model card, atomic writes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import transformers
from huggingface_hub import ModelCard, ModelCardData
from torch import nn

from .config import PruningConfig
from .errors import ConfigError, HfPruneError
from .masks import merged_state_dict
from .reporting import PruningReport, compare_reports


TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"


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


def render_model_card(
    model: nn.Module,
    base_model: str,
    pruning_config: PruningConfig,
    report: PruningReport | None,
    base_report: PruningReport | None = None,
    repo_or_path: str = "path/to/this/folder",
    structured: bool = False,
) -> ModelCard:
    """A `huggingface_hub.ModelCard` describing how the model was pruned and what it costs."""
    from . import __version__

    card_data = ModelCardData(
        library_name="transformers",
        tags=["hfprune", "pruned", f"sparsity-{round(pruning_config.sparsity * 100)}"],
        base_model=base_model if "/" in base_model and not Path(base_model).exists() else None,
    )
    if report is not None and base_report is not None:
        summary = compare_reports(base_report, report)
    elif report is not None:
        summary = report.to_markdown(layers=False)
    else:
        summary = ""
    layer_table = report.to_markdown(layers=True).split("\n\n", 2)[-1] if report is not None else ""
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=f"{Path(str(base_model)).name} (pruned)",
        hfprune_version=__version__,
        base_model=base_model,
        importance=pruning_config.importance.registered_name,  # type: ignore[union-attr]
        structure=pruning_config.structure.registered_name,  # type: ignore[union-attr]
        scope=pruning_config.scope,
        sparsity=pruning_config.sparsity,
        summary_table=summary,
        layer_table=layer_table,
        pruning_config=pruning_config.to_json_string().strip(),
        repo_or_path=repo_or_path,
        structured=structured,
    )


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
    overwrite: bool = False,
) -> Path:
    """Write a pruned model folder atomically.

    The folder holds ``config.json`` and ``model.safetensors`` (masks multiplied in, no parametrization keys),
    ``pruning_config.json``, ``report.json`` and a ``README.md`` model card; plus the tokenizer and any
    ``extra_configs`` (objects with ``save_pretrained``, e.g. a `DistillationConfig`). With a ``plan`` (a
    compacted model) ``pruning_plan.json`` is written too; load such a folder with `hfprune.load_pruned`.
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
        card = render_model_card(model, base_model, pruning_config, report, base_report, structured=plan is not None)
        card.save(staging / "README.md")
    return Path(save_directory)


def load_pruning_config(directory: str | os.PathLike) -> PruningConfig | None:
    """The `PruningConfig` saved in ``directory``, or ``None`` for a model hfprune did not write."""
    path = Path(directory) / PruningConfig.config_name
    if not path.is_file():
        return None
    return PruningConfig.from_dict(json.loads(path.read_text()))
