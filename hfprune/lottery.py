"""Lottery tickets: iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020), and
the controls that test a ticket (re-initialized weights, random masks with the ticket's per-layer counts).

One search is a loop of rounds: train, remove ``prune_rate`` of the weights still kept (by magnitude, on the masks
`Pruner` attaches), put every surviving parameter back to its value at the rewind point, train again. Round 0
trains the dense network. Each finished round is written to ``output_dir/round_XX`` at once (masks, trained
weights, metrics), so a stopped search resumes at the first round not written; a round cut off midway is trained
again from its rewind point.

Training is the caller's: ``train(model, round_index, after_step)`` trains ``model`` in place with its masks on
(any loop, or a `transformers.Trainer` given `rewind_callback(after_step)`), calls ``after_step(step)`` after each
optimizer step (only round 0 of a search that rewinds to a later iteration needs it), and returns its metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from .config import ConfigMixin, PruningConfig
from .errors import ConfigError
from .field_types import coerce_fields
from .hub import atomic_directory, read_weights
from .masks import find_mask, remove_mask_, set_mask_
from .pruner import Pruner
from .targets import resolve_overrides


#: ``train(model, round_index, after_step) -> metrics``: trains ``model`` in place; ``after_step(step)`` is called
#: by the training loop after each optimizer step.
TrainRound = Callable[[nn.Module, int, Callable[[int], None]], Mapping[str, Any]]

_ORIGINAL = "parametrizations.weight.original"
_MASK = "parametrizations.weight.0.mask"


@dataclass
class LotteryConfig(ConfigMixin):
    """An iterative magnitude pruning search.

    Args:
        rounds (`int`): Pruning rounds after the dense round 0; the last round keeps ``(1 - prune_rate) ** rounds``
            of the pruned weights (0.8 ** 15 = 3.5 %).
        prune_rate (`float`, defaults to 0.2): Share of the still-kept weights each round removes (the papers' 20 %).
        rewind_step (`int`, defaults to 0): Survivors go back to their values after this many optimizer steps of
            round 0: 0 is the original lottery ticket (initialization); a few hundred steps is "rewinding", which
            Frankle et al. (2020) found deeper networks need.
        pruning (`PruningConfig`, *optional*): What is pruned and how it is ranked: ``target_modules``,
            ``exclude_modules``, ``scope`` (``"global"`` or ``"local"``, per layer), ``importance`` (magnitude by
            default). Its ``sparsity`` and schedule are set by the rounds.
        rate_overrides (`dict[str, float]`): Per-round rate of some modules (names, dotted suffixes or
            ``re:<regex>``), e.g. ``{"fc3": 0.1}``: the original paper prunes LeNet's output layer at half the rate.
            Such modules are ranked on their own.
    """

    config_name = "lottery_config.json"

    rounds: int
    prune_rate: float = 0.2
    rewind_step: int = 0
    pruning: PruningConfig | dict[str, Any] = field(default_factory=dict)
    rate_overrides: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="LotteryConfig.", skip=("pruning",))
        if isinstance(self.pruning, dict):
            self.pruning = PruningConfig.from_dict({"importance": "magnitude", "scope": "global", **self.pruning})
        elif not isinstance(self.pruning, PruningConfig):
            raise ConfigError(f"LotteryConfig.pruning must be a PruningConfig or a dict; got {self.pruning!r}.")
        for name, value in {"rounds": self.rounds, "rewind_step": self.rewind_step}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"LotteryConfig.{name} must be an integer >= 0; got {value!r}.")
        for name, rate in {"prune_rate": self.prune_rate, **self.rate_overrides}.items():
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate < 1.0:
                raise ConfigError(f"The per-round pruning rate of {name!r} must be in (0, 1); got {rate!r}.")
        importance = self.pruning.importance
        if importance.needs not in ("weights", "seed"):  # type: ignore[union-attr]
            raise ConfigError(
                f"A lottery ticket search ranks trained weights between rounds; importance "
                f"{importance.registered_name!r} cannot (use 'magnitude', as the papers do, or 'random')."  # type: ignore
            )
        if self.pruning.structure.registered_name not in ("unstructured", "blocks"):  # type: ignore[union-attr]
            raise ConfigError("Lottery tickets are masks of single weights or blocks: use structure 'unstructured'.")

    def sparsity_after(self, round_index: int, rate: float | None = None) -> float:
        """Share of pruned weights removed after ``round_index`` rounds (0 for the dense round)."""
        return 1.0 - (1.0 - (self.prune_rate if rate is None else rate)) ** round_index

    def round_pruning(self, round_index: int) -> PruningConfig:
        """The `PruningConfig` that removes what round ``round_index`` trains without."""
        overrides = {key: self.sparsity_after(round_index, rate) for key, rate in self.rate_overrides.items()}
        return dataclasses.replace(self.pruning, sparsity=self.sparsity_after(round_index),  # type: ignore[arg-type]
                                   sparsity_overrides=overrides)  # fmt: skip


def rewind_callback(after_step: Callable[[int], None]) -> Any:
    """A `transformers.TrainerCallback` calling ``after_step(global_step)`` after each optimizer step, for a
    ``train`` function built on a `Trainer`."""
    from transformers import TrainerCallback

    class _AfterStep(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            after_step(state.global_step)

    return _AfterStep()


def parameter_state(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter and floating buffer of ``model`` by its plain name (``fc1.weight``, not the parametrization's
    ``fc1.parametrizations.weight.original``), unmasked, copied: what rewinding restores."""
    state = {}
    for key, tensor in model.state_dict().items():
        if key.endswith(_MASK) or not tensor.is_floating_point():
            continue
        state[key.replace(_ORIGINAL, "weight")] = tensor.detach().clone()
    return state


@torch.no_grad()
def rewind_(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Put every parameter and floating buffer of ``model`` back to ``state`` (from `parameter_state`), masks kept.

    Raises:
        ConfigError: ``state`` and the model do not hold the same tensors (it was saved from another model).
    """
    targets = {key.replace(_ORIGINAL, "weight"): tensor for key, tensor in model.state_dict(keep_vars=True).items()
               if not key.endswith(_MASK) and tensor.is_floating_point()}  # fmt: skip
    if set(targets) != set(state):
        missing, extra = sorted(set(targets) - set(state)), sorted(set(state) - set(targets))
        raise ConfigError(f"The rewind state does not fit this model (missing {missing[:3]}, unknown {extra[:3]}).")
    for name, tensor in targets.items():
        if tensor.shape != state[name].shape:
            raise ConfigError(f"The rewind state's {name} has shape {tuple(state[name].shape)}, the model's "
                              f"{tuple(tensor.shape)}.")  # fmt: skip
        tensor.copy_(state[name])


def apply_ticket_(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Attach ``masks`` (``{module name: boolean weight mask}``, e.g. from `load_ticket`) to ``model``."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules.get(name)
        if module is None or not isinstance(getattr(module, "weight", None), Tensor):
            raise ConfigError(f"The ticket masks {name!r}, which is not a module with a weight in this model.")
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise ConfigError(f"The ticket's mask of {name!r} has shape {tuple(mask.shape)}, the weight "
                              f"{tuple(module.weight.shape)}.")  # fmt: skip
        set_mask_(module, mask.to(torch.bool))
    return model


def random_ticket(masks: Mapping[str, Tensor], seed: int = 0) -> dict[str, Tensor]:
    """Masks with the same number of kept weights in every layer as ``masks``, at random positions (the random
    ticket of Frankle & Carbin and Su et al. 2020; also what shuffling each layer's mask gives)."""
    generator = torch.Generator().manual_seed(seed)
    shuffled = {}
    for name, mask in masks.items():
        order = torch.randperm(mask.numel(), generator=generator)
        shuffled[name] = mask.reshape(-1)[order].reshape(mask.shape).clone()
    return shuffled


def reinitialize_(model: nn.Module, seed: int) -> nn.Module:
    """Draw fresh initial weights (each module's own ``reset_parameters``; a transformers model's ``init_weights``)
    with ``seed``, masks kept: the "re-initialized ticket" control."""
    torch.manual_seed(seed)
    if hasattr(model, "init_weights") and hasattr(model, "config"):
        model.init_weights()  # type: ignore[operator]
        return model
    for module in list(model.modules()):
        if not callable(getattr(module, "reset_parameters", None)):
            continue
        mask = find_mask(module)
        if mask is not None:  # initializers write into a plain parameter, not the parametrization's product
            remove_mask_(module, merge=False)
        module.reset_parameters()  # type: ignore[operator]
        if mask is not None:
            set_mask_(module, mask.mask)
    return model


def round_folder(output_dir: str | os.PathLike, round_index: int) -> Path:
    return Path(output_dir) / f"round_{round_index:02d}"


def load_ticket(output_dir: str | os.PathLike, round_index: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The masks round ``round_index`` trained with, and its record (sparsity, metrics)."""
    folder = round_folder(output_dir, round_index)
    if not (folder / "round.json").is_file():
        raise ConfigError(f"{folder} holds no finished round of a lottery ticket search.")
    return read_weights(folder / "masks.safetensors"), json.loads((folder / "round.json").read_text())


def find_lottery_ticket(
    model: nn.Module, config: LotteryConfig, train: TrainRound, output_dir: str | os.PathLike
) -> list[dict[str, Any]]:
    """Run (or resume) the search and return each round's record; ``model`` ends with the last round's masks and
    trained weights.

    Args:
        model (`nn.Module`): The network at initialization (round 0 trains it dense).
        config (`LotteryConfig`): Rounds, rate, rewind point and what to prune.
        train (`TrainRound`): ``train(model, round_index, after_step) -> metrics``, see the module's docstring.
        output_dir (`str` or `os.PathLike`): Where rounds are written; a folder from the same search resumes.

    Example:
        ```python
        config = LotteryConfig(rounds=15, pruning={"target_modules": ["fc1", "fc2", "fc3"]},
                               rate_overrides={"fc3": 0.1})
        rounds = find_lottery_ticket(model, config, train, "runs/lenet-imp")
        ```
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    saved_config = output / LotteryConfig.config_name
    if saved_config.is_file():
        earlier = LotteryConfig.from_pretrained(output)
        if earlier.to_dict() != config.to_dict():
            raise ConfigError(
                f"{output} holds a lottery ticket search with another config ({saved_config}); pass its config to "
                "resume it, or another output_dir."
            )
    else:
        config.save_pretrained(output)
    pruner = Pruner(model, config.round_pruning(0))
    names = list(pruner.modules)
    rates = resolve_overrides(names, config.rate_overrides)  # a key that matches no pruned module is an error
    rewind_file = output / "rewind.safetensors"
    records: list[dict[str, Any]] = []
    first = 0
    while (round_folder(output, first) / "round.json").is_file():
        masks, record = load_ticket(output, first)
        records.append(record)
        first += 1
    rewind_state: dict[str, Tensor] | None = None
    if first > 0:
        rewind_state = read_weights(rewind_file) if rewind_file.is_file() else None
        if rewind_state is None:
            raise ConfigError(f"{output} has finished rounds but no rewind.safetensors: it cannot be resumed.")
        trained = read_weights(round_folder(output, first - 1) / "weights.safetensors")
        apply_ticket_(model, masks)
        rewind_(model, trained)
    elif config.rewind_step == 0:
        rewind_state = parameter_state(model)
        _save_tensors(rewind_state, rewind_file)
    # else: round 0 (run again from the start when it was cut off) saves the rewind point when it reaches it.
    for round_index in range(first, config.rounds + 1):
        if round_index > 0:
            # Rank the trained weights (removed ones score 0, so masks only shrink), then rewind the survivors.
            pruner.apply_sparsity_({name: config.sparsity_after(round_index, rates.get(name)) for name in names})
            rewind_(model, rewind_state)  # type: ignore[arg-type]

        def after_step(step: int, _round: int = round_index) -> None:
            nonlocal rewind_state
            if _round == 0 and config.rewind_step > 0 and step == config.rewind_step:
                rewind_state = parameter_state(model)
                _save_tensors(rewind_state, rewind_file)

        masks = {name: _mask_of(module) for name, module in pruner.modules.items()}
        metrics = dict(train(model, round_index, after_step))
        if rewind_state is None:
            raise ConfigError(
                f"Round 0 ended without reaching rewind_step={config.rewind_step} (or train() never called "
                "after_step): train longer, call after_step(step) after each optimizer step, or rewind to 0."
            )
        kept = {name: int(mask.sum()) for name, mask in masks.items()}
        total = sum(mask.numel() for mask in masks.values())
        sizes = {name: mask.numel() for name, mask in masks.items()}
        record = {"round": round_index, "remaining": sum(kept.values()) / total, "kept": kept, "sizes": sizes,
                  "metrics": _jsonable(metrics)}  # fmt: skip
        with atomic_directory(round_folder(output, round_index), overwrite=True) as folder:
            _save_tensors(masks, folder / "masks.safetensors")
            _save_tensors(parameter_state(model), folder / "weights.safetensors")
            (folder / "round.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        records.append(record)
    return records


def _mask_of(module: nn.Module) -> Tensor:
    mask = find_mask(module)
    return mask.mask.clone() if mask is not None else torch.ones_like(module.weight, dtype=torch.bool)


def _save_tensors(tensors: Mapping[str, Tensor], path: Path) -> None:
    temporary = path.with_name(path.name + ".tmp")
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(temporary))
    os.replace(temporary, path)


def _jsonable(metrics: Mapping[str, Any]) -> dict[str, Any]:
    result = {}
    for key, value in metrics.items():
        if isinstance(value, Tensor):
            value = value.item() if value.numel() == 1 else value.tolist()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        result[key] = value
    return result
