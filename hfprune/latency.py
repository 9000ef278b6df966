"""Latency tables: how much time each prunable block saves at each kept width, measured on the user's device.

FLOPs are a poor guide to speed: a layer with 7 heads can cost what one with 8 costs, and matrix kernels run some
widths faster than narrower ones. Following Kwon et al. 2022 (and HALP, ZipLM), the planners spend a
``target_latency`` budget from measured numbers instead.

How a table is measured: for each kind of block (an encoder's attention heads or FFN neurons, or a class of CNN
channel groups with the same shape) and each width on a grid, a copy of the model with *every* block of that kind
cut to that width is timed against the dense model in interleaved rounds after a full-size warm-up, with a steady
allocator (`reporting.paired_latency_ms`, the protocol of the reports). The difference, divided by the number of
blocks, is what one block saves at that width. A plan's predicted latency is the dense latency minus the savings of
its blocks; widths between grid points are interpolated, and the planners choose grid widths only (where a
narrower width saves nothing measurable, the wider one is kept: the widths the hardware likes).

This module holds the table, its key, its cache and the timing loop; what a block is comes from the engines that
own the architecture: `budget.encoder_latency_table` (heads and neurons, through the family's adapter) and
`channels.channel_latency_table` (channel groups, through Torch-Pruning's dependency graph).

A table is valid for one model architecture, device, torch version, dtype and input shape (its `key`); tables are
cached as JSON under ``$HFPRUNE_CACHE/latency`` (default ``~/.cache/hfprune/latency``) by that key, and a table
given explicitly whose key differs is refused, never silently reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import math
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, HfPruneError
from .reporting import paired_latency_ms


TABLE_VERSION = 1
#: A narrower width must save at least this share of the dense latency to be worth choosing over a wider one:
#: below it the difference is within the measurement's noise.
FRIENDLY_TOLERANCE = 0.002


class LatencyTableMismatchError(HfPruneError, ValueError):
    """A latency table was measured for another model, device, torch version, dtype or input shape."""


@dataclass
class LatencyCurve:
    """What one block of a kind saves, in ms, at each measured width (``saved_ms[i]`` at ``widths[i]``).

    Args:
        widths (`list[int]`): Measured widths, ascending; the last is the full width (saving 0).
        saved_ms (`list[float]`): Time saved per block at each width, made non-increasing in the width (a
            narrower block never counts as slower than a wider one: the planner would keep the wider one).
        blocks (`list[str]`): The blocks of this kind (layer indices, or channel-group names).
        measured_ms (`list[float]`): The savings as measured, before they were made monotone.
    """

    widths: list[int]
    saved_ms: list[float]
    blocks: list[str]
    measured_ms: list[float] = field(default_factory=list)

    @property
    def full_width(self) -> int:
        return self.widths[-1]

    def saving(self, width: float) -> float:
        """Time one block saves at ``width`` (linear between measured widths)."""
        widths, saved = self.widths, self.saved_ms
        if width <= widths[0]:
            return saved[0]
        for index in range(1, len(widths)):
            if width <= widths[index]:
                low, high = widths[index - 1], widths[index]
                share = (width - low) / (high - low)
                return saved[index - 1] + share * (saved[index] - saved[index - 1])
        return 0.0

    def friendly_widths(self, tolerance_ms: float, multiple: int = 1) -> list[int]:
        """Grid widths worth choosing, ascending: each saves more than ``tolerance_ms`` over the next wider one
        kept (the width just below a step in latency). The full width is always one; with ``multiple`` > 1 only
        its multiples (and the full width) are."""
        kept = [self.full_width]
        last = 0.0
        for width, saved in sorted(zip(self.widths, self.saved_ms, strict=True), reverse=True)[1:]:
            if multiple > 1 and width % multiple:
                continue
            if saved > last + tolerance_ms:
                kept.append(width)
                last = saved
        return sorted(kept)

    def to_dict(self) -> dict[str, Any]:
        return {"widths": self.widths, "saved_ms": self.saved_ms, "measured_ms": self.measured_ms,
                "blocks": self.blocks}  # fmt: skip


@dataclass
class LatencyTable:
    """Measured latency of a model's prunable blocks at each width, for one device, torch, dtype and shape.

    Args:
        key (`dict`): What the table is valid for: ``model`` (an architecture fingerprint), ``device``, ``torch``,
            ``dtype``, ``shape``.
        dense_ms (`float`): The dense model's median latency at that shape.
        curves (`dict[str, LatencyCurve]`): One per kind of block: ``heads``/``neurons`` for encoders, one per
            class of same-shaped channel groups for CNNs.
        protocol (`dict`): How it was measured (rounds, warm-up, allocator, seconds taken).
    """

    key: dict[str, Any]
    dense_ms: float
    curves: dict[str, LatencyCurve]
    protocol: dict[str, Any] = field(default_factory=dict)
    version: int = TABLE_VERSION

    def predict_ms(self, widths: Mapping[str, Sequence[float] | Mapping[str, float]]) -> float:
        """Predicted latency when the blocks keep ``widths``: per curve, one width per block (a list in the
        curve's block order, or a ``{block: width}`` mapping; blocks left out keep their full width)."""
        total = self.dense_ms
        for name, kept in widths.items():
            curve = self.curve(name)
            values = kept.values() if isinstance(kept, Mapping) else kept
            total -= sum(curve.saving(width) for width in values)
        return total

    def curve(self, name: str) -> LatencyCurve:
        if name not in self.curves:
            raise ConfigError(f"The latency table has no curve {name!r}; it has {sorted(self.curves)}.")
        return self.curves[name]

    @property
    def tolerance_ms(self) -> float:
        return FRIENDLY_TOLERANCE * self.dense_ms

    def check_key(self, expected: Mapping[str, Any], source: str) -> None:
        """Refuse a table measured for something else, naming every field that differs."""
        differences = [f"{name}: table {self.key.get(name)!r}, needed {value!r}"
                       for name, value in expected.items() if self.key.get(name) != value]  # fmt: skip
        if self.version != TABLE_VERSION:
            differences.append(f"version: table {self.version}, needed {TABLE_VERSION}")
        if differences:
            raise LatencyTableMismatchError(
                f"The latency table {source} was measured for something else ({'; '.join(differences)}); its "
                "numbers would not hold here. Build one for this model, device and shape: `hfprune latency-table "
                "--model ... --batch-size ... --seq-len ...`, or leave latency_table unset to build and cache one "
                "automatically."
            )

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "key": self.key, "dense_ms": self.dense_ms, "protocol": self.protocol,
                "curves": {name: curve.to_dict() for name, curve in self.curves.items()}}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        try:
            curves = {name: LatencyCurve(widths=[int(w) for w in c["widths"]],
                                         saved_ms=[float(s) for s in c["saved_ms"]], blocks=list(c["blocks"]),
                                         measured_ms=[float(s) for s in c.get("measured_ms", [])])
                      for name, c in data["curves"].items()}  # fmt: skip
            return cls(key=dict(data["key"]), dense_ms=float(data["dense_ms"]), curves=curves,
                       protocol=dict(data.get("protocol", {})), version=int(data.get("version", 0)))  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(
                f"Not a latency table ({type(err).__name__}: {err}). Pass a JSON file written by `hfprune "
                "latency-table` or `LatencyTable.save`."
            ) from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON, atomically (a crash never leaves half a table)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"No latency table at {path}. Build one with `hfprune latency-table`.")
        try:
            data = json.loads(path.read_text())
        except ValueError as err:
            raise ConfigError(f"The latency table {path} is damaged ({err}); delete it and build it again.") from None
        return cls.from_dict(data)

    def to_markdown(self) -> str:
        lines = [f"Latency table: {self.key.get('model')} on {self.key.get('device')}, torch {self.key.get('torch')},"
                 f" {self.key.get('dtype')}, input {'x'.join(map(str, self.key.get('shape', [])))}",
                 "", f"dense: {self.dense_ms:.2f} ms (median)", ""]  # fmt: skip
        for name, curve in self.curves.items():
            friendly = set(curve.friendly_widths(self.tolerance_ms))
            lines += [
                f"**{name}** ({len(curve.blocks)} blocks; * = a width worth choosing)",
                "",
                "| width | saved per block (ms) | model latency if every block keeps it |",
                "|---:|---:|---:|",
            ]
            for width, saved in zip(curve.widths, curve.saved_ms, strict=True):
                mark = "*" if width in friendly else ""
                whole = self.dense_ms - saved * len(curve.blocks)
                lines.append(f"| {width}{mark} | {saved:.3f} | {whole:.2f} ms ({whole / self.dense_ms:.2f}) |")
            lines.append("")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- the key
