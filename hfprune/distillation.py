"""Knowledge distillation losses: pure torch, nothing from `transformers.Trainer`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import ConfigMixin
from .errors import ConfigError
from .field_types import coerce_fields


@dataclass
class DistillationConfig(ConfigMixin):
    """How a teacher's outputs are distilled into the student.

    ``loss = (1 - alpha) * task_loss + alpha * kd_loss + hidden_weight * hidden_loss``.

    Args:
        temperature (`float`, defaults to 2.0): Softmax temperature of the logit KD term (Hinton et al. 2015); the
            term is scaled by ``T^2`` so its gradients keep their size as T changes. Movement pruning uses 2.
        alpha (`float`, defaults to 0.9): Weight of the KD term; the task loss gets ``1 - alpha``. 0.9 is the
            movement-pruning paper's ``alpha_distil``.
        hidden_weight (`float`, defaults to 0.0): Weight of the mean-squared error between hidden states.
        hidden_layers (`list[int]`, *optional*): Indices into ``hidden_states`` (0 = embeddings) matched between
            student and teacher; ``None`` with ``hidden_weight > 0`` matches every layer. Student and teacher must
            have the same hidden size on those layers.
    """

    config_name = "distillation_config.json"

    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of the KD term."})
    alpha: float = field(default=0.9, metadata={"help": "Weight of the KD term (task loss gets 1 - alpha)."})
    hidden_weight: float = field(default=0.0, metadata={"help": "Weight of the hidden-state MSE term."})
    hidden_layers: list[int] | None = field(default=None, metadata={"help": "hidden_states indices to match."})

    def __post_init__(self) -> None:
        coerce_fields(self)  # hidden_layers [1.5] is refused, temperature "2" becomes 2.0
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0; got {self.temperature!r}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha (weight of the KD term) must be in [0, 1]; got {self.alpha!r}.")
        if self.hidden_weight < 0:
            raise ConfigError(f"hidden_weight must be >= 0; got {self.hidden_weight!r}.")

    @property
    def needs_hidden_states(self) -> bool:
        return self.hidden_weight > 0


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """Distillation loss between logits.

    Classification (more than one logit): ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged
    over the batch. Regression (one logit, e.g. STS-B): mean squared error, as there is no distribution to match.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ: "
            "teacher and student must predict the same labels."
        )
    if student_logits.shape[-1] == 1:
        return F.mse_loss(student_logits.float(), teacher_logits.float())
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(
        student_log_probs.reshape(-1, student_logits.shape[-1]),
        teacher_log_probs.reshape(-1, student_logits.shape[-1]),
        reduction="batchmean",
        log_target=True,
    )
    return kl * temperature**2


def hidden_state_loss(
    student_hidden: tuple[Tensor, ...], teacher_hidden: tuple[Tensor, ...], layers: list[int] | None = None
) -> Tensor:
    """Mean over the chosen layers of the MSE between student and teacher hidden states."""
    if layers is None:
        if len(student_hidden) != len(teacher_hidden):
            raise ConfigError(
                f"Student has {len(student_hidden)} hidden states and teacher {len(teacher_hidden)}; pass "
                "hidden_layers to choose which ones to match."
            )
        layers = list(range(len(student_hidden)))
    for index in layers:
        if not (
            -len(student_hidden) <= index < len(student_hidden) and -len(teacher_hidden) <= index < len(teacher_hidden)
        ):
            raise ConfigError(f"hidden_layers index {index} is out of range for {len(student_hidden)} hidden states.")
        if student_hidden[index].shape != teacher_hidden[index].shape:
            raise ConfigError(
                f"Hidden state {index}: student {tuple(student_hidden[index].shape)} vs teacher "
                f"{tuple(teacher_hidden[index].shape)}; the hidden-state loss needs equal widths."
            )
    return torch.stack([F.mse_loss(student_hidden[i].float(), teacher_hidden[i].float()) for i in layers]).mean()


def head_logits(outputs: Any, attention_mask: Tensor | None = None) -> list[Tensor]:
    """The logits distillation matches, as ``[rows, classes]`` tensors, for every head transformers has.

    Sequence classification: ``logits``. Token classification (``logits`` of ``[batch, tokens, classes]``): the
    real tokens' rows (``attention_mask``), padding left out. Extractive QA: ``start_logits`` and ``end_logits``,
    each a distribution over positions (as DistilBERT distils SQuAD), padded positions given no probability.
    """
    logits = outputs.get("logits") if hasattr(outputs, "get") else getattr(outputs, "logits", None)
    if logits is None:
        pair = [outputs.get(name) for name in ("start_logits", "end_logits")]
        if any(value is None for value in pair):
            raise ConfigError("The model returned neither logits nor start/end logits: nothing to distil.")
        if attention_mask is not None:
            # Padding is no answer position: a large finite negative (not -inf, whose 0 * inf would turn the KL into
            # NaN) gives it no probability in teacher and student alike, so it adds nothing to the KL.
            padding = ~attention_mask.bool()
            pair = [logits.masked_fill(padding, -1e4) for logits in pair]
        return pair  # type: ignore[return-value]
    if logits.dim() == 3 and attention_mask is not None:
        return [logits[attention_mask.bool()]]
    return [logits]


def distillation_loss(
    task_loss: Tensor | None,
    student_logits: Tensor | Sequence[Tensor],
    teacher_logits: Tensor | Sequence[Tensor],
    config: DistillationConfig,
    student_hidden: tuple[Tensor, ...] | None = None,
    teacher_hidden: tuple[Tensor, ...] | None = None,
) -> dict[str, Tensor]:
    """All loss terms and their weighted sum (key ``"loss"``). Logits may be lists (`head_logits`): the KD term is
    then the mean over the pairs (QA's start and end)."""
    students = [student_logits] if isinstance(student_logits, Tensor) else list(student_logits)
    teachers = [teacher_logits] if isinstance(teacher_logits, Tensor) else list(teacher_logits)
    kd = torch.stack([kd_loss(s, t, config.temperature) for s, t in zip(students, teachers, strict=True)]).mean()
    terms: dict[str, Tensor] = {"kd_loss": kd}
    if task_loss is not None:
        terms["task_loss"] = task_loss
        total = (1.0 - config.alpha) * task_loss + config.alpha * terms["kd_loss"]
    else:
        total = terms["kd_loss"]
    if config.needs_hidden_states:
        if student_hidden is None or teacher_hidden is None:
            raise ConfigError("hidden_weight > 0 needs output_hidden_states from student and teacher.")
        terms["hidden_loss"] = hidden_state_loss(student_hidden, teacher_hidden, config.hidden_layers)
        total = total + config.hidden_weight * terms["hidden_loss"]
    terms["loss"] = total
    return terms
