"""Physically remove pruned heads and neurons, and record what was kept as a JSON `PruningPlan`.

transformers 5 removed ``prune_heads``/``config.pruned_heads``, so a model with shrunk layers no longer reloads
with ``from_pretrained``. hfprune keeps the structure in ``pruning_plan.json``; reloading builds the base
architecture from ``config.json``, applies the plan (`compact_`) and then loads the weights (`load_pruned`).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from .adapters.base import get_adapter
from .adapters.bert import BertFamilyAdapter, EncoderLayout
from .errors import ConfigError, HfPruneError, UnsupportedArchitectureError
from .masks import remove_mask_


PLAN_NAME = "pruning_plan.json"
PLAN_VERSION = 1


class PlanMismatchError(HfPruneError, ValueError):
    """A `PruningPlan` does not fit the model it is applied to."""


@dataclass
class PruningPlan:
    """Kept attention heads and FFN neurons of every encoder layer, as indices into the original model.

    Args:
        model_type (`str`): ``config.model_type`` of the model the plan was made for.
        num_heads (`int`): Heads per layer in the original model.
        intermediate_size (`int`): FFN neurons per layer in the original model.
        heads (`list[list[int]]`): Kept head indices, one sorted list per layer (empty = attention skipped).
        neurons (`list[list[int]]`): Kept neuron indices, one sorted list per layer (empty = FFN skipped).
    """

    model_type: str
    num_heads: int
    intermediate_size: int
    heads: list[list[int]]
    neurons: list[list[int]]
    plan_version: int = PLAN_VERSION
    hfprune_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.heads) != len(self.neurons):
            raise PlanMismatchError(f"Plan has {len(self.heads)} head lists but {len(self.neurons)} neuron lists.")
        self.heads = [sorted(int(h) for h in layer) for layer in self.heads]
        self.neurons = [sorted(int(n) for n in layer) for layer in self.neurons]
        for name, lists, limit in (
            ("head", self.heads, self.num_heads),
            ("neuron", self.neurons, self.intermediate_size),
        ):
            for layer, kept in enumerate(lists):
                if len(set(kept)) != len(kept) or any(not 0 <= i < limit for i in kept):
                    raise PlanMismatchError(
                        f"Layer {layer}: {name} indices {kept[:8]}... must be distinct and in [0, {limit})."
                    )
        if self.hfprune_version is None:
            from . import __version__

            self.hfprune_version = __version__

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    @classmethod
    def dense(cls, model: nn.Module) -> PruningPlan:
        """The plan that keeps everything in ``model``."""
        _, layout, layers = _encoder(model)
        num_heads = getattr(_get(layers[0], layout.self_attention), layout.num_heads_attribute)
        intermediate = _get(layers[0], layout.ffn_in).out_features
        return cls(
            model_type=model.config.model_type,  # type: ignore[attr-defined]
            num_heads=num_heads,
            intermediate_size=intermediate,
            heads=[list(range(num_heads)) for _ in layers],
            neurons=[list(range(intermediate)) for _ in layers],
        )

    @classmethod
    @torch.no_grad()
    def from_zeros(cls, model: nn.Module) -> PruningPlan:
        """Read the plan off a full-size model whose removed heads/neurons are zeroed (masked or merged).

        A head is removed when its columns of the attention output projection are all zero; a neuron when its
        column of the FFN output layer is. Those columns are the only path from the unit to the output, so this
        is exactly what compaction may drop without changing outputs.
        """
        plan = cls.dense(model)
        _, layout, layers = _encoder(model)
        head_size = _get(layers[0], layout.self_attention).attention_head_size
        for index, layer in enumerate(layers):
            out_cols = _get(layer, layout.attention_output).weight.detach().ne(0).any(0)
            plan.heads[index] = [
                h for h in range(plan.num_heads) if out_cols[h * head_size : (h + 1) * head_size].any()
            ]
            ffn_cols = _get(layer, layout.ffn_out).weight.detach().ne(0).any(0)
            plan.neurons[index] = [n for n in range(plan.intermediate_size) if ffn_cols[n]]
        return plan

    def config_entry(self) -> dict[str, Any]:
        """What ``config.hfprune_plan`` holds: enough to rebuild the shapes (no versions, no extras)."""
        return {"num_heads": self.num_heads, "intermediate_size": self.intermediate_size, "heads": self.heads,
                "neurons": self.neurons}  # fmt: skip

    @classmethod
    def from_config(cls, config: Any) -> PruningPlan | None:
        """The plan stored in a model config by `compact_` (``config.hfprune_plan``), if any."""
        entry = getattr(config, "hfprune_plan", None)
        return None if entry is None else cls(model_type=config.model_type, **entry)

    def remaining_fraction(self) -> dict[str, float]:
        """Fraction of heads and of neurons kept over all layers."""
        return {
            "heads": sum(map(len, self.heads)) / (self.num_heads * self.num_layers),
            "neurons": sum(map(len, self.neurons)) / (self.intermediate_size * self.num_layers),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        version = data.get("plan_version", PLAN_VERSION)
        if version > PLAN_VERSION:
            raise PlanMismatchError(f"Plan version {version} is newer than this hfprune understands ({PLAN_VERSION}).")
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / PLAN_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> PruningPlan:
        path = Path(directory) / PLAN_NAME
        if not path.is_file():
            raise PlanMismatchError(f"No {PLAN_NAME} in {directory}: it is not a structurally pruned hfprune model.")
        return cls.from_dict(json.loads(path.read_text()))


def _get(module: nn.Module, path: str) -> nn.Module:
    return module.get_submodule(path)


def _encoder(model: nn.Module) -> tuple[BertFamilyAdapter, EncoderLayout, nn.ModuleList]:
    """The adapter, its layout and the model's encoder layers."""
    adapter = get_adapter(model)
    if not isinstance(adapter, BertFamilyAdapter):
        raise UnsupportedArchitectureError(
            f"Structured head/neuron pruning supports BERT-family encoders; {type(model).__name__} has none."
        )
    layout = adapter.layout
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (name == layout.layers or name.endswith("." + layout.layers)):
            return adapter, layout, module
    raise UnsupportedArchitectureError(
        f"Could not find the encoder layers ({layout.layers!r}) in {type(model).__name__}."
    )