def device_name(device: torch.device) -> str:
    """The processor the numbers hold for: CUDA device name, or the CPU model and torch's thread count."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"cpu: {cpu}, {torch.get_num_threads()} threads"


def model_fingerprint(model: nn.Module) -> str:
    """Architecture only (class, and name and shape of every weight): a fine-tuned copy shares the table."""
    shapes = [f"{name}:{tuple(p.shape)}" for name, p in model.named_parameters()]
    config = getattr(model, "config", None)
    attention = getattr(config, "_attn_implementation", None)
    digest = hashlib.sha1("\n".join([type(model).__name__, str(attention), *shapes]).encode()).hexdigest()[:12]
    return f"{type(model).__name__}-{digest}"


def table_key(model: nn.Module, shape: Sequence[int]) -> dict[str, Any]:
    parameter = next(model.parameters())
    return {"model": model_fingerprint(model), "device": device_name(parameter.device),
            "torch": torch.__version__.split("+")[0], "dtype": str(parameter.dtype).replace("torch.", ""),
            "shape": [int(s) for s in shape]}  # fmt: skip


def cache_dir() -> Path:
    return Path(os.environ.get("HFPRUNE_CACHE") or Path.home() / ".cache" / "hfprune") / "latency"


def cache_path(key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha1(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{key['model']}-{digest}.json"


# ------------------------------------------------------------------------------------------------- measurement
def steady_allocator() -> str:
    """Keep glibc from returning multi-MB activation buffers to the OS between forwards (it would page-fault them
    back, adding noise that depends on the width). Same effect as ``MALLOC_MMAP_THRESHOLD_=33554432
    MALLOC_TRIM_THRESHOLD_=2147483648``; returns how the allocator was set, for the table's protocol."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") and os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return "steady (environment)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "default (not glibc)"
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    libc.mallopt(m_trim_threshold, 2 * 1024 * 1024 * 1024 - 1)
    return "steady (mallopt)"


