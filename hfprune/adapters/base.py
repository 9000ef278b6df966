"""The adapter protocol and its registry, keyed by ``config.model_type``.

An adapter is everything hfprune knows about one model family, given as data wherever possible: where the
repeated layers are, which parameter slices make up each prunable unit (`hfprune.shrink.UnitGroup`), what a unit
costs, which sublayers least-squares reconstruction works on, and example inputs. Engines (scoring, masking,
compaction, reconstruction, export) read only this description, so a new family is one adapter file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, UnsupportedArchitectureError
from ..shrink import ParamSlice, UnitGroup, find_layers


#: Marks an attribute fix whose per-unit value is the group's unit size (e.g. ``all_head_size``).
UNIT_SIZE = -1


@dataclass(frozen=True)
class Sublayer:
    """One residual sublayer (attention or FFN) of one layer, for least-squares reconstruction.

    Args:
        kind (`str`): The units it is made of (``"heads"`` or ``"neurons"``).
        layer (`int`): Index of the repeated layer.
        consumer (`str`): Full module name of its output projection (`UnitGroup.consumer`).
        stream (`str`): Full name of the first module whose input is the residual stream right after this
            sublayer (sublayer output + residual): the following LayerNorm in post-norm models, the next
            sublayer's pre-norm (or the final norm) in pre-norm models.
    """

    kind: str
    layer: int
    consumer: str
    stream: str


class ArchAdapter:
    """What hfprune needs to know about one model family.

    Subclasses are declared as data (class attributes) wherever possible, so adding a family is small.
    """

    #: ``config.model_type`` values handled by this adapter.
    model_types: tuple[str, ...] = ()
    #: Full-match regex of the modules pruned by default (PEFT's ``target_modules`` semantics).
    default_target_modules: str = ""
    #: Structured kinds (unit groups) this family has; empty when it has no heads/neurons to remove.
    unit_kinds: tuple[str, ...] = ()
    #: The config attribute holding the FFN width (a plain-transformers export of uniform widths rewrites it).
    neurons_config_attribute: str = "intermediate_size"

    def layers(self, model: nn.Module) -> nn.ModuleList:
        """The repeated layers whose units are pruned."""
        raise UnsupportedArchitectureError(f"{type(self).__name__} has no heads or neurons to prune.")

    def unit_groups(self, model: nn.Module) -> dict[str, UnitGroup]:
        """The unit groups of ``model``'s layers by kind, resolved (unit sizes filled in)."""
        raise UnsupportedArchitectureError(f"{type(self).__name__} has no heads or neurons to prune.")

    def sublayers(self, model: nn.Module) -> list[Sublayer]:
        """The residual sublayers, in forward order, for least-squares reconstruction."""
        raise UnsupportedArchitectureError(f"{type(self).__name__} has no sublayers to reconstruct.")

    def unit_flops(self, model: nn.Module, group: UnitGroup, layer: nn.Module, seq_len: int) -> int:
        """Forward FLOPs of one unit of ``group`` in ``layer`` of ``model`` at ``seq_len`` tokens (one sequence)."""
        raise UnsupportedArchitectureError(f"{type(self).__name__} has no unit costs.")

    def sequence_length(self, model: nn.Module, requested: int) -> int:
        """Tokens per example at which unit FLOPs are counted: ``requested`` unless the family fixes it (ViT)."""
        return requested

    def example_inputs(self, model: nn.Module, batch_size: int = 1, seq_len: int = 128) -> dict[str, Any]:
        """Inputs of the given shape for FLOP counting and latency measurement."""
        raise TypeError(f"{type(self).__name__} does not build example inputs")

    def shrink_spec(self, model: nn.Module) -> dict[str, Any]:
        """What `hfprune.shrink.apply_plan_` needs, as JSON-able data (the remote-code export embeds it)."""
        raise UnsupportedArchitectureError(f"{type(self).__name__} has no heads or neurons to prune.")


