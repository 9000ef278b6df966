"""`PruningTrainer`: a `transformers.Trainer` that prunes on a schedule and distils from a teacher.

The callback decides *when* (score accumulation after gradient clipping, schedule steps, saving pruner state with
each checkpoint); the subclass decides *what* (the loss: task + distillation + sparsity regularizer). Everything
is a constructor argument.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback

from .config import PruningConfig
from .distillation import DistillationConfig, distillation_loss, head_logits
from .errors import ConfigError, HfPruneError, HfPruneWarning
from .masks import get_raw_weight, merge_masks_
from .pruner import Pruner
from .regularizers import BatchNormL1, Regularizer
from .sharding import gather_into, is_sharded, shapes_only_copy, shard_frozen_


PRUNER_STATE_NAME = "hfprune_pruner.pt"


class PruningCallback(TrainerCallback):
    """Drives a `Pruner` from the Trainer's events.

    - ``on_train_begin``: the run's length, for schedules given in shares of the run;
    - ``on_pre_optimizer_step`` (after gradient clipping): fold gradients into importance statistics, unless
      ``accumulates`` is off (under DeepSpeed, whose engine steps inside ``backward``, `PruningTrainer` does it
      just before that step);
    - ``on_step_end``: advance the schedule and update masks.

    The pruner state is written into each checkpoint by `PruningTrainer._save_checkpoint`, before transformers
    deletes older checkpoints (``save_total_limit``): ``on_save`` comes after that deletion, too late.
    """

    def __init__(self, pruner: Pruner) -> None:
        self.pruner = pruner
        self.accumulates = True

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.pruner.set_total_steps(state.max_steps)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if self.accumulates:
            self.pruner.accumulate()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.pruner.step(state.global_step)


def write_pruner_state(state: dict[str, Any], checkpoint: Path) -> None:
    """Write a pruner state into ``checkpoint`` (write then rename: an interrupt never leaves a truncated file)."""
    checkpoint.mkdir(parents=True, exist_ok=True)
    partial = checkpoint / f"{PRUNER_STATE_NAME}.partial"
    torch.save(state, partial)
    os.replace(partial, checkpoint / PRUNER_STATE_NAME)


def checkpoint_is_complete(checkpoint: Path, needs_pruner_state: bool) -> bool:
    """Whether ``checkpoint`` holds everything a resume reads: trainer state, weights and (pruning) pruner state.

    transformers writes ``trainer_state.json`` after the weights, optimizer and RNG states, so its presence means
    those are complete. FSDP's sharded state dicts are torch.distributed.checkpoint folders
    (``pytorch_model_fsdp_0``), whose ``.metadata`` is written last.
    """
    has_weights = (any(checkpoint.glob("*.safetensors")) or any(checkpoint.glob("pytorch_model*.bin"))
                   or any(checkpoint.glob("pytorch_model_fsdp_*/.metadata")))  # fmt: skip
    has_state = (checkpoint / "trainer_state.json").is_file()
    return has_weights and has_state and (not needs_pruner_state or (checkpoint / PRUNER_STATE_NAME).is_file())


def last_complete_checkpoint(
    output_dir: str | os.PathLike, needs_pruner_state: bool
) -> tuple[Path | None, list[Path]]:
    """The newest complete ``checkpoint-N`` in ``output_dir`` and the newer, incomplete ones it skipped."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None, []
    steps = []
    for entry in folder.iterdir():
        prefix, _, number = entry.name.partition("-")
        if prefix == "checkpoint" and number.isdigit() and entry.is_dir():
            steps.append((int(number), entry))
    skipped = []
    for _, checkpoint in sorted(steps, reverse=True):
        if checkpoint_is_complete(checkpoint, needs_pruner_state):
            return checkpoint, skipped
        skipped.append(checkpoint)
    return None, skipped


