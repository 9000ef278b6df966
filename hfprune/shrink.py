"""Shrink a model's layers to the units a plan keeps, from a declarative description of where each unit lives.

This is the one implementation of "remove these heads/neurons": `hfprune.compact_` calls it, and the remote-code
export copies this file verbatim into the saved folder, so a pruned model loads with plain transformers. It
therefore imports nothing but torch and the standard library, and knows no architecture: the adapters
(`hfprune.adapters`) describe each family as `UnitGroup` data, and a spec made of those groups travels as JSON.

A *unit* is one attention head or one FFN neuron. A group lists every parameter slice the unit owns: output rows
of the layers that produce it (query/key/value, a fused QKV, the two halves of a gated FFN input) and input
columns of the layer that consumes it (the attention output or FFN output projection).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ParamSlice:
    """Where one unit lives in one linear layer.

    Args:
        module (`str`): Path of the ``nn.Linear`` relative to the repeated layer (e.g. ``"attention.self.query"``).
        dim (`int`): 0 when the unit owns output rows (weight rows and bias entries), 1 when it owns input columns.
        parts (`int`, defaults to 1): The dimension holds this many equal blocks, each laid out unit by unit: a
            fused query/key/value projection has 3, a gated FFN input (value and gate halves) has 2. Unit ``u``'s
            elements are ``part * num_units * unit_size + u * unit_size + offset`` for every part.
        optional (`bool`, defaults to `False`): The layer may be absent (DeBERTa's separate position projections
            exist only for some configs).
    """

    module: str
    dim: int
    parts: int = 1
    optional: bool = False


@dataclass(frozen=True)
class UnitGroup:
    """One structure (``"heads"`` or ``"neurons"``) of one repeated layer, resolved for a model.

    Args:
        kind (`str`): The structure name the plan uses for these units.
        slices (`tuple[ParamSlice, ...]`): Every parameter slice a unit owns; removing the unit removes them all.
        consumer (`str`): The layer whose input columns carry the units' outputs (the attention output or FFN
            output projection). Masks during training, gradient scores and least-squares scales act there, and a
            unit with all-zero consumer columns has no effect on the output.
        unit_size (`int`): Elements per unit along each slice (the head size; 1 for neurons).
        attributes (`tuple`): ``(module, attribute, value per kept unit)`` to set after shrinking, e.g.
            ``("attention.self", "num_attention_heads", 1)`` and ``("attention.self", "all_head_size", 64)``.
        empty_module (`str`, *optional*): Module replaced by a `ZeroWidthAttention` when no unit is kept (its
            reshapes cannot handle zero heads).
        empty_output (`str`, *optional*): The projection inside ``empty_module`` that is kept (its bias is what the
            masked model adds), under its own name so state dict keys do not change.
    """

    kind: str
    slices: tuple[ParamSlice, ...]
    consumer: str
    unit_size: int = 1
    attributes: tuple[tuple[str, str, int], ...] = ()
    empty_module: str | None = None
    empty_output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["slices"] = [asdict(s) for s in self.slices]
        data["attributes"] = [list(a) for a in self.attributes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnitGroup:
        data = dict(data)
        data["slices"] = tuple(ParamSlice(**s) for s in data["slices"])
        data["attributes"] = tuple(tuple(a) for a in data.get("attributes", ()))
        return cls(**data)

    def num_units(self, layer: nn.Module) -> int:
        """Units the layer has now: the consumer's input width over the unit size."""
        return layer.get_submodule(self.consumer).weight.shape[1] // self.unit_size

    def present_slices(self, layer: nn.Module) -> list[ParamSlice]:
        """The slices whose layer exists in ``layer`` (optional ones may be absent)."""
        return [s for s in self.slices if not s.optional or _has_module(layer, s.module)]


def _has_module(layer: nn.Module, path: str) -> bool:
    try:
        layer.get_submodule(path)
    except AttributeError:
        return False
    return True


def unit_index(kept: list[int], num_units: int, unit_size: int, parts: int = 1) -> torch.Tensor:
    """Indices, along a slice's dimension, of the elements owned by the ``kept`` units (in order)."""
    offsets = torch.arange(unit_size)
    per_part = torch.cat([u * unit_size + offsets for u in kept]) if kept else torch.zeros(0, dtype=torch.long)
    return torch.cat([part * num_units * unit_size + per_part for part in range(parts)]).long()


def unit_mask(kept: list[int], num_units: int, unit_size: int, parts: int = 1) -> torch.Tensor:
    """Boolean mask along a slice's dimension: True for elements of kept units."""
    mask = torch.zeros(parts * num_units * unit_size, dtype=torch.bool)
    mask[unit_index(kept, num_units, unit_size, parts)] = True
    return mask


