"""What a pruned model costs: parameters, nonzeros, per-layer sparsity, FLOPs and measured latency."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .adapters.base import get_adapter
from .masks import merged_state_dict
from .targets import PRUNABLE_TYPES, require_real_weights, resolve_targets


REPORT_VERSION = 1


@dataclass
class LayerReport:
    """Sparsity of one prunable weight."""

    name: str
    shape: list[int]
    params: int
    nonzeros: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0


@dataclass
class PruningReport:
    """Size and speed of a model. ``sparsity`` is measured over the prunable weights only.

    FLOPs are counted by `torch.utils.flop_counter` for dense kernels: unstructured zeros do not reduce them, only
    physically smaller layers do. Latency is the median wall time of a forward pass on this machine's CPU.
    """

    model_class: str
    total_params: int
    total_nonzeros: int
    prunable_params: int
    prunable_nonzeros: int
    layers: list[LayerReport] = field(default_factory=list)
    flops: int | None = None
    input_shape: list[int] | None = None
    latency_ms: float | None = None
    latency_runs: int = 0
    device: str = ""
    report_version: int = REPORT_VERSION

    @property
    def sparsity(self) -> float:
        return 1.0 - self.prunable_nonzeros / self.prunable_params if self.prunable_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sparsity"] = self.sparsity
        for layer, raw in zip(self.layers, data["layers"], strict=True):
            raw["sparsity"] = layer.sparsity
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningReport:
        data = dict(data)
        data.pop("sparsity", None)
        layers = [LayerReport(**{k: v for k, v in layer.items() if k != "sparsity"}) for layer in data.pop("layers")]
        return cls(layers=layers, **data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON (``report.json`` in a model folder)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningReport:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def summary_rows(self) -> list[tuple[str, str]]:
        rows = [
            ("parameters (total)", f"{self.total_params:,}"),
            ("nonzero parameters (total)", f"{self.total_nonzeros:,}"),
            ("prunable parameters", f"{self.prunable_params:,}"),
            ("prunable nonzeros", f"{self.prunable_nonzeros:,}"),
            ("sparsity of prunable weights", f"{self.sparsity:.2%}"),
        ]
        if self.flops is not None:
            rows.append((f"GFLOPs (dense, input {self.input_shape})", f"{self.flops / 1e9:.3f}"))
        if self.latency_ms is not None:
            rows.append((f"latency ms (median of {self.latency_runs}, {self.device})", f"{self.latency_ms:.2f}"))
        return rows

    def to_markdown(self, layers: bool = True) -> str:
        lines = [f"**{self.model_class}**", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {metric} | {value} |" for metric, value in self.summary_rows()]
        if layers and self.layers:
            lines += ["", "| layer | shape | params | nonzeros | sparsity |", "|---|---|---:|---:|---:|"]
            lines += [
                f"| {layer.name} | {'x'.join(map(str, layer.shape))} | {layer.params:,} | {layer.nonzeros:,} | "
                f"{layer.sparsity:.2%} |"
                for layer in self.layers
            ]
        return "\n".join(lines) + "\n"


def compare_reports(before: PruningReport, after: PruningReport) -> str:
    """A markdown before/after table of two reports (e.g. dense vs pruned)."""

    def ratio(a: float | None, b: float | None) -> str:
        return f"{b / a:.3f}x" if a and b is not None else "-"

    rows = [
        ("parameters (total)", f"{before.total_params:,}", f"{after.total_params:,}",
         ratio(before.total_params, after.total_params)),
        ("nonzero parameters", f"{before.total_nonzeros:,}", f"{after.total_nonzeros:,}",
         ratio(before.total_nonzeros, after.total_nonzeros)),
        ("prunable nonzeros", f"{before.prunable_nonzeros:,}", f"{after.prunable_nonzeros:,}",
         ratio(before.prunable_nonzeros, after.prunable_nonzeros)),
        ("sparsity of prunable weights", f"{before.sparsity:.2%}", f"{after.sparsity:.2%}", ""),
    ]  # fmt: skip
    if before.flops is not None and after.flops is not None:
        rows.append(("GFLOPs (dense)", f"{before.flops / 1e9:.3f}", f"{after.flops / 1e9:.3f}",
                     ratio(before.flops, after.flops)))  # fmt: skip
    if before.latency_ms is not None and after.latency_ms is not None:
        rows.append(("latency ms (median)", f"{before.latency_ms:.2f}", f"{after.latency_ms:.2f}",
                     ratio(before.latency_ms, after.latency_ms)))  # fmt: skip
    lines = ["| metric | before | after | after/before |", "|---|---:|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines) + "\n"


def _to_device(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {key: _to_device(value, device) for key, value in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_to_device(value, device) for value in inputs)
    return inputs


def _on_model_device(model: nn.Module, inputs: Any) -> Any:
    """``inputs`` on ``model``'s device: a model a Trainer moved to a GPU is measured there with inputs built on the
    CPU. Done once per model, outside any timed region."""
    parameter = next(model.parameters(), None)
    return inputs if parameter is None else _to_device(inputs, parameter.device)


def _call(model: nn.Module, inputs: Any) -> Any:
    """Run ``model`` on ``inputs``: keyword dict, positional tuple or one tensor."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _input_shape(inputs: Any) -> list[int] | None:
    if isinstance(inputs, torch.Tensor):
        return list(inputs.shape)
    if isinstance(inputs, Mapping):
        first = next(iter(inputs.values()), None)
    elif isinstance(inputs, (tuple, list)) and inputs:
        first = inputs[0]
    else:
        return None
    return list(first.shape) if isinstance(first, torch.Tensor) else None