def load_pruner_state(path: Path) -> dict[str, Any]:
    """``torch.load`` of a pruner state with tensors only; a damaged file gets an error that says so."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError for damaged files
        raise HfPruneError(
            f"{path} is damaged or not a pruner state written by hfprune ({type(err).__name__}). Resume from an "
            "earlier checkpoint (resume_from_checkpoint=<output_dir>/checkpoint-N), or delete this checkpoint "
            "folder and resume with resume_from_checkpoint=True to use the newest complete one."
        ) from None


def check_teacher_compatible(student: nn.Module, teacher: nn.Module) -> None:
    """Raise a `ConfigError` if teacher and student predict different labels or read different vocabularies."""
    student_config, teacher_config = getattr(student, "config", None), getattr(teacher, "config", None)
    if student_config is None or teacher_config is None:
        return
    for attribute in ("num_labels", "vocab_size"):
        mine, theirs = getattr(student_config, attribute, None), getattr(teacher_config, attribute, None)
        if mine is not None and theirs is not None and mine != theirs:
            raise ConfigError(
                f"Teacher and student differ in {attribute}: student {mine}, teacher {theirs}. Distillation needs "
                "a teacher fine-tuned on the same task with the same tokenizer."
            )
    student_labels = getattr(student_config, "label2id", None) or {}
    teacher_labels = getattr(teacher_config, "label2id", None) or {}
    # Default names (LABEL_0, ...) carry no meaning, so only two sets of real names can disagree.
    named = all(
        labels and not all(str(label).startswith("LABEL_") for label in labels)
        for labels in (student_labels, teacher_labels)
    )
    if named and student_labels != teacher_labels:
        raise ConfigError(
            f"Teacher and student label sets differ: student {student_labels}, teacher {teacher_labels}."
        )


#: Soft movement's score learning rate times its ramp length: 5e-2 over a 600-step ramp takes MiniLM on SST-2 to
#: 85 % sparsity where the paper's 1e-2 stops at 36 % (benchmarks/results/glue_fine_pruning.json).
SOFT_MOVEMENT_LR_TIMES_RAMP = 30.0
#: Hard movement's scores need this many steps of learning before they rank weights better than their sizes.
SHORT_MOVEMENT_RAMP = 5000


#: With the magnitude prior, movement adds to a score at this many times the pace at which the weights themselves
#: move (score lr = kappa x weight lr / mean |W|): kappa 1 would be gradual magnitude with masked weights moving on,
#: and the paper's 1e-2 is kappa ~9 on MiniLM. On MiniLM SST-2 at 10 % remaining (1,000 steps, KD) kappa 3 gave
#: 79.24 %, kappa 9 78.33 %, gradual magnitude 78.56 % (benchmarks/results/fine_pruning_sweep.json).
MAGNITUDE_PRIOR_KAPPA = 3.0


def default_score_learning_rate(pruner: Pruner, weight_learning_rate: float | None = None) -> float:
    """The score learning rate `PruningTrainer` uses when none is given.

    - Magnitude-prior init (``init="magnitude"``) with ``weight_learning_rate``: ``3 x weight lr / mean |W|`` of
      the pruned weights (`MAGNITUDE_PRIOR_KAPPA`), so movement adds to the prior at three times the weights' pace.
    - Soft movement with a sigmoid threshold: ``30 / ramp steps`` when larger than 1e-2, so that scores can cross
      the threshold within a short ramp.
    - Otherwise 1e-2 (Sanh et al.).
    """
    importance, schedule = pruner.config.importance, pruner.schedule
    if getattr(importance, "init", None) == "magnitude" and weight_learning_rate:
        with torch.no_grad():
            weights = [get_raw_weight(module).detach().abs() for module in pruner.modules.values()]
            mean = float(sum(w.float().sum() for w in weights) / sum(w.numel() for w in weights))
        return MAGNITUDE_PRIOR_KAPPA * weight_learning_rate / max(mean, 1e-12)
    ramp = int(getattr(schedule, "end_step", 0)) - int(getattr(schedule, "start_step", 0))
    if importance.learned and not importance.follows_sparsity and ramp > 0:  # type: ignore[union-attr]
        return max(1e-2, SOFT_MOVEMENT_LR_TIMES_RAMP / ramp)
    return 1e-2


def warn_short_movement_ramp(pruner: Pruner) -> None:
    """Warn when hard movement with the paper's constant score init ends its ramp early (see `MovementImportance`)."""
    importance, schedule = pruner.config.importance, pruner.schedule
    end = int(getattr(schedule, "end_step", 0))
    if (importance.learned and importance.follows_sparsity and getattr(importance, "init", None) == "constant"  # type: ignore[union-attr]
            and 0 < end < SHORT_MOVEMENT_RAMP):  # fmt: skip
        warnings.warn(
            f"{importance.registered_name} pruning with constant score init reaches its final sparsity at step "  # type: ignore[union-attr]
            f"{end}: scores learned over fewer than {SHORT_MOVEMENT_RAMP} steps rank weights by their recent "
            "movement only and can remove full-size weights together (hfprune measured MiniLM on SST-2 falling to "
            f"chance). For short runs use importance={{'type': '{importance.registered_name}', 'init': "  # type: ignore[union-attr]
            "'magnitude'} (magnitude prior plus movement), or a longer run.",
            HfPruneWarning,
            stacklevel=3,
        )