def measure_savings(
    dense: nn.Module,
    variants: Sequence[tuple[str, int, Callable[[], nn.Module], int]],
    example_inputs: Any,
    *,
    rounds: int = 7,
    warmup: int = 2,
    chunk: int = 6,
    min_seconds: float = 1.0,
) -> tuple[float, dict[tuple[str, int], float], int]:
    """Time ``dense`` against each variant ``(curve, width, build, num_blocks)`` in interleaved rounds, a chunk of
    variants at a time (each chunk with the dense model, so drift between chunks cancels); return the dense
    median, each variant's saving per block, and the rounds used.

    At least ``rounds`` rounds, more when the model is fast: each model is timed for about ``min_seconds`` per
    chunk (a 30 ms forward at batch 1 gets ~34 rounds), since one round's noise weighs more on a short forward.
    """
    dense_ms = paired_latency_ms([dense], example_inputs, rounds=3, warmup=warmup)[0]
    rounds = max(rounds, min(200, math.ceil(min_seconds * 1000.0 / max(dense_ms, 1e-3))))
    dense_times, saved = [], {}
    for start in range(0, len(variants), chunk):
        part = variants[start : start + chunk]
        models = [dense] + [build() for _, _, build, _ in part]
        times = paired_latency_ms(models, example_inputs, rounds=rounds, warmup=warmup)
        dense_times.append(times[0])
        for (curve, width, _, num_blocks), time_ms in zip(part, times[1:], strict=True):
            saved[(curve, width)] = (times[0] - time_ms) / num_blocks
        del models
    dense_times.sort()
    return dense_times[len(dense_times) // 2], saved, rounds


def measured_latency_fraction(
    dense: nn.Module, pruned: nn.Module, example_inputs: Any, min_seconds: float = 1.0
) -> float:
    """``pruned``'s median latency over ``dense``'s, in interleaved rounds (about ``min_seconds`` per model)."""
    dense_ms = paired_latency_ms([dense], example_inputs, rounds=3, warmup=2)[0]
    rounds = max(7, min(200, math.ceil(min_seconds * 1000.0 / max(dense_ms, 1e-3))))
    was_training = dense.training
    times = paired_latency_ms([dense, pruned], example_inputs, rounds=rounds, warmup=2)
    dense.train(was_training)
    return times[1] / times[0]


def aim_by_measuring(
    target: float, plan_for: Callable[[float], Any], measure: Callable[[Any], float], attempts: int = 3,
    tolerance: float = 0.03,
) -> Any:  # fmt: skip
    """Plan for ``target`` (``plan_for(aim)`` returns a plan with ``extra["predicted_latency_fraction"]``), time it
    (``measure(plan)``: measured fraction of the dense latency), and while it misses by more than ``tolerance``,
    rescale the aim by the miss and plan again, ``attempts`` plans at most. A table is a few percent off when the
    machine drifted while it was measured, more when many overlapping savings are added up (MobileNetV2). Returns
    the plan closest to the target, its ``extra`` holding its measured latency and every attempt.

    Raises:
        ConfigError: the target itself is out of the table's reach (a re-aimed one only ends the attempts).
    """
    aim, best, tried = target, None, []
    for _ in range(attempts):
        try:
            plan = plan_for(aim)
        except ConfigError:
            if best is None:
                raise
            break
        measured = measure(plan)
        tried.append({"aim": aim, "predicted": plan.extra["predicted_latency_fraction"], "measured": measured})
        if best is None or abs(measured - target) < abs(best[1] - target):
            best = (plan, measured)
        if abs(measured / target - 1.0) <= tolerance:
            break
        aim = min(1.0, aim * target / measured)
    plan, measured = best  # type: ignore[misc]
    plan.extra.update({"measured_latency_fraction": measured, "latency_attempts": tried})
    return plan


def curves_from_savings(
    saved: Mapping[tuple[str, int], float], full: Mapping[str, int], blocks: Mapping[str, list[str]]
) -> dict[str, LatencyCurve]:
    """One curve per kind from measured savings ``{(kind, width): ms per block}`` and each kind's full width (which
    saves 0), made monotone (a narrower block saves at least what a wider one does) by isotonic regression.

    Not by a running maximum: that keeps the luckiest of the noisy neighbours, and the optimism adds up over the
    curves of a plan (ResNet-50's 15 classes of channel groups predicted 0.45 of the dense latency for a plan
    that measured 0.60; the least-squares fit predicts 0.59).
    """
    curves = {}
    for name, width in full.items():
        measured = sorted((w, s) for (c, w), s in saved.items() if c == name)
        fitted = _nonincreasing_fit([value for _, value in measured] + [0.0])
        curves[name] = LatencyCurve(widths=[w for w, _ in measured] + [width], saved_ms=fitted,
                                    blocks=blocks[name], measured_ms=[s for _, s in measured] + [0.0])  # fmt: skip
    return curves


def _nonincreasing_fit(values: list[float]) -> list[float]:
    """The least-squares non-increasing sequence closest to ``values`` (pool adjacent violators), its last value
    held at the last of ``values`` (the full width saves exactly nothing)."""
    pools: list[list[float]] = []  # [mean, weight, count]
    for index, value in enumerate(values):
        weight = 1e9 if index == len(values) - 1 else 1.0
        pools.append([value, weight, 1])
        while len(pools) > 1 and pools[-2][0] < pools[-1][0]:
            mean2, weight2, count2 = pools.pop()
            mean1, weight1, count1 = pools.pop()
            total = weight1 + weight2
            pools.append([(mean1 * weight1 + mean2 * weight2) / total, total, count1 + count2])
    fitted = []
    for mean, _, count in pools:
        fitted += [mean] * count
    fitted[-1] = values[-1]
    for index in range(len(fitted) - 2, -1, -1):  # exactly monotone despite the anchor's rounding
        fitted[index] = max(fitted[index], fitted[index + 1])
    return fitted


def width_grid(width: int, step: int) -> list[int]:
    """0, step, 2 step, ... below ``width`` (the full width is the reference, not measured)."""
    return list(range(0, width, max(1, step)))


def default_neuron_step(intermediate_size: int) -> int:
    """About 32 measured widths, each a multiple of 8 (matrix kernels favour such widths)."""
    return max(8, int(math.ceil(intermediate_size / 32 / 8)) * 8)


# ------------------------------------------------------------------------------------------------- the cache
def cached_table(key: Mapping[str, Any], build: Callable[[], LatencyTable], path: str | os.PathLike | None = None,
                 rebuild: bool = False) -> LatencyTable:  # fmt: skip
    """The table for ``key``: from ``path`` (checked against the key), else from the cache, else built by
    ``build`` and cached. A cached file that is damaged or does not match is rebuilt."""
    if path is not None:
        table = LatencyTable.load(path)
        table.check_key(key, str(path))
        return table
    cached = cache_path(key)
    if cached.is_file() and not rebuild:
        try:
            table = LatencyTable.load(cached)
            table.check_key(key, str(cached))
            return table
        except (ConfigError, LatencyTableMismatchError):
            pass  # damaged or stale: measure again
    table = build()
    table.save(cached)
    return table
