"""Figures: accuracy against cost for benchmark results (ShrinkBench-style), and what each layer kept.

matplotlib is an optional extra (``pip install "hfprune[plot]"``); it is imported only when a figure is drawn, and
figures are rendered with the Agg canvas directly, so nothing here touches pyplot's global state or the user's
interactive backend.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError


#: Display names of the variant/method keys used in ``benchmarks/results/*.json``; other keys are shown with
#: underscores replaced by spaces.
METHOD_LABELS = {
    "dense": "dense",
    "retraining_free": "retraining-free",
    "retraining_free_kd": "retraining-free + KD",
    "retraining_free_uniform": "retraining-free, uniform layers",
    "retraining_free_uniform_kd": "retraining-free, uniform + KD",
    "group_movement": "group movement + KD",
    "group_magnitude": "group magnitude + KD",
    "torch_pruning": "Torch-Pruning",
    "uniform_l1": "uniform L1",
    "eagleeye": "EagleEye",
    "magnitude": "magnitude",
    "movement": "movement",
    "soft_movement": "soft movement",
}

TRADEOFF_AXES = ("flops", "latency", "weights")

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
_LABEL_FONTSIZE = 8


@dataclass
class OperatingPoint:
    """One model (a pruning method at one budget, or the dense reference) of one benchmark.

    Args:
        benchmark (`str`): Name of the benchmark, the stem of its result file (e.g. ``"cnn_channel_pruning"``).
        method (`str`): Display label of the method or variant, e.g. ``"retraining-free + KD"``.
        key (`str`): The method's key in the result file, e.g. ``"retraining_free_kd"``.
        accuracy (`float`): Accuracy in percent (0-100).
        metric (`str`): What ``accuracy`` measures, e.g. ``"SST-2 dev accuracy"``.
        flops_fraction (`float`, *optional*): Forward FLOPs as a fraction of the dense model's (1.0 for dense);
            ``None`` where the benchmark did not measure it, or where pruning leaves dense FLOPs unchanged
            (unstructured zeros).
        latency_ratios (`dict[int, float]`): Batch size -> measured latency as a fraction of the dense model's
            (pruned / dense, so 0.6 is a 1.67x speedup). Empty where latency was not measured.
        weights_fraction (`float`, *optional*): Fraction of prunable weights that are still nonzero, where the
            benchmark reports it (unstructured fine-pruning).
        dense (`bool`): Whether this is the unpruned reference model.
        source (`Path`, *optional*): The result file the point was read from.
        accuracy_range (`tuple[float, float]`, *optional*): Lowest and highest accuracy over the seeds that
            ``accuracy`` (their mean) averages, where there was more than one.
        seeds (`int`): How many runs ``accuracy`` averages.
    """

    benchmark: str
    method: str
    key: str
    accuracy: float
    metric: str
    flops_fraction: float | None = None
    latency_ratios: dict[int, float] = field(default_factory=dict)
    weights_fraction: float | None = None
    dense: bool = False
    source: Path | None = None
    accuracy_range: tuple[float, float] | None = None
    seeds: int = 1

    def latency_ratio(self, batch_size: int | None = None) -> float | None:
        """Latency vs dense at ``batch_size`` (default: the largest batch measured), ``None`` if not measured."""
        if not self.latency_ratios:
            return None
        if batch_size is None:
            batch_size = max(self.latency_ratios)
        return self.latency_ratios.get(batch_size)


# --------------------------------------------------------------------------------------------------------------
# Reading benchmark results
# --------------------------------------------------------------------------------------------------------------

_EXPECTED_FORMATS = (
    "a `variants` mapping whose entries have `dev_accuracy` (structured_retraining_free*.json) or "
    "`top1_finetuned` / `eval.top1` (cnn_channel_pruning.json), a `methods` mapping whose entries have "
    "`dev_accuracy` plus `dense_teacher_dev_accuracy` (glue_fine_pruning.json), or a `points` list of "
    "{task, method, remaining, seed, dev_accuracy} plus `dense` (fine_pruning_sweep.json)"
)


def load_operating_points(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[OperatingPoint]:
    """Read benchmark result files (``benchmarks/results/*.json``) into operating points.

    The format is recognised from the content, not the file name, so renamed copies load too:

    - ``structured_retraining_free*.json``: ``variants.<name>.dev_accuracy`` / ``flops_ratio``, latency from
      ``latency.batch<N>.paired_speedup_vs_dense``.
    - ``cnn_channel_pruning.json``: ``variants.<name>.top1_finetuned`` (accuracy after the benchmark's fine-tune),
      same FLOPs and latency keys. Its ``imagenet_models`` section has no accuracy (random weights) and is skipped.
    - ``glue_fine_pruning.json``: ``methods.<name>.dev_accuracy``, ``encoder_remaining`` as ``weights_fraction``
      and ``dense_teacher_dev_accuracy`` as the dense point. Unstructured zeros leave dense FLOPs and latency
      unchanged, so these points have neither.
    - ``fine_pruning_sweep.json``: ``points``, one per run; runs of the same task, method and ``remaining`` that
      differ only in seed become one point (the mean, with the range over seeds), one benchmark per task, with
      ``dense.<task>.dev_accuracy`` as its dense point.

    Accuracies stored as fractions (0-1) are converted to percent.

    Args:
        paths (`str`, `os.PathLike` or an iterable of them): Result files, or folders whose ``*.json`` files are
            read. In a folder, results without accuracy points (memory, step-time benchmarks) are skipped; a file
            named on its own must have one of the formats above.

    Returns:
        `list[OperatingPoint]`: Per file, the dense point first, then every method in file order.

    Raises:
        `ConfigError`: A file is missing, is not JSON, or has none of the known formats (the message names the
            file and the keys that were expected).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    in_folders: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            files += found
            in_folders.update(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"Benchmark result {path} does not exist.")
    if not files:
        raise ConfigError("No benchmark result files given (or the folders hold no *.json).")
    points: list[OperatingPoint] = []
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path} is not a JSON benchmark result: {err}") from err
        if path in in_folders and not _has_accuracy_format(data):
            continue
        points += _parse_result(path, data)
    return points


def _has_accuracy_format(data: Any) -> bool:
    """Whether ``data`` is one of the accuracy-vs-cost formats `_parse_result` reads."""
    if not isinstance(data, Mapping):
        return False
    variants, methods = data.get("variants"), data.get("methods")
    return (_entries_have(variants, "dev_accuracy") or _entries_have(variants, "top1_finetuned")
            or _entries_have(variants, "eval") or _entries_have(methods, "dev_accuracy")
            or _is_sweep(data))  # fmt: skip


def _is_sweep(data: Mapping[str, Any]) -> bool:
    points = data.get("points")
    return isinstance(points, list) and bool(points) and all(
        isinstance(p, Mapping) and {"method", "remaining", "dev_accuracy"} <= set(p) for p in points
    )


def _parse_result(path: Path, data: Any) -> list[OperatingPoint]:
    if isinstance(data, Mapping):
        variants = data.get("variants")
        methods = data.get("methods")
        if _entries_have(variants, "dev_accuracy"):
            return _parse_variants(path, data, _accuracy_key(data, "dev accuracy"), _dev_accuracy)
        if _entries_have(variants, "top1_finetuned") or _entries_have(variants, "eval"):
            return _parse_variants(path, data, _accuracy_key(data, "top-1 accuracy"), _finetuned_top1)
        if _entries_have(methods, "dev_accuracy") and "dense_teacher_dev_accuracy" in data:
            return _parse_fine_pruning(path, data)
        if _is_sweep(data):
            return _parse_sweep(path, data)
    keys = sorted(data)[:12] if isinstance(data, Mapping) else type(data).__name__
    raise ConfigError(
        f"{path}: unknown benchmark result format (top-level keys: {keys}). Expected {_EXPECTED_FORMATS}."
    )


def _entries_have(section: Any, key: str) -> bool:
    return isinstance(section, Mapping) and any(isinstance(v, Mapping) and key in v for v in section.values())


def _accuracy_key(data: Mapping[str, Any], default: str) -> str:
    """The metric with its dataset when the file's ``data`` note names one: the dataset belongs on the y axis.

    ``"GLUE SST-2 from ../shared/data/glue: ..."`` -> ``"SST-2 dev accuracy"``; ``".../cifar10/..."`` ->
    ``"CIFAR-10 top-1 accuracy"``.
    """
    note = str(data.get("data", ""))
    glue = re.search(r"GLUE ([\w-]+)", note)
    cifar = re.search(r"cifar-?(10|100)\b", note, flags=re.IGNORECASE)
    dataset = glue.group(1) if glue else f"CIFAR-{cifar.group(1)}" if cifar else None
    return f"{dataset} {default}" if dataset else default


def _percent(value: Any, path: Path, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 100:
        raise ConfigError(f"{path}: {where} is {value!r}, expected an accuracy (a fraction or a percentage).")
    # The benchmarks store fractions; a value above 1 can only already be a percentage.
    return 100.0 * value if value <= 1.0 else float(value)


def _dev_accuracy(entry: Mapping[str, Any]) -> Any:
    return entry.get("dev_accuracy")


def _finetuned_top1(entry: Mapping[str, Any]) -> Any:
    if "top1_finetuned" in entry:
        return entry["top1_finetuned"]
    return (entry.get("eval_finetuned") or entry.get("eval") or {}).get("top1")


def _latency_ratios(data: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """Variant -> {batch size: pruned / dense latency}, from the file's ``latency.batch<N>`` sections."""
    ratios: dict[str, dict[int, float]] = {}
    sections = data.get("latency")
    if not isinstance(sections, Mapping):
        return ratios
    for name, section in sections.items():
        if not isinstance(section, Mapping):
            continue
        batch = section.get("batch_size")
        if batch is None:
            match = re.fullmatch(r"batch(\d+)", str(name))
            batch = int(match.group(1)) if match else None
        if batch is None:
            continue
        # Prefer the paired speedup (median over interleaved rounds of dense/pruned): machine drift cancels in it,
        # unlike a ratio of two separately taken medians.
        speedups = section.get("paired_speedup_vs_dense") or {}
        medians = section.get("median_ms") or {}
        for variant, speedup in speedups.items():
            if speedup:
                ratios.setdefault(variant, {})[int(batch)] = 1.0 / speedup
        dense_ms = medians.get("dense")
        for variant, ms in medians.items():
            if variant == "dense":
                ratios.setdefault(variant, {})[int(batch)] = 1.0
            elif dense_ms and ms and int(batch) not in ratios.get(variant, {}):
                ratios.setdefault(variant, {})[int(batch)] = ms / dense_ms
    return ratios


def _parse_variants(
    path: Path, data: Mapping[str, Any], metric: str, accuracy_of: Callable[[Mapping[str, Any]], Any]
) -> list[OperatingPoint]:
    latency = _latency_ratios(data)
    points = []
    for key, entry in data["variants"].items():
        if not isinstance(entry, Mapping):
            continue
        value = accuracy_of(entry)
        if value is None:  # e.g. a variant that only timed the model
            continue
        flops = entry.get("flops_ratio")
        points.append(
            OperatingPoint(
                benchmark=path.stem,
                method=METHOD_LABELS.get(key, key.replace("_", " ")),
                key=key,
                accuracy=_percent(value, path, f"variants.{key} accuracy"),
                metric=metric,
                flops_fraction=float(flops) if flops is not None else (1.0 if key == "dense" else None),
                latency_ratios=dict(latency.get(key, {})),
                dense=key == "dense",
                source=path,
            )
        )
    points.sort(key=lambda point: not point.dense)
    if not any(point.dense for point in points):
        raise ConfigError(f"{path}: `variants` has no `dense` entry, so there is no reference to compare against.")
    return points


def _parse_fine_pruning(path: Path, data: Mapping[str, Any]) -> list[OperatingPoint]:
    metric = _accuracy_key(data, "dev accuracy")
    dense = OperatingPoint(
        benchmark=path.stem,
        method="dense",
        key="dense",
        accuracy=_percent(data["dense_teacher_dev_accuracy"], path, "dense_teacher_dev_accuracy"),
        metric=metric,
        flops_fraction=1.0,
        weights_fraction=1.0,
        dense=True,
        source=path,
    )
    points = [dense]
    for key, entry in data["methods"].items():
        if not isinstance(entry, Mapping) or entry.get("dev_accuracy") is None:
            continue
        remaining = entry.get("encoder_remaining")
        points.append(
            OperatingPoint(
                benchmark=path.stem,
                method=METHOD_LABELS.get(key, key.replace("_", " ")),
                key=key,
                accuracy=_percent(entry["dev_accuracy"], path, f"methods.{key}.dev_accuracy"),
                metric=metric,
                weights_fraction=float(remaining) if remaining is not None else None,
                source=path,
            )
        )
    return points


def _parse_sweep(path: Path, data: Mapping[str, Any]) -> list[OperatingPoint]:
    runs: dict[tuple[str, str, float], list[Mapping[str, Any]]] = {}
    for entry in data["points"]:
        key = (str(entry.get("task", "")), str(entry["method"]), float(entry["remaining"]))
        runs.setdefault(key, []).append(entry)
    dense = data.get("dense") or {}
    points: list[OperatingPoint] = []
    for task in dict.fromkeys(task for task, _, _ in runs):
        benchmark = f"{path.stem} ({task})" if task else path.stem
        metric = f"{task.upper()} dev accuracy" if task else "dev accuracy"
        reference = dense.get(task) if isinstance(dense, Mapping) else None
        if isinstance(reference, Mapping) and reference.get("dev_accuracy") is not None:
            points.append(OperatingPoint(benchmark=benchmark, method="dense", key="dense", metric=metric,
                                         accuracy=_percent(reference["dev_accuracy"], path, f"dense.{task}"),
                                         weights_fraction=1.0, dense=True, source=path))  # fmt: skip
        for (run_task, method, remaining), entries in runs.items():
            if run_task != task:
                continue
            where = f"points[{task}/{method}/{remaining}]"
            accuracies = [_percent(entry["dev_accuracy"], path, where) for entry in entries]
            points.append(OperatingPoint(
                benchmark=benchmark, method=METHOD_LABELS.get(method, method.replace("_", " ")), key=method,
                accuracy=sum(accuracies) / len(accuracies), metric=metric,
                weights_fraction=remaining, source=path,  # the target: runs record what they reached beside it
                accuracy_range=(min(accuracies), max(accuracies)) if len(accuracies) > 1 else None,
                seeds=len(accuracies),
            ))  # fmt: skip
    return points


# --------------------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------------------


def _matplotlib() -> tuple[Any, Any, Any]:
    """``(Figure, FigureCanvasAgg, ticker)``, or a ConfigError telling how to install the extra."""
    try:
        from matplotlib import ticker
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ConfigError('Plotting needs matplotlib: pip install "hfprune[plot]"') from err
    return Figure, FigureCanvasAgg, ticker


def _png_path(output_png: str | os.PathLike) -> Path:
    output = Path(output_png)
    if output.suffix.lower() != ".png":
        raise ConfigError(f"Figures are written as PNG: {output} should end in .png.")
    return output


def _save_atomic(figure: Any, output: Path, dpi: int) -> Path:
    """Write ``figure`` to ``output`` through a temporary file in the same folder, so a crash never leaves a
    half-written PNG where a README or model card points."""
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            figure.savefig(stream, format="png", dpi=dpi)
        # mkstemp creates the file 0600; a figure is meant to be read by others (web servers, collaborators).
        os.chmod(temporary, 0o644)
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return output


def _style_table(labels: Iterable[str]) -> dict[str, tuple[str, str]]:
    """One (colour, marker) per method label, stable across the subplots of a figure."""
    styles: dict[str, tuple[str, str]] = {}
    for label in labels:
        if label not in styles:
            index = len(styles)
            styles[label] = (f"C{index % 10}", _MARKERS[index % len(_MARKERS)])
    return styles


def _spread(positions: list[float], heights: list[float], low: float, high: float, gap: float) -> list[float]:
    """Move label centres (sorted ascending) apart so neighbours do not overlap, staying within [low, high]."""
    placed = list(positions)
    for i in range(1, len(placed)):
        placed[i] = max(placed[i], placed[i - 1] + (heights[i - 1] + heights[i]) / 2 + gap)
    if placed and placed[-1] + heights[-1] / 2 > high:
        placed[-1] = high - heights[-1] / 2
        for i in range(len(placed) - 2, -1, -1):
            placed[i] = min(placed[i], placed[i + 1] - (heights[i + 1] + heights[i]) / 2 - gap)
    return [max(value, low + height / 2) for value, height in zip(placed, heights, strict=True)]


def _label_points(axes: Any, figure: Any, labelled: list[tuple[float, float, str]]) -> None:
    """Write each label right of its marker (left of it near the right edge), nudged vertically so labels never
    overlap (methods at one budget sit at nearly the same x); a thin leader line joins a nudged label to its
    marker."""
    (x0, x1), (y0, y1) = axes.get_xlim(), axes.get_ylim()
    axes_height_pt = axes.get_position().height * figure.get_figheight() * 72
    line = _LABEL_FONTSIZE * 1.3 / axes_height_pt  # one text line, in axes-fraction units
    for side in ("right", "left"):
        items = []
        for x, y, text in labelled:
            fx, fy = (x - x0) / (x1 - x0), (y - y0) / (y1 - y0)
            if (fx < 0.6) == (side == "right"):
                items.append((fy, fx, x, y, text))
        items.sort()
        heights = [line * (text.count("\n") + 1) for *_, text in items]
        placed = _spread([item[0] for item in items], heights, 0.02, 0.98, line * 0.25)
        for (fy, fx, x, y, text), target in zip(items, placed, strict=True):
            moved = abs(target - fy) > line * 0.4
            axes.annotate(
                text,
                xy=(x, y),
                xytext=(fx + (0.04 if side == "right" else -0.04), target),
                textcoords="axes fraction",
                ha="left" if side == "right" else "right",
                va="center",
                fontsize=_LABEL_FONTSIZE,
                arrowprops={"arrowstyle": "-", "color": "0.55", "lw": 0.6, "shrinkA": 1, "shrinkB": 4}
                if moved
                else None,
            ).set_in_layout(False)  # labels stay inside the axes; keep them out of the layout engine's sums


def _x_value(point: OperatingPoint, x: str, batch_size: int | None) -> float | None:
    if x == "weights":
        return point.weights_fraction
    return point.flops_fraction if x == "flops" else point.latency_ratio(batch_size)


def plot_tradeoff(
    points: Sequence[OperatingPoint],
    output_png: str | os.PathLike,
    x: str = "flops",
    title: str | None = None,
    *,
    latency_batch_size: int | None = None,
) -> Path:
    """Accuracy against cost, one subplot per benchmark: a labelled marker per method, the dense model as a
    dashed horizontal line.

    Cost is a fraction of the dense model's, so every subplot reads the same way: left is cheaper, and a method
    is good where it stays close to the dashed line far to the left.

    Args:
        points (`Sequence[OperatingPoint]`): From `load_operating_points`; points without a value for ``x`` are
            left out (e.g. fine-pruning results without FLOPs), as are benchmarks left with no pruned point.
        output_png (`str` or `os.PathLike`): Where to write the PNG (written atomically; folders are created).
        x (`str`, *optional*, defaults to ``"flops"``): ``"flops"`` (FLOPs fraction), ``"latency"`` (measured
            latency fraction, pruned / dense) or ``"weights"`` (fraction of prunable weights left: unstructured
            fine-pruning, drawn as one line per method over a log axis).
        title (`str`, *optional*): Figure title.
        latency_batch_size (`int`, *optional*): With ``x="latency"``, the batch size whose measurement to plot
            (default: the largest batch each benchmark measured).

    Returns:
        `Path`: ``output_png``.

    Raises:
        `ConfigError`: Unknown ``x``, no point has a value for it, ``output_png`` is not a ``.png``, or matplotlib
            is not installed.
    """
    if x not in TRADEOFF_AXES:
        raise ConfigError(f"x must be one of {list(TRADEOFF_AXES)}, got {x!r}.")
    output = _png_path(output_png)
    benchmarks: dict[str, list[OperatingPoint]] = {}
    for point in points:
        benchmarks.setdefault(point.benchmark, []).append(point)
    panels = []
    for name, group in benchmarks.items():
        batch = latency_batch_size
        if x == "latency" and batch is None:
            measured = [size for point in group if not point.dense for size in point.latency_ratios]
            batch = max(measured) if measured else None
        plotted = [(point, value) for point in group if (value := _x_value(point, x, batch)) is not None]
        if any(not point.dense for point, _ in plotted):
            panels.append((name, batch, plotted, [point for point in group if point.dense]))
    if not panels:
        what = {"flops": "a FLOPs fraction", "weights": "a remaining-weights fraction"}.get(x, "a latency measurement")
        if latency_batch_size is not None and x == "latency":
            what += f" at batch size {latency_batch_size}"
        raise ConfigError(
            f"No pruned operating point has {what}, so there is nothing to plot against {x!r} (benchmarks: "
            f"{sorted(benchmarks)}). Unstructured fine-pruning results have neither FLOPs nor latency savings."
        )

    Figure, FigureCanvasAgg, ticker = _matplotlib()
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.6 * columns, 3.8 * rows + (0.3 if title else 0)), layout="constrained")
    FigureCanvasAgg(figure)
    figure.get_layout_engine().set(w_pad=0.08, h_pad=0.08)
    grid = figure.subplots(rows, columns, squeeze=False)
    # Styles come from all the points, not just the plotted ones, so the FLOPs and latency figures of the same
    # results give each method the same colour and marker.
    styles = _style_table(point.method for point in points if not point.dense)
    pending = []
    for axes, (name, batch, plotted, dense_points) in zip(grid.flat, panels, strict=False):
        accuracies = [point.accuracy for point, _ in plotted] + [point.accuracy for point in dense_points]
        accuracies += [bound for point, _ in plotted for bound in (point.accuracy_range or ())]
        low, high = min(accuracies), max(accuracies)
        pad = max(1.5, 0.15 * (high - low))
        axes.set_ylim(low - pad, high + pad)
        if x == "weights":
            _draw_curves(axes, ticker, plotted, dense_points, styles)
            axes.set_title(name, fontsize=10)
            axes.set_ylabel(f"{plotted[0][0].metric} (%)")
            continue
        # From zero, as in ShrinkBench: the distance to the dense model at 100% is the saving. A pruned model that
        # measured slower than dense (latency above 100%) still gets room.
        axes.set_xlim(0.0, max(1.08, max(value for _, value in plotted) + 0.08))
        axes.xaxis.set_major_formatter(ticker.PercentFormatter(xmax=1.0, decimals=0))
        axes.grid(True, color="0.9", lw=0.6)
        axes.set_axisbelow(True)
        for dense in dense_points:
            axes.axhline(dense.accuracy, ls="--", color="0.35", lw=1.0, zorder=1)
            axes.annotate(f"dense ({dense.accuracy:.1f}%)", xy=(0.02, dense.accuracy),
                          xycoords=("axes fraction", "data"), xytext=(0, 2), textcoords="offset points",
                          va="bottom", fontsize=_LABEL_FONTSIZE, color="0.3")  # fmt: skip
        # Methods that land on the same spot (same budget and accuracy) share one label and are drawn as
        # concentric markers, largest first, so none hides the others.
        spots: list[tuple[float, float, list[OperatingPoint]]] = []
        for point, value in plotted:
            if point.dense:
                axes.scatter([value], [point.accuracy], marker="*", s=110, color="black", zorder=4)
                continue
            for spot in spots:
                if abs(spot[0] - value) < 0.006 and abs(spot[1] - point.accuracy) < 0.05:
                    spot[2].append(point)
                    break
            else:
                spots.append((value, point.accuracy, [point]))
        labelled = []
        for value, accuracy, same in spots:
            for rank, point in enumerate(same):
                colour, marker = styles[point.method]
                axes.scatter([value], [accuracy], marker=marker, s=max(70 - 30 * rank, 20), color=colour,
                             edgecolors="white", linewidths=0.6, zorder=3 + rank)  # fmt: skip
            labelled.append((value, accuracy, f"{' / '.join(p.method for p in same)} ({accuracy:.1f}%)"))
        pending.append((axes, labelled))
        axes.set_title(name, fontsize=10)
        if x == "flops":
            axes.set_xlabel("FLOPs (% of dense)")
        else:
            axes.set_xlabel(f"latency (% of dense, batch {batch})")
        axes.set_ylabel(f"{plotted[0][0].metric} (%)")
    for axes in list(grid.flat)[len(panels) :]:
        axes.set_visible(False)
    if title:
        figure.suptitle(title, fontsize=11)
    # Label placement needs the final axes sizes, which the layout engine sets on the first draw.
    figure.canvas.draw()
    for axes, labelled in pending:
        _label_points(axes, figure, labelled)
    return _save_atomic(figure, output, dpi=110)


def _draw_curves(axes: Any, ticker: Any, plotted: list[tuple[OperatingPoint, float]],
                 dense_points: list[OperatingPoint], styles: dict[str, tuple[str, str]]) -> None:  # fmt: skip
    """Accuracy against remaining weights as ShrinkBench draws it: one line per method over a log axis, the range
    over seeds as error bars, a legend instead of point labels."""
    methods: dict[str, list[tuple[float, OperatingPoint]]] = {}
    for point, value in plotted:
        if not point.dense:
            methods.setdefault(point.method, []).append((value, point))
    for method, curve in methods.items():
        curve.sort(key=lambda item: item[0])
        colour, marker = styles[method]
        xs, ys = [value for value, _ in curve], [point.accuracy for _, point in curve]
        errors = [[point.accuracy - (point.accuracy_range or (point.accuracy,) * 2)[0] for _, point in curve],
                  [(point.accuracy_range or (point.accuracy,) * 2)[1] - point.accuracy for _, point in curve]]
        seeds = max(point.seeds for _, point in curve)
        label = method + (f" (mean of up to {seeds} seeds, bars: range)" if seeds > 1 else "")
        axes.errorbar(xs, ys, yerr=errors, color=colour, marker=marker, ms=6, lw=1.2, capsize=3, label=label,
                      zorder=3)  # fmt: skip
    for dense in dense_points:
        axes.axhline(dense.accuracy, ls="--", color="0.35", lw=1.0, zorder=1, label=f"dense ({dense.accuracy:.1f}%)")
    values = sorted({value for value, _ in (item for curve in methods.values() for item in curve)})
    axes.set_xscale("log")
    axes.set_xlim(min(values) / 1.5, 1.0)
    if len(values) <= 8:  # a tick at every budget measured; more would overlap (a lottery search's 16 rounds)
        axes.set_xticks(values + [1.0])
    else:
        axes.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{100 * v:.3g}%"))
    axes.xaxis.set_minor_formatter(ticker.NullFormatter())
    axes.grid(True, color="0.9", lw=0.6)
    axes.set_axisbelow(True)
    axes.set_xlabel("prunable weights remaining (log scale)")
    axes.legend(fontsize=_LABEL_FONTSIZE, loc="lower right")


def _strip_common_prefix(labels: list[str]) -> tuple[list[str], str]:
    """``["layer 0", "layer 1"]`` -> ``(["0", "1"], "layer")``: the shared part goes to the axis label once."""
    if len(labels) < 2:
        return labels, ""
    prefix = os.path.commonprefix(labels)
    cut = max(prefix.rfind(sep) for sep in " ._") + 1  # only cut at a separator: "layer1"/"layer2" stay whole
    if cut <= 0 or any(len(label) <= cut for label in labels):
        return labels, ""
    return [label[cut:] for label in labels], prefix[:cut].strip(" ._")


def plot_kept_structure(
    rows: list[tuple[str, str, int, int]],
    output_png: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Kept fraction per layer as bars, one small subplot per group (heads, neurons, channels, ...).

    Each bar shows ``kept / total`` over a light full-height bar for the total, so fully kept and heavily pruned
    layers stand out at a glance. The figure is small (6 x 3 inches at 100 dpi) because it goes into model cards.

    Args:
        rows (`list[tuple[str, str, int, int]]`): ``(group, label, kept, total)``, e.g.
            ``("heads", "layer 0", 6, 12)``, ``("neurons", "layer 0", 700, 1536)`` or
            ``("channels", "layer1.0.conv1", 8, 16)``. Groups are drawn in order of first appearance.
        output_png (`str` or `os.PathLike`): Where to write the PNG (written atomically; folders are created).
        title (`str`, *optional*): Figure title.

    Returns:
        `Path`: ``output_png``.

    Raises:
        `ConfigError`: No rows, a malformed row (``kept`` outside ``[0, total]``), ``output_png`` is not a
            ``.png``, or matplotlib is not installed.
    """
    output = _png_path(output_png)
    groups: dict[str, list[tuple[str, int, int]]] = {}
    for row in rows:
        if len(row) != 4:
            raise ConfigError(f"Structure rows are (group, label, kept, total); got {row!r}.")
        group, label, kept, total = row
        if not 0 <= kept <= total:
            raise ConfigError(f"Structure row {row!r}: kept must be between 0 and total.")
        groups.setdefault(str(group), []).append((str(label), int(kept), int(total)))
    if not groups:
        raise ConfigError("plot_kept_structure needs at least one (group, label, kept, total) row.")

    Figure, FigureCanvasAgg, ticker = _matplotlib()
    figure = Figure(figsize=(6, 3), layout="constrained")
    FigureCanvasAgg(figure)
    # The default padding (3 pt) lets the descenders of rotated tick labels touch the image edge.
    figure.get_layout_engine().set(w_pad=0.08, h_pad=0.08)
    # Wide groups (many layers) get more room, but never so little that the two-line title is cut off.
    widths = [min(max(len(entries), 6), 24) for entries in groups.values()]
    grid = figure.subplots(1, len(groups), squeeze=False, sharey=True, width_ratios=widths)
    for index, (axes, (group, entries)) in enumerate(zip(grid.flat, groups.items(), strict=True)):
        labels, common = _strip_common_prefix([label for label, _, _ in entries])
        fractions = [kept / total if total else 0.0 for _, kept, total in entries]
        positions = range(len(entries))
        axes.bar(positions, [1.0] * len(entries), width=0.8, color="0.9", zorder=1)
        axes.bar(positions, fractions, width=0.8, color=f"C{index % 10}", zorder=2)
        if len(entries) <= 8:  # counts fit above the bars only when there are few of them
            for position, fraction, (_, kept, _) in zip(positions, fractions, entries, strict=True):
                axes.text(position, fraction + 0.02, f"{kept:,}", ha="center", va="bottom", fontsize=6, zorder=3)
        # Thin the tick labels so at most ~10 remain readable at this size; every bar keeps its tick.
        step = max(1, math.ceil(len(entries) / 10))
        axes.set_xticks(list(positions))
        axes.set_xticklabels([text if i % step == 0 else "" for i, text in enumerate(labels)], fontsize=7,
                             rotation=0 if max(map(len, labels)) <= 3 else 90)  # fmt: skip
        axes.tick_params(axis="x", length=2)
        axes.set_ylim(0, 1.12)
        axes.yaxis.set_major_formatter(ticker.PercentFormatter(xmax=1.0, decimals=0))
        axes.tick_params(axis="y", labelsize=7)
        kept_sum, total_sum = sum(kept for _, kept, _ in entries), sum(total for _, _, total in entries)
        share = f"{kept_sum / total_sum:.0%}" if total_sum else "-"
        axes.set_title(f"{group}\n{kept_sum:,} / {total_sum:,} kept ({share})", fontsize=8)
        if common:
            axes.set_xlabel(common, fontsize=7)
        if index == 0:
            axes.set_ylabel("kept", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    return _save_atomic(figure, output, dpi=100)