def refuse_sharded_pruning(pruner: Pruner | None, fsdp_version: int | None, zero_stage: int | None) -> None:
    """Refuse the sharded setups pruning cannot follow: FSDP1 and DeepSpeed ZeRO-3. FSDP2
    (``fsdp_config={"version": 2}``) and DeepSpeed ZeRO-2 are supported (ZeRO-1 is accepted, untested).

    FSDP1 flattens a module's parameters into one and ZeRO-3 replaces each with an empty placeholder outside its
    forward: the masks, parametrizations of each weight, would see neither whole."""
    if pruner is None:
        return
    fix = (
        "FSDP2 (TrainingArguments(fsdp=True, fsdp_config={'version': 2, ...}), or fsdp_version: 2 in accelerate's "
        "config), DDP (accelerate launch --multi_gpu), or train without a pruning_config."
    )
    if fsdp_version == 1:
        raise ConfigError(
            "PruningTrainer does not prune under FSDP1: FSDP1 flattens each module's parameters into one, which "
            f"masks cannot follow. Use {fix}"
        )
    if zero_stage is not None and zero_stage >= 3:
        raise ConfigError(
            "PruningTrainer does not prune under DeepSpeed ZeRO-3: ZeRO-3 replaces each parameter with an empty "
            'placeholder outside its forward, which masks cannot follow. Use ZeRO-2 ("stage": 2 in the DeepSpeed '
            f"config), {fix}"
        )