def device_description() -> str:
    """Where latency was measured, e.g. ``cpu x2 threads (x86_64)``."""
    return f"cpu x{torch.get_num_threads()} threads ({platform.machine()})"


def count_flops(model: nn.Module, example_inputs: Any) -> int:
    """Forward FLOPs by `torch.utils.flop_counter`, with eager attention where the model can switch.

    The counter does not see the CPU scaled-dot-product-attention kernel, so sdpa models would under-count.
    """
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    switch = previous not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")  # type: ignore[operator]
    try:
        # Grad mode on: under no_grad, FlopCounterMode's module tracker fails on parametrized (masked) weights
        # (torch.autograd.graph.register_multi_grad_hook needs a grad_fn). Only the forward is run and counted.
        with torch.enable_grad(), FlopCounterMode(display=False) as counter:
            _call(model, _on_model_device(model, example_inputs))
    finally:
        if switch:
            model.set_attn_implementation(previous)  # type: ignore[operator]
    return int(counter.get_total_flops())


def paired_latency_ms(
    models: Sequence[nn.Module], example_inputs: Any, rounds: int = 10, warmup: int = 3
) -> list[float]:
    """Median forward latency of each model, measured in interleaved rounds so drift hits all models alike.

    Every model is warmed up with the full-size input first: glibc's allocator page-faults on multi-MB activations
    in a fresh process, which would otherwise penalize whichever model runs first.
    """
    timings: list[list[float]] = [[] for _ in models]
    inputs = [_on_model_device(model, example_inputs) for model in models]
    with torch.inference_mode():
        for model, model_inputs in zip(models, inputs, strict=True):
            model.eval()
            for _ in range(warmup):
                _call(model, model_inputs)
        for _ in range(rounds):
            for index, model in enumerate(models):
                _synchronize(inputs[index])
                start = time.perf_counter()
                _call(model, inputs[index])
                _synchronize(inputs[index])  # CUDA kernels run asynchronously: wait for them inside the timing
                timings[index].append((time.perf_counter() - start) * 1000.0)
    return [statistics.median(t) for t in timings]


def _synchronize(inputs: Any) -> None:
    tensor = inputs if isinstance(inputs, torch.Tensor) else next(
        (value for value in (inputs.values() if isinstance(inputs, Mapping) else inputs)
         if isinstance(value, torch.Tensor)), None)  # fmt: skip
    if tensor is not None and tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)


def _prunable_modules(
    model: nn.Module, target_modules: str | Sequence[str] | None, exclude_modules: str | Sequence[str] | None
) -> list[str]:
    if target_modules is None:
        adapter = get_adapter(model, required=False)
        if adapter is not None:
            target_modules = adapter.default_target_modules
        else:
            return [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES) and n]
    return list(resolve_targets(model, target_modules, exclude_modules))


@torch.no_grad()
def report(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    target_modules: str | Sequence[str] | None = None,
    exclude_modules: str | Sequence[str] | None = None,
    measure_latency: bool = True,
    latency_runs: int = 10,
) -> PruningReport:
    """Measure ``model``: parameters, nonzeros, per-layer sparsity, FLOPs and CPU latency.

    Args:
        model (`nn.Module`): The model (masked, permanently pruned or dense).
        example_inputs (*optional*): A dict of keyword inputs, a tensor or a tuple of positional inputs. ``None``
            builds a batch of 1 x 128 tokens for transformers text models; without inputs FLOPs and latency are
            skipped.
        target_modules (`str` or `list[str]`, *optional*): Which weights count as prunable (default: the
            architecture's defaults, or every Linear/Conv/Embedding for models without an adapter).
        exclude_modules (`str` or `list[str]`, *optional*): Weights not counted as prunable.
        measure_latency (`bool`, defaults to `True`): Time the forward pass.
        latency_runs (`int`, defaults to 10): Timed forward passes (after 3 warm-up passes).

    Returns:
        `PruningReport`
    """
    require_real_weights(model, "report")
    param_names = [
        name.replace(".parametrizations.weight.original", ".weight") for name, _ in model.named_parameters()
    ]
    state = merged_state_dict(model)
    total = sum(state[name].numel() for name in param_names)
    total_nonzeros = sum(int(torch.count_nonzero(state[name])) for name in param_names)
    layers = []
    for name in _prunable_modules(model, target_modules, exclude_modules):
        weight = state[f"{name}.weight"]
        layers.append(LayerReport(name, list(weight.shape), weight.numel(), int(torch.count_nonzero(weight))))
    result = PruningReport(
        model_class=type(model).__name__,
        total_params=total,
        total_nonzeros=total_nonzeros,
        prunable_params=sum(layer.params for layer in layers),
        prunable_nonzeros=sum(layer.nonzeros for layer in layers),
        layers=layers,
    )
    if example_inputs is None:
        adapter = get_adapter(model, required=False)
        if adapter is not None:
            example_inputs = adapter.example_inputs(model)
    if example_inputs is not None:
        was_training = model.training
        model.eval()
        try:
            result.flops = count_flops(model, example_inputs)
            result.input_shape = _input_shape(example_inputs)
            if measure_latency:
                result.latency_ms = paired_latency_ms([model], example_inputs, rounds=latency_runs)[0]
                result.latency_runs = latency_runs
                result.device = device_description()
        finally:
            model.train(was_training)
    return result