class SkippedSelfAttention(nn.Module):
    """Stands in for a self-attention whose heads were all removed: a context of width 0.

    The attention output projection (now ``Linear(0, hidden)``) then adds only its bias, exactly what the masked
    model computes when every head's output columns are zero. Where that projection belongs to the attention
    module itself (DistilBERT's ``out_lin``), pass it as ``output_name``/``output``: it is kept under the same
    name, so the state dict keys do not change, and applied here.
    """

    def __init__(self, head_size: int, output_name: str | None = None, output: nn.Module | None = None) -> None:
        super().__init__()
        self.attention_head_size = head_size
        self.num_attention_heads = 0
        self.n_heads = 0
        self.all_head_size = 0
        self.output_name = output_name
        if output_name is not None:
            self.add_module(output_name, output)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        context = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self.output_name is not None:
            context = self.get_submodule(self.output_name)(context)
        return context, None


def _unmask_(module: nn.Module) -> None:
    for param_name in ("weight", "bias"):
        remove_mask_(module, param_name, merge=True)


def current_plan_shape(model: nn.Module) -> tuple[list[int], list[int]]:
    """Heads and neurons each layer of ``model`` has now."""
    _, layout, layers = _encoder(model)
    heads, neurons = [], []
    for layer in layers:
        attention = _get(layer, layout.self_attention)
        heads.append(getattr(attention, layout.num_heads_attribute))
        neurons.append(_get(layer, layout.ffn_in).out_features)
    return heads, neurons