def slice_problem(layer: nn.Module, group: UnitGroup, num_units: int) -> str | None:
    """Why ``group``'s slices do not fit ``layer`` with ``num_units`` units, or ``None`` if they do."""
    for piece in group.present_slices(layer):
        linear = layer.get_submodule(piece.module)
        size = linear.weight.shape[piece.dim]
        expected = piece.parts * num_units * group.unit_size
        if size != expected:
            return (
                f"{piece.module}.weight has {size} elements along dim {piece.dim}, but {piece.parts} part(s) of "
                f"{num_units} {group.kind} of size {group.unit_size} need {expected}: the index map does not "
                "divide this layer evenly"
            )
    return None


def shrink_linear(linear: nn.Linear, dim: int, index: torch.Tensor) -> nn.Linear:
    """A copy of ``linear`` keeping only the output rows (``dim=0``) or input columns (``dim=1``) in ``index``.

    The copy keeps the dtype, device and ``requires_grad`` of the original (transformers' ``prune_linear_layer``
    builds float32 layers, which breaks half-precision models). It is built on the meta device and given the
    selected weights, so no random initialization runs (nor warns for a zero-width layer).
    """
    weight = linear.weight.detach()
    index = index.to(weight.device)
    kept_weight = weight.index_select(dim, index).clone()
    out_features, in_features = kept_weight.shape
    with warnings.catch_warnings():
        # A zero-width Linear (every unit removed) warns that initializing it is a no-op.
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        new = nn.Linear(in_features, out_features, bias=linear.bias is not None, device="meta")
    new.weight = nn.Parameter(kept_weight, requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        bias = linear.bias.detach()
        kept_bias = bias.index_select(0, index.to(bias.device)).clone() if dim == 0 else bias.clone()
        new.bias = nn.Parameter(kept_bias, requires_grad=linear.bias.requires_grad)
    new.train(linear.training)
    return new


class ZeroWidthAttention(nn.Module):
    """Stands in for an attention whose heads were all removed: a context of width 0.

    The output projection (now ``Linear(0, hidden)``) then adds only its bias, exactly what the masked model
    computes when every head's output columns are zero. Where that projection belongs to the replaced module
    (``output_name``), it is kept under its own name, so the state dict keys do not change, and applied here.
    Returns ``(output, None)``, the shape every supported attention module returns.
    """

    def __init__(self, output_name: str | None = None, output: nn.Module | None = None) -> None:
        super().__init__()
        self.output_name = output_name
        if output_name is not None:
            self.add_module(output_name, output)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        context = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self.output_name is not None:
            context = self.get_submodule(self.output_name)(context)
        return context, None


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_name, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def shrink_layer_(layer: nn.Module, group: UnitGroup, kept: list[int]) -> None:
    """Shrink every slice of ``group`` in ``layer`` to the ``kept`` units and fix the dependent attributes."""
    num_units = group.num_units(layer)
    if len(kept) == num_units:
        return
    problem = slice_problem(layer, group, num_units)
    if problem is not None:
        raise ValueError(problem)
    for piece in group.present_slices(layer):
        index = unit_index(kept, num_units, group.unit_size, piece.parts)
        _set_submodule(layer, piece.module, shrink_linear(layer.get_submodule(piece.module), piece.dim, index))
    if not kept and group.empty_module is not None:
        output = None
        if group.empty_output is not None:
            output = layer.get_submodule(f"{group.empty_module}.{group.empty_output}")
        _set_submodule(layer, group.empty_module, ZeroWidthAttention(group.empty_output, output))
        return
    for module, attribute, per_unit in group.attributes:
        setattr(layer.get_submodule(module), attribute, len(kept) * per_unit)


def find_layers(model: nn.Module, path: str) -> nn.ModuleList:
    """The model's repeated layers: the ``nn.ModuleList`` named ``path`` or ending in ``.path``."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (name == path or name.endswith("." + path)):
            return module
    raise ValueError(f"Could not find the repeated layers ({path!r}) in {type(model).__name__}.")


def apply_plan_(model: nn.Module, spec: dict[str, Any], plan: dict[str, Any]) -> None:
    """Shrink ``model`` to the units ``plan`` keeps (``plan[kind]``: kept indices per layer).

    ``spec`` is ``{"layers": path, "groups": [UnitGroup.to_dict(), ...]}``, as written by hfprune's adapters.
    """
    layers = find_layers(model, spec["layers"])
    groups = [UnitGroup.from_dict(g) for g in spec["groups"]]
    for index, layer in enumerate(layers):
        for group in groups:
            shrink_layer_(layer, group, list(plan[group.kind][index]))
