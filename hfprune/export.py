"""Export a compacted model so that it loads with plain transformers, no hfprune needed.

- `export_remote_code`: writes ``modeling_hfprune.py`` beside the weights and an ``auto_map`` in ``config.json``;
  ``AutoModelFor...from_pretrained(folder, trust_remote_code=True)`` rebuilds the shrunk layers.
- `export_plain`: when every layer kept all heads and the same number of FFN neurons, the architecture's own
  config can express the model (its FFN width, e.g. ``intermediate_size``), so the folder needs no custom code at
  all. Encoder configs derive the head size from ``hidden_size / num_attention_heads``, so fewer heads of the same
  size cannot be expressed without custom code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from .compaction import PruningPlan, encoder_structure
from .errors import ConfigError
from .hub import atomic_directory, auto_class_name, save_weights
from .masks import merged_state_dict


TEMPLATE = Path(__file__).parent / "templates" / "modeling_hfprune.py.tmpl"
#: The one implementation of shrinking, copied verbatim into every remote-code folder.
SHRINK_SOURCE = Path(__file__).parent / "shrink.py"


def remote_code_source(model: nn.Module, class_name: str) -> str:
    """``modeling_hfprune.py`` for ``model``: hfprune's shrink module, the adapter's unit groups as JSON, and a
    subclass of the base architecture that applies ``config.hfprune_plan`` at construction."""
    adapter, _, _ = encoder_structure(model)
    code = TEMPLATE.read_text()
    code = code.replace("{spec_json}", repr(json.dumps(adapter.shrink_spec(model), sort_keys=True)))
    code = code.replace("{base_class}", type(model).__name__).replace("{class_name}", class_name)
    # Last, so nothing in the module's own text is taken for a placeholder.
    return code.replace("{shrink_source}", SHRINK_SOURCE.read_text())


def _source_folder(model: nn.Module) -> str:
    """The folder the model was loaded from (an export never replaces it)."""
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")


def export_remote_code(
    model: nn.Module, plan: PruningPlan, directory: str | os.PathLike, tokenizer: Any = None, overwrite: bool = False
) -> Path:
    """Write ``model`` (compacted with ``plan``) as a folder that loads with ``trust_remote_code=True``."""
    with atomic_directory(directory, overwrite=overwrite, inputs=(_source_folder(model),)) as staging:
        write_remote_code(model, plan, staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    return Path(directory)


def write_remote_code(model: nn.Module, plan: PruningPlan, folder: Path) -> None:
    """Write ``modeling_hfprune.py``, ``config.json`` (with the plan and an ``auto_map``), the weights and
    ``pruning_plan.json`` of ``model`` (compacted with ``plan``) into the existing ``folder``."""
    base_class = type(model).__name__
    class_name = f"Hfpruned{base_class}"
    (folder / "modeling_hfprune.py").write_text(remote_code_source(model, class_name))
    config = model.config  # type: ignore[attr-defined]
    previous_plan = getattr(config, "hfprune_plan", None)
    config.hfprune_plan = plan.config_entry()  # what the remote code's apply_plan reads
    config.auto_map = {auto_class_name(base_class): f"modeling_hfprune.{class_name}"}
    try:
        save_weights(model, folder)
    finally:
        config.__dict__.pop("hfprune_plan", None)
        if previous_plan is not None:
            config.hfprune_plan = previous_plan
        config.__dict__.pop("auto_map", None)
    plan.save_pretrained(folder)


def export_plain(
    model: nn.Module, plan: PruningPlan, directory: str | os.PathLike, tokenizer: Any = None, overwrite: bool = False
) -> Path:
    """Write ``model`` as an ordinary checkpoint of its architecture (uniform FFN width, all heads kept).

    Raises:
        ConfigError: the plan prunes heads or keeps different widths per layer; use `export_remote_code`.
    """
    widths = {len(kept) for kept in plan.neurons}
    if any(len(kept) != plan.num_heads for kept in plan.heads) or len(widths) != 1 or 0 in widths:
        raise ConfigError(
            "A plain-transformers export needs every layer to keep all its heads and the same (non-zero) number of "
            f"FFN neurons; this plan keeps heads {[len(h) for h in plan.heads]} and neurons "
            f"{[len(n) for n in plan.neurons]}. Use export_remote_code, which works for any plan."
        )
    config = model.config  # type: ignore[attr-defined]
    width_attribute = encoder_structure(model)[0].neurons_config_attribute
    original = getattr(config, width_attribute)
    with atomic_directory(directory, overwrite=overwrite, inputs=(_source_folder(model),)) as staging:
        setattr(config, width_attribute, widths.pop())
        # An ordinary checkpoint: its config describes the shapes by itself, so it must not carry a plan.
        plan_entry = config.__dict__.pop("hfprune_plan", None)
        try:
            model.save_pretrained(staging, state_dict=merged_state_dict(model))  # type: ignore[operator]
        finally:
            setattr(config, width_attribute, original)
            if plan_entry is not None:
                config.hfprune_plan = plan_entry
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    return Path(directory)