@torch.no_grad()
def compact_(model: nn.Module, plan: PruningPlan | None = None) -> PruningPlan:
    """Shrink ``model`` in place to the heads and neurons ``plan`` keeps, fixing every dependent attribute.

    Masks attached to the affected layers are merged first, so a masked model and its compacted copy compute the
    same outputs. Without ``plan``, the plan is read off the zeroed units (`PruningPlan.from_zeros`), e.g. after
    ``prune_`` with a structured config.

    Returns:
        `PruningPlan`: the plan applied; save it with the weights (``save_pruned(..., plan=plan)``).

    Raises:
        PlanMismatchError: the plan was made for another architecture or size, or the model is already compacted.
    """
    adapter, layout, layers = _encoder(model)
    if plan is None:
        plan = PruningPlan.from_zeros(model)
    model_type = model.config.model_type  # type: ignore[attr-defined]
    if plan.model_type != model_type or plan.num_layers != len(layers):
        raise PlanMismatchError(
            f"The plan is for a {plan.model_type} with {plan.num_layers} layers; this model is a {model_type} with "
            f"{len(layers)} layers."
        )
    if getattr(model.config, "hfprune_plan", None) is not None:  # type: ignore[union-attr]
        raise PlanMismatchError(
            "This model is already compacted (config.hfprune_plan is set). Apply a plan only to the unpruned base "
            "model; to reload a compacted folder use hfprune.load_pruned."
        )
    heads_now, neurons_now = current_plan_shape(model)
    if set(heads_now) != {plan.num_heads} or set(neurons_now) != {plan.intermediate_size}:
        raise PlanMismatchError(
            f"The plan expects {plan.num_heads} heads and {plan.intermediate_size} neurons in every layer; the model "
            f"has heads {heads_now} and neurons {neurons_now}. Apply a plan only to the unpruned base model."
        )
    for index, layer in enumerate(layers):
        attention = _get(layer, layout.self_attention)
        head_size = attention.attention_head_size
        kept_heads = plan.heads[index]
        if len(kept_heads) < plan.num_heads:
            rows = torch.tensor([h * head_size + d for h in kept_heads for d in range(head_size)], dtype=torch.long)
            for name in (layout.query, layout.key, layout.value):
                _replace(layer, name, dim=0, index=rows)
            _replace(layer, layout.attention_output, dim=1, index=rows)
            if not kept_heads:
                parent_name, _, child = layout.self_attention.rpartition(".")
                prefix = layout.self_attention + "."
                if layout.attention_output.startswith(prefix):
                    # The output projection lives inside the attention module (DistilBERT): keep it, under its name.
                    inner = layout.attention_output[len(prefix) :]
                    skipped: nn.Module = SkippedSelfAttention(head_size, inner, _get(attention, inner))
                else:
                    skipped = SkippedSelfAttention(head_size)
                setattr(_get(layer, parent_name) if parent_name else layer, child, skipped)
            else:
                setattr(attention, layout.num_heads_attribute, len(kept_heads))
                if layout.all_head_size_attribute is not None:
                    setattr(attention, layout.all_head_size_attribute, len(kept_heads) * head_size)
        kept_neurons = plan.neurons[index]
        if len(kept_neurons) < plan.intermediate_size:
            rows = torch.tensor(kept_neurons, dtype=torch.long)
            _replace(layer, layout.ffn_in, dim=0, index=rows)
            _replace(layer, layout.ffn_out, dim=1, index=rows)
    # The plan travels in config.json, so transformers' own save_pretrained/push_to_hub keep what load_pruned needs
    # (and the remote-code export reads the same key).
    model.config.hfprune_plan = plan.config_entry()  # type: ignore[union-attr]
    return plan


def _replace(layer: nn.Module, name: str, dim: int, index: torch.Tensor) -> None:
    linear = _get(layer, name)
    _unmask_(linear)
    parent_name, _, child = name.rpartition(".")
    parent = _get(layer, parent_name) if parent_name else layer
    with warnings.catch_warnings():
        # Removing every unit builds a zero-width Linear, whose (no-op) initialization warns.
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        new = prune_linear_layer(linear, index.to(linear.weight.device), dim=dim)
    new.train(linear.training)
    setattr(parent, child, new)


def _local_folder(name_or_path: str | os.PathLike) -> Path:
    """A local folder, or the snapshot of a Hub repository id (downloaded once, then cached)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path)))
    except Exception as err:  # offline, unknown repo, no access: all mean "nothing to load from"
        raise HfPruneError(
            f"{str(name_or_path)!r} is neither a local folder nor a downloadable Hub repository "
            f"({type(err).__name__}: {err})."
        ) from err


def load_pruned(directory: str | os.PathLike, **model_kwargs: Any) -> nn.Module:
    """Load a structurally pruned model: base architecture -> plan -> weights. No pickles.

    ``directory`` is a folder or a Hub repository id. The plan comes from ``pruning_plan.json`` (written by
    hfprune), or from ``config.hfprune_plan`` (written by `compact_`, so a compacted model saved or pushed with
    transformers' own ``save_pretrained``/``push_to_hub`` loads too). Folders without a plan (unstructured pruning)
    load with plain ``from_pretrained``.
    """
    import transformers

    directory = _local_folder(directory)
    config = transformers.AutoConfig.from_pretrained(directory)
    if (directory / PLAN_NAME).is_file():
        plan = PruningPlan.from_pretrained(directory)
    else:
        plan = PruningPlan.from_config(config)  # saved by transformers' save_pretrained/push_to_hub
    if plan is None:
        from .hub import load_model

        return load_model(directory, **model_kwargs)
    architectures = getattr(config, "architectures", None) or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    if model_class is None:
        raise ConfigError(f"{directory}/config.json names no known architecture ({architectures}).")
    for key, value in model_kwargs.items():
        setattr(config, key, value)
    config.__dict__.pop("hfprune_plan", None)  # the base architecture is built full size, then compacted
    model = model_class(config)
    compact_(model, plan)
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise HfPruneError(f"{weights} is missing.")
    state = load_file(weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Non-persistent buffers (position ids) are rebuilt by the model itself.
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise PlanMismatchError(
            f"Weights in {weights} do not fit the planned model: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    return model.eval()