@dataclass(frozen=True)
class EncoderAdapter(ArchAdapter):
    """A transformer encoder described as data: heads and FFN neurons of every layer of ``layers``.

    Args:
        model_types (`tuple[str, ...]`): ``config.model_type`` values.
        default_target_modules (`str`): Full-match regex of the linear layers unstructured pruning targets.
        layers_path (`str`): Name (or suffix of the name) of the ``nn.ModuleList`` of encoder layers.
        heads (`UnitGroup`): Where a head lives, relative to a layer (``unit_size`` is filled in per model; an
            attribute value of `UNIT_SIZE` means "the head size").
        neurons (`UnitGroup`): Where an FFN neuron lives.
        attention_stream (`str`): Module, relative to a layer, whose input follows the attention sublayer.
        ffn_stream (`str`, *optional*): Module, relative to a layer, whose input follows the FFN sublayer
            (post-norm models). ``None`` for pre-norm models: the next layer's ``next_layer_stream`` or, after the
            last layer, the model's ``final_stream``.
        next_layer_stream (`str`, *optional*): Pre-norm models: the first norm of a layer.
        final_stream (`str`, *optional*): Pre-norm models: the name suffix of the norm after the last layer.
        attention_products (`int`, defaults to 2): Sequence-by-sequence matrix products per head (scores and the
            weighted sum; disentangled attention adds one per relative term).
    """

    model_types: tuple[str, ...] = ()
    default_target_modules: str = ""
    layers_path: str = ""
    heads: UnitGroup | None = None
    neurons: UnitGroup | None = None
    attention_stream: str = ""
    ffn_stream: str | None = None
    next_layer_stream: str | None = None
    final_stream: str | None = None
    attention_products: int = 2
    unit_kinds: tuple[str, ...] = ("heads", "neurons")
    neurons_config_attribute: str = "intermediate_size"
    #: Position embeddings reserved before the first token (RoBERTa-style models count from padding_idx + 1).
    reserved_positions: int = 0

    def head_size(self, config: Any) -> int:
        """Size of one head, from the config (``head_dim`` or ``attention_head_size`` where the family sets it)."""
        for name in ("attention_head_size", "head_dim"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return config.hidden_size // config.num_attention_heads

    def layers(self, model: nn.Module) -> nn.ModuleList:
        try:
            return find_layers(model, self.layers_path)
        except ValueError as err:
            raise UnsupportedArchitectureError(str(err)) from None

    def attention_products_of(self, model: nn.Module) -> int:
        return self.attention_products

    def unit_groups(self, model: nn.Module) -> dict[str, UnitGroup]:
        head_size = self.head_size(model.config)  # type: ignore[attr-defined]
        groups = {}
        for group, size in ((self.heads, head_size), (self.neurons, 1)):
            assert group is not None
            attributes = tuple((m, a, size if v == UNIT_SIZE else v) for m, a, v in group.attributes)
            groups[group.kind] = dataclasses.replace(group, unit_size=size, attributes=attributes)
        return groups

    def shrink_spec(self, model: nn.Module) -> dict[str, Any]:
        return {"layers": self.layers_path, "groups": [g.to_dict() for g in self.unit_groups(model).values()]}

    def sublayers(self, model: nn.Module) -> list[Sublayer]:
        layers = self.layers(model)
        names = {id(module): name for name, module in model.named_modules()}
        final = None
        if self.ffn_stream is None:
            final = next((n for n, _ in model.named_modules() if n == self.final_stream
                          or n.endswith("." + str(self.final_stream))), None)  # fmt: skip
        groups = self.unit_groups(model)
        result = []
        for index, layer in enumerate(layers):
            prefix = names[id(layer)]
            result.append(Sublayer("heads", index, f"{prefix}.{groups['heads'].consumer}",
                                   f"{prefix}.{self.attention_stream}"))  # fmt: skip
            if self.ffn_stream is not None:
                stream = f"{prefix}.{self.ffn_stream}"
            elif index + 1 < len(layers):
                stream = f"{names[id(layers[index + 1])]}.{self.next_layer_stream}"
            else:
                if final is None:
                    raise UnsupportedArchitectureError(
                        f"No final norm {self.final_stream!r} in {type(model).__name__}."
                    )
                stream = final
            result.append(Sublayer("neurons", index, f"{prefix}.{groups['neurons'].consumer}", stream))
        return result

    def unit_flops(self, model: nn.Module, group: UnitGroup, layer: nn.Module, seq_len: int) -> int:
        """Two FLOPs per token for each weight a unit owns, plus, for heads, the attention products."""
        flops = 2 * seq_len * unit_weight_count(group, layer)
        products = self.attention_products_of(model) if group.kind == "heads" else 0
        return flops + 2 * products * seq_len * seq_len * group.unit_size

    def example_inputs(self, model: nn.Module, batch_size: int = 1, seq_len: int = 128) -> dict[str, Any]:
        return text_example_inputs(model, batch_size, seq_len)


def unit_weight_count(group: UnitGroup, layer: nn.Module) -> int:
    """Weights one unit of ``group`` owns in ``layer`` (every part of every slice)."""
    total = 0
    for piece in group.present_slices(layer):
        weight = layer.get_submodule(piece.module).weight
        total += piece.parts * group.unit_size * weight.shape[1 - piece.dim]
    return total


def unit_param_count(group: UnitGroup, layer: nn.Module) -> int:
    """Parameters one unit of ``group`` owns in ``layer``: its weights, and its bias entries of output rows."""
    total = unit_weight_count(group, layer)
    for piece in group.present_slices(layer):
        if piece.dim == 0 and layer.get_submodule(piece.module).bias is not None:
            total += piece.parts * group.unit_size
    return total


ADAPTERS: dict[str, ArchAdapter] = {}


def register_adapter(adapter: ArchAdapter) -> ArchAdapter:
    """Register ``adapter`` for each of its ``model_types``."""
    for model_type in adapter.model_types:
        ADAPTERS[model_type] = adapter
    return adapter


def structured_model_types() -> list[str]:
    """The model types whose heads and neurons hfprune can remove."""
    return sorted(name for name, adapter in ADAPTERS.items() if adapter.unit_kinds)


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


def get_encoder_adapter(model: nn.Module) -> ArchAdapter:
    """The adapter of a model whose heads and neurons hfprune can remove; a clear error otherwise."""
    adapter = get_adapter(model)
    assert adapter is not None
    if not adapter.unit_kinds:
        raise UnsupportedArchitectureError(
            f"Structured head/neuron pruning supports the model types {', '.join(structured_model_types())}; "
            f"{type(model).__name__} ({model_type_of(model)}) has no heads or neurons hfprune knows."
        )
    return adapter


def encoder_structure(model: nn.Module) -> tuple[ArchAdapter, nn.ModuleList, dict[str, UnitGroup]]:
    """The adapter, the repeated layers and the unit groups (by kind) of a model with heads and neurons."""
    adapter = get_encoder_adapter(model)
    return adapter, adapter.layers(model), adapter.unit_groups(model)


def max_text_length(model: nn.Module) -> int | None:
    """The longest token sequence ``model`` takes: ``max_position_embeddings`` less the positions its family
    reserves before the first token (RoBERTa-style models count from ``padding_idx + 1``); ``None`` when the config
    sets no limit."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(positions, int) or isinstance(positions, bool):
        return None
    adapter = get_adapter(model, required=False)
    return positions - int(getattr(adapter, "reserved_positions", 0))


def check_text_length(model: nn.Module, length: int, option: str) -> None:
    """Refuse sequences longer than ``model`` takes, before any work (they fail deep in the embeddings otherwise).

    ``option`` names what set the length (``"--max-seq-length"``, ``"max_length"``, ``"calibration batch 3"``).
    """
    limit = max_text_length(model)
    if limit is not None and length > limit:
        raise ConfigError(
            f"{option} asks for {length} tokens, but this {model_type_of(model) or type(model).__name__} model takes "
            f"at most {limit} (config.max_position_embeddings = {model.config.max_position_embeddings}). "  # type: ignore
            f"Use a maximum length of at most {limit}."
        )


def text_example_inputs(model: nn.Module, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """Random token ids within the model's vocabulary and a full attention mask.

    ``seq_len`` is capped at the positions the model has (small test models have few).
    """
    config = model.config  # type: ignore[attr-defined]
    limit = max_text_length(model)
    if limit is not None:
        seq_len = min(seq_len, limit)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator)
    device = next(model.parameters()).device
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=device),
    }


__all__ = ["ADAPTERS", "ArchAdapter", "EncoderAdapter", "ParamSlice", "Sublayer", "UNIT_SIZE", "UnitGroup"]
