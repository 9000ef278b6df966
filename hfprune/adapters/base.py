"""The adapter protocol and its registry, keyed by ``config.model_type``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError


class ArchAdapter:
    """What hfprune needs to know about one model family.

    Subclasses are declared as data (class attributes) wherever possible, so adding a family is small.
    """

    #: ``config.model_type`` values handled by this adapter.
    model_types: tuple[str, ...] = ()
    #: Full-match regex of the modules pruned by default (PEFT's ``target_modules`` semantics).
    default_target_modules: str = ""

    def example_inputs(self, model: nn.Module, batch_size: int = 1, seq_len: int = 128) -> dict[str, Any]:
        """Inputs of the given shape for FLOP counting and latency measurement."""
        raise TypeError(f"{type(self).__name__} does not build example inputs")


ADAPTERS: dict[str, ArchAdapter] = {}


def register_adapter(adapter: ArchAdapter) -> ArchAdapter:
    """Register ``adapter`` for each of its ``model_types``."""
    for model_type in adapter.model_types:
        ADAPTERS[model_type] = adapter
    return adapter


def model_type_of(model: nn.Module) -> str | None:
    """``model.config.model_type`` for transformers models, else ``None``."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def get_adapter(model: nn.Module, required: bool = True) -> ArchAdapter | None:
    """The adapter for ``model``'s architecture; raises `UnsupportedArchitectureError` if ``required`` and none."""
    model_type = model_type_of(model)
    if model_type in ADAPTERS:
        return ADAPTERS[model_type]
    if not required:
        return None
    described = (
        f"model_type {model_type!r}" if model_type else f"a plain {type(model).__name__} (no config.model_type)"
    )
    from ..targets import PRUNABLE_TYPES

    prunable = [name for name, module in model.named_modules() if name and isinstance(module, PRUNABLE_TYPES)]
    others = sorted({type(module).__name__ for module in model.modules() if type(module).__name__ == "Conv1D"})
    if prunable:
        shown = ", ".join(prunable[:3]) + (", ..." if len(prunable) > 3 else "")
        advice = (
            f"Unstructured or block pruning works on its {len(prunable)} nn.Linear/nn.Conv*/nn.Embedding layers "
            f"({shown}): pass target_modules (a full-match regex or a list of module names)."
        )
    else:
        advice = "It has no nn.Linear, nn.Conv* or nn.Embedding layer, so hfprune cannot prune it."
    if others:
        advice += " Its transformers Conv1D layers (GPT-2 style) are not prunable by hfprune."
    raise UnsupportedArchitectureError(
        f"hfprune has no adapter for {described}. Supported model types: {', '.join(sorted(ADAPTERS))} "
        f"(structured head/neuron pruning needs one of them). {advice}"
    )


def text_example_inputs(model: nn.Module, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """Random token ids within the model's vocabulary and a full attention mask.

    ``seq_len`` is capped at the model's ``max_position_embeddings`` (small test models have short ones).
    """
    config = model.config  # type: ignore[attr-defined]
    seq_len = min(seq_len, getattr(config, "max_position_embeddings", seq_len))
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator)
    device = next(model.parameters()).device
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=device),
    }
