"""Saving and loading pruned models: safetensors weights, JSON configs, a model card, atomic writes."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors.torch import load_file
from torch import nn

from .compaction import shrink_to_plan_
from .config import PruningConfig
from .errors import ConfigError, HfPruneError, HfPruneWarning
from .masks import merged_state_dict
from .plan import PLAN_NAME, ChannelPlan, PlanMismatchError, PruningPlan, read_plan
from .quantization import QuantizationConfig, is_quantized, quantize_dynamic_int8
from .reporting import PruningReport, compare_reports, report
from .targets import require_real_weights


TEMPLATE_PATH = Path(__file__).parent / "model_cards" / "pruned_model.md"
STRUCTURE_PLOT_NAME = "kept_structure.png"
#: Where the card's loading snippets say the model is; `hfprune push` replaces it with the repository id.
CARD_PLACEHOLDER_PATH = "path/to/this/folder"
#: Written last into every folder hfprune saves: the entries it wrote, so that ``overwrite`` replaces only
#: folders that hold nothing else (no checkpoints, no user files).
MANIFEST_NAME = "hfprune_manifest.json"
#: Folders written before the manifest existed are recognised by these names (hfprune's own files and the
#: tokenizer files transformers writes); anything else in them makes the folder "not ours".
_LEGACY_OUTPUT_NAMES = frozenset({
    "config.json", "model.safetensors", "model.safetensors.index.json", "generation_config.json",
    "pruning_config.json", "pruning_plan.json", "distillation_config.json", "report.json", "README.md",
    STRUCTURE_PLOT_NAME, "eval_results.json", "modeling_hfprune.py", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json", "spm.model",
    "sentencepiece.bpe.model", "chat_template.jinja",
})  # fmt: skip
_OUTPUT_MARKERS = ("pruning_config.json", "pruning_plan.json", MANIFEST_NAME)


class OutputDirectoryError(HfPruneError, ValueError):
    """The output folder cannot receive a model without losing something (or is not a folder)."""


def _written_by_hfprune(folder: Path) -> list[str]:
    """Entries of ``folder`` that hfprune did not write (empty: the folder is an earlier hfprune output)."""
    entries = sorted(entry.name for entry in folder.iterdir())
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        try:
            owned = set(json.loads(manifest.read_text())["files"]) | {MANIFEST_NAME, "eval_results.json"}
        except (ValueError, KeyError, TypeError):
            owned = set()  # a damaged manifest proves nothing: fall back to the strict legacy rule
    else:
        owned = set()
    if not owned:
        if not any((folder / marker).is_file() for marker in _OUTPUT_MARKERS):
            return entries
        owned = set(_LEGACY_OUTPUT_NAMES)
    return [name for name in entries if name not in owned]


def check_output_directory(
    path: str | os.PathLike, *, overwrite: bool, inputs: Sequence[str | os.PathLike | None] = ()
) -> Path:
    """Raise `OutputDirectoryError` unless a model can be written to ``path`` without losing anything.

    Refused: an existing file; a folder that is, or contains, one of ``inputs`` (the model being pruned, a
    teacher, a data folder); a non-empty folder without ``overwrite``; and, even with ``overwrite``, a folder
    holding anything hfprune did not write there (training checkpoints, earlier runs, the user's own files).
    Call it before loading or calibrating, so a doomed run fails at once; the savers call it again.
    """
    final = Path(path).expanduser().resolve()
    if final.exists() and not final.is_dir():
        raise OutputDirectoryError(f"Output {final} exists and is a file, not a folder. Choose a folder path.")
    for source in inputs:
        if source is None or not str(source) or not Path(str(source)).expanduser().exists():
            continue  # hub ids and absent inputs cannot be overwritten
        source_path = Path(str(source)).expanduser().resolve()
        if source_path == final or final in source_path.parents:
            raise OutputDirectoryError(
                f"Output {final} is or contains the input {source_path}; writing there would replace it. "
                "Choose an output folder outside the input."
            )
    if not final.is_dir() or not any(final.iterdir()):
        return final
    foreign = _written_by_hfprune(final)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputDirectoryError(
            f"Output {final} is not empty and holds files hfprune did not write ({shown}); hfprune replaces only "
            "its own earlier outputs. Choose a new or empty folder (e.g. a sub-folder of it)."
        )
    if not overwrite:
        raise OutputDirectoryError(
            f"Output {final} already holds an hfprune model. Pass overwrite=True (--overwrite) to replace it, "
            "or choose another folder."
        )
    return final


def _exchange_function() -> Any:
    """``renameat2(..., RENAME_EXCHANGE)`` from libc (Linux >= 3.15, glibc >= 2.28), else ``None``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _swap_directories(staging: Path, final: Path) -> Path | None:
    """Put ``staging`` at ``final``; return where the previous ``final`` now is (``None`` if there was none).

    One atomic exchange where the OS offers it, so that at every instant ``final`` holds either the old or the new
    model. Elsewhere two renames; a crash between them leaves the old folder in ``.NAME.old-*``, which the next save
    to ``final`` restores (`recover_interrupted_save`).
    """
    if not final.exists():
        staging.rename(final)
        return None
    exchange = _exchange_function()
    if exchange is not None:
        result = exchange(_AT_FDCWD, os.fsencode(staging), _AT_FDCWD, os.fsencode(final), _RENAME_EXCHANGE)
        if result == 0:
            return staging  # staging now holds the old folder
        # EINVAL/ENOSYS: this filesystem or kernel cannot exchange; fall through to two renames.
    backup = final.with_name(f".{final.name}.old-{os.getpid()}")
    final.rename(backup)
    try:
        staging.rename(final)
    except BaseException:
        backup.rename(final)
        raise
    return backup


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted_save(path: str | os.PathLike) -> None:
    """Finish what a killed save to ``path`` left: restore ``.NAME.old-*`` when ``path`` is gone, drop leftovers.

    A folder whose writer process is still alive is left alone (another save may be under way).
    """
    final = Path(path).expanduser().resolve()
    if not final.parent.is_dir():
        return
    for kind in ("old", "tmp"):
        prefix = f".{final.name}.{kind}-"
        for leftover in sorted(final.parent.glob(f"{prefix}*")):
            writer = leftover.name[len(prefix) :].split("-")[0]  # .NAME.old-<pid>, .NAME.tmp-<pid>-<random>
            if writer.isdigit() and int(writer) != os.getpid() and _pid_alive(int(writer)):
                continue
            if kind == "old" and not final.exists():
                leftover.rename(final)
                warnings.warn(
                    f"Restored {final} from {leftover.name}: an earlier save was interrupted while replacing it.",
                    HfPruneWarning,
                    stacklevel=3,
                )
            else:
                shutil.rmtree(leftover, ignore_errors=True)


class _TerminatedError(BaseException):
    """SIGTERM turned into an exception, so a save being killed by ``kill``/a scheduler cleans up like Ctrl-C."""


@contextmanager
def _signals_handled() -> Iterator[dict[str, Any]]:
    """Inside: SIGTERM raises like Ctrl-C. ``state["defer"] = True`` holds SIGTERM/SIGINT until the block ends."""
    state: dict[str, Any] = {"defer": False, "pending": None}
    if threading.current_thread() is not threading.main_thread():
        yield state  # handlers can only be installed from the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        if state["defer"]:
            state["pending"] = signum
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise _TerminatedError(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield state
    except _TerminatedError as err:
        aborted = err.args[0]  # the caller has cleaned up; now let the process end as SIGTERM asks
    else:
        aborted = None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if aborted is not None:
        os.kill(os.getpid(), aborted)  # delivered to the handler that was there before (default: exit)
        raise SystemExit(128 + aborted)  # that handler returned: the save still did not happen
    if state["pending"] is not None:
        os.kill(os.getpid(), state["pending"])  # arrived during the swap, which completed: deliver it now


def _current_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


@contextmanager
def atomic_directory(
    path: str | os.PathLike, overwrite: bool = False, inputs: Sequence[str | os.PathLike | None] = ()
) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block finishes without error.

    - A crash, Ctrl-C or SIGTERM inside the block leaves ``path`` untouched and removes the temporary folder.
    - The swap is atomic where the OS allows it (Linux); elsewhere a kill between its two renames is repaired by
      the next save to ``path``.
    - ``path`` must pass `check_output_directory` (never an input, never a folder holding others' files).
    - A manifest of the written entries goes in last, so a later ``overwrite`` knows the folder is hfprune's.
    """
    recover_interrupted_save(path)
    final = check_output_directory(path, overwrite=overwrite, inputs=inputs)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _signals_handled() as signals:
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
        # mkdtemp makes the folder private (0700), and the swap would keep that mode: give it the mode any new
        # folder gets (as save_pretrained's do), so that a group serving the model can read it.
        staging.chmod(0o777 & ~_current_umask())
        try:
            yield staging
            manifest = {"files": sorted(entry.name for entry in staging.iterdir())}
            (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
            signals["defer"] = True
            previous = _swap_directories(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)


_AUTO_CLASSES = {
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForTokenClassification": "AutoModelForTokenClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
    "ForMaskedLM": "AutoModelForMaskedLM",
    "ForMultipleChoice": "AutoModelForMultipleChoice",
    "ForImageClassification": "AutoModelForImageClassification",
    "Model": "AutoModel",
}


def auto_class_name(architecture: str) -> str:
    """The transformers auto class that loads ``architecture`` (for cards and remote-code ``auto_map``)."""
    for suffix, auto in _AUTO_CLASSES.items():
        if architecture.endswith(suffix):
            return auto
    raise ConfigError(f"No transformers auto class is known for {architecture!r}.")


def model_class_of(config: Any, where: str | os.PathLike) -> type | None:
    """The transformers model class ``config.architectures[0]`` names, ``None`` when it names none.

    Raises:
        ConfigError: the name is something else in transformers (``"pipeline"``, a config or tokenizer class), or
            a class transformers does not have.
    """
    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        return None
    name = architectures[0]
    model_class = getattr(transformers, str(name), None)
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        found = "is not a model class" if model_class is not None else "is not in this transformers version"
        raise ConfigError(
            f"{where}/config.json names the architecture {name!r}, which {found} (transformers "
            f'{transformers.__version__}). config.json\'s "architectures" must name the model class that saved the '
            'folder, e.g. ["BertForSequenceClassification"]; fix it or save the model again with save_pretrained.'
        )
    return model_class


def load_model(name_or_path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a transformers model with the class named in its config (``architectures[0]``), else `AutoModel`."""
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path)
    except OSError as err:
        raise HfPruneError(
            f"Could not load a model config from {str(name_or_path)!r}: {err}. Pass a local folder with config.json "
            "(hub ids need network access)."
        ) from err
    model_class = model_class_of(config, name_or_path) or transformers.AutoModel
    return _from_pretrained(model_class, name_or_path, None, config=config, **kwargs)


def _from_pretrained(
    model_class: Any, name_or_path: str | os.PathLike, plan: PruningPlan | None, **kwargs: Any
) -> nn.Module:
    """``model_class.from_pretrained`` that refuses weights which do not fit instead of initialising them anew.

    transformers loads what fits and fills the rest with fresh values (with a logged report); a pruned model with
    fresh values in place of its weights would run and give wrong outputs, so every key it did not load is an error
    naming the likely cause: the plan (``plan``: the one applied, ``None`` when the folder has none), or the options
    the caller passed.
    """
    from safetensors import SafetensorError

    options = {key: value for key, value in kwargs.items() if key not in ("config", "dtype")}
    accept_new_shapes = bool(kwargs.pop("ignore_mismatched_sizes", False))
    try:
        # Always asked to load past mismatches, so that they come back in `info` (with their shapes) and are judged
        # below; otherwise transformers raises with the shapes only in its logged report.
        model, info = model_class.from_pretrained(
            name_or_path, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
    except SafetensorError as err:
        raise HfPruneError(
            f"The weights in {name_or_path} cannot be read ({err}): model.safetensors is damaged or was cut short. "
            "Copy the folder again from where it was saved."
        ) from err
    mismatched = sorted(info["mismatched_keys"])
    missing: list[str] = []
    unexpected: list[str] = []
    if plan is not None:
        # A compacted folder is hfprune's own: every weight must be there. (An ordinary checkpoint may lack a head
        # or carry unused weights, which transformers reports and handles as usual.) Non-persistent buffers
        # (position ids) are rebuilt by the model itself.
        missing = sorted(key for key in info["missing_keys"] if not key.endswith("position_ids"))
        unexpected = sorted(info["unexpected_keys"])
    if accept_new_shapes:
        mismatched = []  # the caller asked for new weights where the shapes differ (e.g. a new num_labels)
    if not (missing or unexpected or mismatched):
        return model
    shapes = [f"{key}: saved {tuple(saved)}, model {tuple(built)}" for key, saved, built in mismatched[:3]]
    found = "; ".join(part for part in (
        f"shapes differ ({'; '.join(shapes)}{' ...' if len(mismatched) > 3 else ''})" if mismatched else "",
        f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
    ) if part)  # fmt: skip
    if mismatched and options:
        cause = (
            f"The options {sorted(options)} may change the shapes the folder describes. To start new weights where "
            "the shapes differ (e.g. a classifier for another num_labels), pass ignore_mismatched_sizes=True."
        )
    elif plan is None and mismatched:
        cause = (
            "No pruning plan was found (neither pruning_plan.json nor config.hfprune_plan), but the weights are "
            "smaller than config.json describes: this looks like a compacted model whose plan was lost. Copy "
            "pruning_plan.json back from where the model was saved, or prune the base model again."
        )
    else:
        cause = (
            "The plan and the weights come from different pruning runs: save them together with "
            "hfprune.hub.save_pruned (or compact_ then save_pretrained)."
        )
    built = "the model config.json describes" if plan is None else "the model the plan builds"
    raise PlanMismatchError(f"The weights in {name_or_path} do not fit {built}: {found}. {cause}")


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
            "```python\nimport hfprune\n\n"
            f"model = hfprune.load_pruned({repo_or_path!r})  # base architecture -> plan -> weights\n```\n"
        )
    if library == "sentence-transformers":
        remote = ", trust_remote_code=True" if plan is not None else ""
        text = (
            "A sentence-transformers model (pooling and normalization as in the base model)"
            + (" whose encoder layers were physically shrunk; the folder carries the modeling code that rebuilds "
               "them (`modeling_hfprune.py`), so loading needs `trust_remote_code=True`" if plan is not None else "")
            + f":\n\n```python\nfrom sentence_transformers import SentenceTransformer\n\n"
            f"model = SentenceTransformer({repo_or_path!r}{remote})\n"
            'embeddings = model.encode(["A sentence."])\n```\n'
        )  # fmt: skip
        if plan is not None:
            text += (
                "\nThe encoder alone, with plain transformers or with hfprune:\n\n```python\nfrom transformers "
                f"import AutoModel\n\nencoder = AutoModel.from_pretrained({repo_or_path!r}, trust_remote_code=True)"
                f"\n# or: import hfprune; encoder = hfprune.load_pruned({repo_or_path!r})\n```\n"
            )
        return text
    try:
        auto = auto_class_name(architecture)
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
        library (`str`): ``"transformers"``, ``"sentence-transformers"`` or ``"timm"``.
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
    require_real_weights(model, "save_pruned")
    if is_quantized(model):
        raise ConfigError(
            "An int8 model's packed weights cannot be written as safetensors: save the float model with "
            "extra_configs=(hfprune.quantization.QuantizationConfig(),) and hfprune.load_pruned quantizes it again "
            "on load (to the same int8 weights)."
        )
    if isinstance(plan, ChannelPlan):
        # A channel-pruned timm CNN: its architecture name rebuilds the base model on load.
        architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
        num_classes = getattr(model, "num_classes", None)
        if not architecture or not isinstance(num_classes, int):
            raise ConfigError(
                f"{type(model).__name__} does not say its timm architecture and class count; save it with "
                "hfprune.hub.save_channel_pruned(model, folder, plan, architecture=..., num_classes=...)."
            )
        return save_channel_pruned(model, save_directory, plan, architecture=architecture, num_classes=num_classes,
                                   pruning_config=pruning_config, base_model=base_model, evaluation=evaluation,
                                   method_notes=method_notes, overwrite=overwrite)  # fmt: skip
    if not hasattr(model, "save_pretrained"):
        raise ConfigError(f"{type(model).__name__} has no save_pretrained(); save_pruned needs a transformers model.")
    source = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    base_model = base_model or source or "unknown"
    with atomic_directory(save_directory, overwrite=overwrite, inputs=(source, base_model)) as staging:
        save_weights(model, staging)
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
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"{path} is not valid JSON ({err}): the file is damaged or was cut short. Copy it again from where the "
            "model was saved."
        ) from err
    try:
        return PruningConfig.from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def local_folder(name_or_path: str | os.PathLike) -> Path:
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


def save_weights(model: nn.Module, directory: str | os.PathLike) -> None:
    """``model.save_pretrained`` with the masks multiplied in (no parametrization keys), in transformers' own
    checkpoint layout: `load_pruned` and the remote-code class read it back through ``from_pretrained``, which
    converts keys as it does for any checkpoint."""
    model.save_pretrained(directory, state_dict=merged_state_dict(model))  # type: ignore[operator]


def load_pruned(directory: str | os.PathLike, **model_kwargs: Any) -> nn.Module:
    """Load a pruned model folder (see `_load_pruned`); a folder saved with a `QuantizationConfig` comes back
    quantized (its float weights quantized again, which gives the int8 weights it was saved for)."""
    model = _load_pruned(directory, **model_kwargs)
    folder = local_folder(directory)
    if (folder / QuantizationConfig.config_name).is_file():
        QuantizationConfig.from_pretrained(folder)  # an unknown method is an error before anything else happens
        model = quantize_dynamic_int8(model)
    return model


def _load_pruned(directory: str | os.PathLike, **model_kwargs: Any) -> nn.Module:
    """Load a structurally pruned model: base architecture -> plan -> weights. No pickles.

    ``directory`` is a folder or a Hub repository id. The plan comes from ``pruning_plan.json`` (written by
    hfprune), or from ``config.hfprune_plan`` (written by `compact_`, so a compacted model saved or pushed with
    transformers' own ``save_pretrained``/``push_to_hub`` loads too). The weights are read by transformers' own
    ``from_pretrained`` (its key conversions included) into the architecture the plan shrinks, and every weight must
    fit: none is initialised anew. ``model_kwargs`` go to ``from_pretrained`` (``dtype``, ``num_labels`` with
    ``ignore_mismatched_sizes=True``, ...). Folders without a plan (unstructured pruning) load with plain
    ``from_pretrained``. Channel-pruned CNN folders (a channel plan, written by `save_channel_pruned`) load too:
    timm/torchvision base architecture -> plan -> weights.
    """
    directory = local_folder(directory)
    plan: PruningPlan | ChannelPlan | None = read_plan(directory)
    if isinstance(plan, ChannelPlan):
        model_type = _transformers_model_type(directory)
        if model_type is not None:
            raise PlanMismatchError(
                f"{directory / PLAN_NAME} is a CNN channel plan, but config.json describes a transformers "
                f"{model_type} model, whose plans list heads and neurons: the plan file belongs to another model. "
                "Copy the plan saved with this model back, or prune it again."
            )
        if model_kwargs:
            raise ConfigError(
                f"{directory} is a channel-pruned CNN; it takes no model options ({sorted(model_kwargs)})."
            )
        return _load_channel_folder(directory, plan)
    config = transformers.AutoConfig.from_pretrained(directory)
    if plan is None:
        plan = PruningPlan.from_config(config)  # saved by transformers' save_pretrained/push_to_hub
    if plan is None:
        return load_model(directory, **model_kwargs)
    model_class = model_class_of(config, directory)
    if model_class is None:
        raise ConfigError(f"{directory}/config.json names no architecture; it cannot say which model to rebuild.")
    if not any((directory / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise HfPruneError(f"{directory / 'model.safetensors'} is missing.")
    model_kwargs.setdefault("dtype", model_kwargs.pop("torch_dtype", "auto"))  # the weights' dtype, as saved
    model = _from_pretrained(_compacted_class(model_class, plan), directory, plan, **model_kwargs)
    model.__class__ = model_class  # the subclass only shrank the layers at construction: the model is a plain one
    return model.eval()


def _transformers_model_type(directory: Path) -> str | None:
    """``model_type`` of the folder's ``config.json`` when it is a transformers config, else ``None``."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None


def _compacted_class(model_class: type, plan: PruningPlan) -> type:
    """``model_class`` whose constructor shrinks the full-size layers to ``plan``, for ``from_pretrained``.

    The remote-code export does the same with hfprune's shrink module copied into the folder; here hfprune's own
    checks run too (`shrink_to_plan_`).
    """

    def __init__(self: nn.Module, config: Any, *args: Any, **kwargs: Any) -> None:
        config.__dict__.pop("hfprune_plan", None)  # the base architecture is built full size, then shrunk
        model_class.__init__(self, config, *args, **kwargs)  # type: ignore[misc]
        shrink_to_plan_(self, plan)

    return type(model_class.__name__, (model_class,), {"__init__": __init__, "__module__": model_class.__module__})


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a damaged or cut-short file is an error that names it."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise HfPruneError(
            f"{path} cannot be read ({err}): the file is damaged or was cut short. Copy the folder again from where "
            "it was saved."
        ) from err


def saved_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    """The floating dtype holding most of the saved weights (float32 when there are none)."""
    sizes: dict[torch.dtype, int] = {}
    for tensor in state.values():
        if tensor.is_floating_point():
            sizes[tensor.dtype] = sizes.get(tensor.dtype, 0) + tensor.numel()
    return max(sizes, key=sizes.__getitem__) if sizes else torch.float32


def _as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ConfigError(f"dtype={dtype!r} is not a torch dtype; use e.g. torch.bfloat16, 'float16' or 'auto'.")
    return resolved


# ------------------------------------------------------------------------------------------------ CNN folders
def save_channel_pruned(
    model: nn.Module,
    directory: str | os.PathLike,
    plan: ChannelPlan,
    *,
    architecture: str,
    num_classes: int,
    pruning_config: PruningConfig | None = None,
    base_model: str | None = None,
    evaluation: Any = None,
    method_notes: list[str] | tuple[str, ...] = (),
    overwrite: bool = False,
) -> Path:
    """Write ``config.json`` (timm style), ``model.safetensors``, ``pruning_plan.json`` and a model card atomically.

    ``evaluation`` (a `hfprune.hub.CardEvaluation`, e.g. top-1/top-5 before and after) goes into the card's
    model-index; the card also has parameters and FLOPs before/after and the kept channels per layer.
    """
    from safetensors.torch import save_file

    from .calibration import inputs_like_model
    from .channels import create_base_model

    pretrained_cfg = {k: v for k, v in (getattr(model, "pretrained_cfg", None) or {}).items()
                      if isinstance(v, (str, int, float, list, tuple, type(None)))}  # fmt: skip
    with atomic_directory(directory, overwrite=overwrite) as staging:
        config = {"architecture": architecture, "num_classes": num_classes, "pretrained_cfg": pretrained_cfg}
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staging / "model.safetensors"))
        plan.save_pretrained(staging)
        if pruning_config is not None:
            pruning_config.save_pretrained(staging)
        example = torch.zeros(1, *(pretrained_cfg.get("input_size") or (3, 224, 224)))
        # The base model's size comes from the same architecture with the plan's full widths.
        dense = create_base_model(architecture, num_classes)
        after, before = (report(m, inputs_like_model(example, m), measure_latency=False, target_modules=r".*")
                         for m in (model, dense))  # fmt: skip
        write_model_card(staging, model, base_model or architecture, pruning_config, report=after, base_report=before,
                         plan=plan, evaluation=evaluation, method_notes=method_notes, library="timm",
                         model_name=Path(directory).name)  # fmt: skip
    return Path(directory)


def load_channel_pruned(directory: str | os.PathLike) -> nn.Module:
    """Rebuild a channel-pruned CNN from a folder or a Hub id: base architecture -> plan -> weights. No pickles."""
    return _load_channel_folder(local_folder(directory))


def _load_channel_folder(directory: Path, plan: ChannelPlan | None = None) -> nn.Module:
    """`load_channel_pruned` of a local folder; ``plan`` when it is already read."""
    from .channels import apply_channel_plan_, create_base_model

    config_path = directory / "config.json"
    if not config_path.is_file():
        raise HfPruneError(f"{config_path} is missing.")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HfPruneError(f"{config_path} is not valid JSON ({err}); the saved folder is corrupt.") from err
    fields = config if isinstance(config, dict) else {}
    missing = [key for key in ("architecture", "num_classes") if key not in fields]
    if missing:
        raise HfPruneError(
            f"{config_path} lacks {missing}: it was not written by hfprune's save_channel_pruned (or was edited)."
        )
    architecture, num_classes, pretrained_cfg = fields["architecture"], fields["num_classes"], fields.get(
        "pretrained_cfg") or {}  # fmt: skip
    for key, value, expected, good in (
        ("architecture", architecture, "a timm architecture name (a string)", isinstance(architecture, str)),
        ("num_classes", num_classes, "a positive integer", type(num_classes) is int and num_classes > 0),
        ("pretrained_cfg", pretrained_cfg, "a JSON object", isinstance(pretrained_cfg, dict)),
    ):
        if not good:
            raise HfPruneError(
                f"{config_path}: {key} must be {expected}; got {value!r} ({type(value).__name__}). The folder's "
                "config was edited or damaged: copy it again from where the model was saved."
            )
    plan = plan if plan is not None else ChannelPlan.from_pretrained(directory)
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise HfPruneError(f"{weights} is missing.")
    model = create_base_model(architecture, num_classes)
    size = pretrained_cfg.get("input_size") or [3, 224, 224]
    apply_channel_plan_(model, plan, torch.zeros(1, *size))
    state = read_weights(weights)
    model.to(saved_dtype(state))  # a bf16/fp16 model reloads in its own dtype
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # shape mismatches or missing keys: weights and plan do not belong together
        raise PlanMismatchError(
            f"Weights in {weights} do not fit the model {PLAN_NAME} builds ({str(err)[:500]}). The plan and the "
            "weights come from different runs: save them together with save_channel_pruned."
        ) from err
    return model.eval()