class PruningTrainer(Trainer):
    """`transformers.Trainer` with pruning and knowledge distillation.

    Args:
        model (`PreTrainedModel`): The student, pruned in place.
        args (`TrainingArguments`): Usual training arguments.
        pruning_config (`PruningConfig`, *optional*): What to prune and on which schedule. ``None`` trains dense
            (useful for the teacher, or plain distillation).
        teacher_model (`nn.Module`, *optional*): A dense teacher; frozen and put in eval mode.
        distillation_config (`DistillationConfig`, *optional*): KD settings; defaults to `DistillationConfig()` when
            a teacher is given.
        score_learning_rate (`float`, *optional*): Learning rate of learned pruning scores (movement), in their own
            optimizer group without weight decay and clipped apart from the weights. Default
            (`default_score_learning_rate`): 1e-2, the movement-pruning paper's value; with the magnitude-prior init,
            ``3 x learning_rate / mean |W|``; for soft movement with its sigmoid threshold, ``30 / ramp steps`` when
            that is larger.
        bn_l1 (`float`, defaults to 0.0): Shorthand for ``regularizers=[BatchNormL1(bn_l1)]``: an L1 penalty on
            BatchNorm scales (network slimming), so that ``bn_scale`` channel pruning afterwards finds channels the
            network learned to switch off.
        regularizers (`Sequence[Regularizer]`, *optional*): Penalties added to the training loss
            (`hfprune.regularizers`), each logged under its ``log_name``.
        **kwargs: Everything else `Trainer` takes (``train_dataset``, ``eval_dataset``, ``processing_class``,
            ``data_collator``, ``compute_metrics``, ``callbacks``, ...).

    Example:
        ```python
        trainer = PruningTrainer(
            model=student, args=args, train_dataset=train, eval_dataset=dev,
            pruning_config=PruningConfig(importance="movement", sparsity=0.9,
                                         schedule=CubicSchedule(start_step=500, end_step=5000, every=10)),
            teacher_model=teacher, distillation_config=DistillationConfig(temperature=2.0, alpha=0.9),
        )
        trainer.train()
        trainer.save_pruned_model("out")   # zeros made permanent, scores dropped, report + configs written
        ```
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: Any = None,
        *,
        pruning_config: PruningConfig | None = None,
        teacher_model: nn.Module | None = None,
        distillation_config: DistillationConfig | None = None,
        score_learning_rate: float | None = None,
        bn_l1: float = 0.0,
        regularizers: Sequence[Regularizer] = (),
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ConfigError("PruningTrainer needs a model instance (model_init is not supported).")
        self.pruning_config = pruning_config
        self.pruner: Pruner | None = None
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if pruning_config is not None:
            self.pruner = Pruner(model, pruning_config)
            # Masks and scores exist before the optimizer and before any checkpoint is loaded.
            self.pruner.attach_()
            self.pruner.step(0)
            self._pruning_callback = PruningCallback(self.pruner)
            callbacks.append(self._pruning_callback)
        if teacher_model is not None:
            check_teacher_compatible(model, teacher_model)
        elif distillation_config is not None:
            raise ConfigError("distillation_config was given without a teacher_model.")
        self.distillation_config = distillation_config or (DistillationConfig() if teacher_model is not None else None)
        self.score_learning_rate = None if score_learning_rate is None else float(score_learning_rate)
        self.regularizers = list(regularizers) + ([BatchNormL1(float(bn_l1))] if bn_l1 else [])
        self._penalties = [(regularizer.log_name, regularizer.bind(model)) for regularizer in self.regularizers]
        super().__init__(model=model, args=args, callbacks=callbacks, **kwargs)
        # Each process's task loss is its batch's mean, like the distillation and penalty terms added to it. With
        # loss kwargs, transformers multiplies the task loss by the number of processes (and skips dividing it by
        # the accumulation steps) for the models that divide by a global count themselves, but BERT's heads ignore
        # that count: the task term would weigh N times the distillation term on N processes.
        self.model_accepts_loss_kwargs = False
        fsdp_version = self.accelerator.state.fsdp_plugin.fsdp_version if self.is_fsdp_enabled else None
        zero_stage = self.accelerator.state.deepspeed_plugin.zero_stage if self.is_deepspeed_enabled else None
        refuse_sharded_pruning(self.pruner, fsdp_version, zero_stage)
        if zero_stage is not None and self.pruner is not None and self.pruner.accumulates_gradients:
            ds_config = self.accelerator.state.deepspeed_plugin.deepspeed_config
            if self.args.fp16 or str(ds_config.get("fp16", {}).get("enabled")).lower() == "true":
                raise ConfigError(
                    f"PruningTrainer does not score with {self.pruner.config.importance.registered_name!r} under "  # type: ignore[union-attr]
                    "DeepSpeed fp16: the gradients it reads from DeepSpeed's partitions are still loss-scaled, and "
                    "the steps DeepSpeed skips on overflow would add inf to the statistics. Train in bf16 or fp32, "
                    "or use movement (learned scores), or FSDP2 or DDP."
                )
            # DeepSpeed's engine steps the optimizer inside backward (and frees the gradients into its partitions):
            # gradient statistics are folded in just before that step (`training_step`), not in the callback.
            self._pruning_callback.accumulates = False
        scores = self.pruner.score_parameters() if self.pruner is not None else []
        if zero_stage is not None and scores and self.args.max_grad_norm:
            warnings.warn(
                "Under DeepSpeed, learned scores are clipped together with the weights (DeepSpeed clips all gradients "
                "in one norm): a unit's score gradient sums thousands of weights' terms, so it sets the shared norm "
                "and shrinks every weight update. PruningTrainer clips them apart elsewhere. Set max_grad_norm=0 "
                "(gradient_clipping 0 in the DeepSpeed config), or use FSDP2 or DDP.",
                HfPruneWarning,
                stacklevel=2,
            )
        self._fsdp_version = fsdp_version
        #: Under FSDP2, an unsharded copy of the model on the meta device, filled on rank 0 by `save_pruned_model`.
        self._copy_on_meta = shapes_only_copy(model) if fsdp_version == 2 else None
        self.teacher_model = teacher_model
        if teacher_model is not None:
            teacher_model.eval().requires_grad_(False).to(self.args.device)
            if fsdp_version == 2:
                self._shard_teacher(teacher_model)
        self._loss_sums: dict[str, float] = defaultdict(float)
        self._loss_count = 0

    def _shard_teacher(self, teacher: nn.Module) -> None:
        """Shard the teacher with FSDP2 on the student's mesh and settings: a teacher as large as the student would
        otherwise be whole on every rank. Its layers are found by its own ``_no_split_modules`` and the class names
        configured for the student; accelerate's own preparation is not used, as it would resolve the shared wrap
        policy for the teacher's classes and then wrap the student by them. The teacher is never saved."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        plugin = self.accelerator.state.fsdp_plugin
        mesh = getattr(self.accelerator, "torch_device_mesh", None)
        if mesh is not None:
            mesh = mesh[tuple(self.accelerator.parallelism_config.fsdp_dim_names)]
        shard_frozen_(
            teacher, set(plugin.transformer_cls_names_to_wrap or ()), mesh=mesh,
            reshard_after_forward=plugin.reshard_after_forward,
            mp_policy=plugin.mixed_precision_policy or MixedPrecisionPolicy(),
        )  # fmt: skip

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Tensor:
        """`Trainer.training_step`; under DeepSpeed with a gradient criterion, the engine's optimizer step first
        folds the gradients into the pruner's statistics (DeepSpeed steps inside ``backward``, before any callback,
        and keeps gradients in its own partitions until then)."""
        wraps_step = self.is_deepspeed_enabled and self.pruner is not None and self.pruner.accumulates_gradients
        engine = self.accelerator.deepspeed_engine_wrapped.engine if wraps_step else None  # what accelerate steps
        if engine is not None and not getattr(engine, "_hfprune_accumulates", False):
            step, pruner = engine.step, self.pruner

            def accumulate_then_step(*args: Any, **kwargs: Any) -> Any:
                if engine.is_gradient_accumulation_boundary():
                    pruner.accumulate()  # every rank: whole gradients are assembled from partitions
                return step(*args, **kwargs)

            engine.step = accumulate_then_step
            engine._hfprune_accumulates = True
        return super().training_step(model, inputs, num_items_in_batch)

    # --------------------------------------------------------------------------------------------- optimizer
    def _clip_grad_norm(self, model: nn.Module) -> Any:
        # Score gradients are sums over whole units (a head sums thousands of weights' terms): clipped together
        # with the weights' gradients they would set the shared norm and shrink every weight update. Each group is
        # clipped to max_grad_norm on its own; the weights' norm is what gets logged.
        scores = self.pruner.score_parameters() if self.pruner is not None else []
        # DeepSpeed clips inside its engine (see the warning in __init__); FSDP1 with scores is refused.
        if not scores or self.is_deepspeed_enabled:
            return super()._clip_grad_norm(model)
        score_ids = {id(param) for param in scores}
        weights = [param for param in model.parameters() if id(param) not in score_ids]
        norm = self.accelerator.clip_grad_norm_(weights, self.args.max_grad_norm)  # unscales fp16 gradients too
        torch.nn.utils.clip_grad_norm_(scores, self.args.max_grad_norm)
        return norm

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        scores = self.pruner.score_parameters() if self.pruner is not None else []
        if self.pruner is not None and self.optimizer is None:
            # train() knows the run's length by now (state.max_steps): resolve a schedule given in shares of the
            # run before the score learning rate, which may depend on the ramp, goes into the optimizer.
            if self.state.max_steps:
                self.pruner.set_total_steps(self.state.max_steps)
            warn_short_movement_ramp(self.pruner)
            if self.score_learning_rate is None:
                self.score_learning_rate = default_score_learning_rate(self.pruner, self.args.learning_rate)
        if self.optimizer is None and scores:
            opt_model = self.model if model is None else model
            score_ids = {id(param) for param in scores}
            decay = set(self.get_decay_parameter_names(opt_model))
            named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad and id(p) not in score_ids]
            groups = [
                {"params": [p for n, p in named if n in decay], "weight_decay": self.args.weight_decay},
                {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
                {"params": scores, "weight_decay": 0.0, "lr": self.score_learning_rate},
            ]
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return super().create_optimizer(model)

    # --------------------------------------------------------------------------------------------- loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ):  # noqa: ANN201 - same return as Trainer.compute_loss
        distil = self.teacher_model is not None and model.training
        config = self.distillation_config
        if distil and config is not None and config.needs_hidden_states:
            inputs = {**inputs, "output_hidden_states": True}
        task_loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        loss = task_loss
        terms: dict[str, Tensor] = {}
        if distil:
            targets = ("labels", "start_positions", "end_positions")
            teacher_inputs = {key: value for key, value in inputs.items() if key not in targets}
            with torch.no_grad():
                teacher_outputs = self.teacher_model(**teacher_inputs)
            mask = inputs.get("attention_mask")
            terms = distillation_loss(
                task_loss,
                head_logits(outputs, mask),
                head_logits(teacher_outputs, mask),
                config,  # type: ignore[arg-type]
                student_hidden=outputs.get("hidden_states"),
                teacher_hidden=teacher_outputs.get("hidden_states"),
            )
            loss = terms.pop("loss")
        if self.pruner is not None and model.training:
            regularization = self.pruner.regularization_loss()
            if regularization is not None:
                terms["regularization_loss"] = regularization
                loss = loss + regularization
        if model.training:
            for name, penalty in self._penalties:
                terms[name] = penalty()
                loss = loss + terms[name]
        if model.training and terms:
            for name, value in terms.items():
                self._loss_sums[name] += float(value.detach())
            self._loss_count += 1
        return (loss, outputs) if return_outputs else loss

    # --------------------------------------------------------------------------------------------- logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add loss terms (averaged since the last log) and pruning state (sparsity, threshold, lambda)."""
        if "loss" in logs:
            if self._loss_count:
                # Averaged over processes, as transformers does for "loss": every process logs, so all take part.
                names = sorted(self._loss_sums)
                means = torch.tensor([self._loss_sums[name] / self._loss_count for name in names], dtype=torch.float64)
                means = means.to(self.args.device)
                if self.args.world_size > 1:
                    means = self.accelerator.gather(means).reshape(self.args.world_size, len(names)).mean(0)
                logs.update({name: round(float(mean), 6) for name, mean in zip(names, means, strict=True)})
                self._loss_sums.clear()
                self._loss_count = 0
            if self.pruner is not None:
                for name, value in self.pruner.metrics().items():
                    logs[f"pruning/{name}"] = round(value, 6) if math.isfinite(value) else value
        super().log(logs, start_time)

    # --------------------------------------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        # The pruner state goes in first: transformers deletes older checkpoints (save_total_limit) at the end of
        # _save_checkpoint, so a kill after that must find it in the new one. A kill before trainer_state.json is
        # written leaves the new checkpoint incomplete, and resuming falls back to the previous complete one.
        # Under FSDP the state is a collective (learned scores are gathered from their shards): every rank builds it.
        if self.pruner is not None and (self.args.should_save or self.is_fsdp_enabled):
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            state = self.pruner.state_dict()
            if self.args.should_save:
                folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                write_pruner_state(state, folder)
        super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Checkpoints are read back by this trainer's resume, key by key (parametrized, masked weights included),
        # so they are written under the names the modules have. transformers 5 would otherwise convert them back
        # to an older layout (ViT's attention.attention.query for attention.q_proj), which the resume does not
        # convert forward again: the weights would silently not load.
        models = {id(m): m for m in (self.model, self.accelerator.unwrap_model(self.model, keep_torch_compile=False))}
        patched = [m for m in models.values() if hasattr(m, "save_pretrained")]
        for model in patched:
            model.save_pretrained = functools.partial(type(model).save_pretrained, model, save_original_format=False)
        try:
            super()._save(output_dir, state_dict)
        finally:
            for model in patched:
                model.__dict__.pop("save_pretrained", None)

    # --------------------------------------------------------------------------------------------- resume
    def _resolve_checkpoint(self, resume_from_checkpoint: str | bool) -> str:
        needs_state = self.pruner is not None
        if resume_from_checkpoint is True:
            checkpoint, skipped = last_complete_checkpoint(self.args.output_dir, needs_state)
            if checkpoint is None:
                found = f" (incomplete: {', '.join(p.name for p in skipped)})" if skipped else ""
                raise HfPruneError(f"No complete checkpoint found in {self.args.output_dir} to resume from{found}.")
            if skipped:
                warnings.warn(
                    f"Resuming from {checkpoint.name}: the newer {', '.join(p.name for p in skipped)} "
                    "are incomplete (the run was stopped while saving them).",
                    HfPruneWarning,
                    stacklevel=3,
                )
            return str(checkpoint)
        checkpoint = Path(resume_from_checkpoint)
        if not checkpoint.is_dir():
            raise HfPruneError(f"Checkpoint {checkpoint} does not exist or is not a folder.")
        if needs_state and not (checkpoint / PRUNER_STATE_NAME).is_file():
            earlier, _ = last_complete_checkpoint(checkpoint.parent, needs_state)
            hint = f" The newest complete checkpoint there is {earlier}." if earlier is not None else ""
            raise HfPruneError(
                f"Checkpoint {checkpoint} has no {PRUNER_STATE_NAME}: it was not written by a PruningTrainer with a "
                f"pruning_config, or the run was stopped while saving it, so masks and schedule cannot be "
                f"restored.{hint}"
            )
        return str(checkpoint)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):  # noqa: ANN201
        """`Trainer.train`, restoring the pruner's masks, scores, statistics and schedule step when resuming.

        ``resume_from_checkpoint=True`` takes the newest *complete* checkpoint (a run killed while saving leaves
        an incomplete one, skipped with a warning). The checkpoint must have been written with the same
        `PruningConfig`.
        """
        if resume_from_checkpoint not in (None, False):
            resume_from_checkpoint = self._resolve_checkpoint(resume_from_checkpoint)
            if self.pruner is None:
                self._refuse_pruning_checkpoint(Path(resume_from_checkpoint))
            if self.pruner is not None:
                state = load_pruner_state(Path(resume_from_checkpoint) / PRUNER_STATE_NAME)
                self._check_same_config(state, resume_from_checkpoint)
                self.pruner.load_state_dict(state)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _refuse_pruning_checkpoint(self, checkpoint: Path) -> None:
        """A checkpoint written while pruning cannot resume without its pruner: its optimizer has the score group
        (torch would only say "different number of parameter groups") and its masks would be dropped."""
        if not (checkpoint / PRUNER_STATE_NAME).is_file():
            return
        saved = load_pruner_state(checkpoint / PRUNER_STATE_NAME).get("config")
        try:
            fields = PruningConfig().differences(PruningConfig.from_dict(saved)) if saved is not None else {}
            described = ", ".join(f"{name}={theirs!r}" for name, (_, theirs) in sorted(fields.items()))
        except ConfigError:
            described = ""
        raise ConfigError(
            f"Checkpoint {checkpoint} was written by a PruningTrainer with a pruning config"
            f"{f' (PruningConfig({described}))' if described else ''}, but this trainer has none: its masks, scores "
            "and optimizer groups cannot be restored. Build the PruningTrainer with that pruning_config to resume, "
            "or start a new run in a new output_dir."
        )

    def _check_same_config(self, state: dict[str, Any], checkpoint: str) -> None:
        saved = state.get("config")
        if saved is None or self.pruning_config is None:
            return
        try:
            differences = self.pruning_config.differences(PruningConfig.from_dict(saved))
        except ConfigError as err:
            raise HfPruneError(f"The pruning config saved in {checkpoint} cannot be read: {err}") from None
        if differences:
            listed = "; ".join(f"{name}: checkpoint {theirs!r}, now {mine!r}" for name, (mine, theirs) in
                               sorted(differences.items()))  # fmt: skip
            raise ConfigError(
                f"Checkpoint {checkpoint} was written with a different pruning config ({listed}). Resume with the "
                "config it was written with, or start a new run in a new output_dir."
            )

    # --------------------------------------------------------------------------------------------- export
    def save_pruned_model(  # noqa: ANN201
        self,
        output_dir: str | os.PathLike,
        example_inputs: Any = None,
        overwrite: bool = False,
        evaluation: Any = None,
        method_notes: Sequence[str] = (),
    ):
        """Make the masks permanent, drop learned scores, and write the model with its configs and report.

        The folder is an ordinary checkpoint of the architecture (zeros in the weights), written atomically, plus
        ``pruning_config.json``, ``distillation_config.json``, ``report.json`` and a model card. With a heads/neurons
        structure the model is compacted first and ``pruning_plan.json`` is written: reload with
        `hfprune.load_pruned`. ``evaluation`` (a `hfprune.hub.CardEvaluation`) and ``method_notes`` go into the
        model card. Every process makes the masks permanent; only the main process writes. Under FSDP2 every process
        gathers the whole model (a collective: call it on every rank), rank 0 saves it, and the trainer's own
        sharded model keeps its masks.

        ``output_dir`` must be new, empty, or (with ``overwrite=True``) an earlier hfprune output: a folder holding
        anything else, such as ``args.output_dir`` with its checkpoints, is refused before anything changes. Save
        next to the checkpoints instead, e.g. ``f"{args.output_dir}/pruned"``.
        """
        from .compaction import compact_
        from .hub import check_output_directory, save_pruned
        from .reporting import report

        # Before the masks are merged: a refused folder must leave the trainer able to save elsewhere. Every rank
        # hears rank 0's verdict and stops with it, rather than merging alone or waiting in a gather for rank 0.
        refusal: list[Exception | None] = [None]
        if self.is_world_process_zero():
            try:
                check_output_directory(output_dir, overwrite=overwrite)
            except HfPruneError as err:
                refusal[0] = err
        if self.args.world_size > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(refusal)
        if refusal[0] is not None:
            raise refusal[0]
        model = self.accelerator.unwrap_model(self.model)
        # Heads/neurons are removed physically; the plan saved with the weights rebuilds the shapes on load.
        plan = self.pruner.plan() if self.pruner is not None and self.pruner.structured else None
        if self._fsdp_version == 2 and any(is_sharded(param) for param in model.parameters()):
            # FSDP2: every rank gathers, rank 0 saves an unsharded copy; the trainer's model keeps its masks.
            model = gather_into(model, shapes_only_copy(self._copy_on_meta))  # a fresh copy for each save
            if model is not None:
                merge_masks_(model)
        elif self.pruner is not None:
            self.pruner.make_permanent_()
        if model is not None and plan is not None:
            compact_(model, plan)
        if not self.is_world_process_zero():
            return None
        pruning_config = self.pruning_config or PruningConfig(sparsity=0.0)
        result = report(
            model,
            example_inputs,
            measure_latency=False,
            target_modules=pruning_config.target_modules,
            exclude_modules=pruning_config.exclude_modules,
        )
        path = save_pruned(
            model,
            output_dir,
            pruning_config=pruning_config,
            report=result,
            tokenizer=self.processing_class,
            overwrite=overwrite,
            extra_configs=(self.distillation_config,) if self.distillation_config is not None else (),
            plan=plan,
            evaluation=evaluation,
            method_notes=method_notes,
        )
        return path
