"""Importance criteria: how much each weight matters. Higher score = keep.

An importance is a frozen dataclass (it is part of a config) plus a small state dict per pruned tensor that
the `Pruner` owns (it changes during training and is checkpointed). Criteria return one score per weight
element; `structures` reduces them to blocks, heads or channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import torch
from torch import Tensor

from .errors import ConfigError, MissingDataError
from .registry import Registry, SerializableComponent


class UnitStats(Protocol):
    """What one-shot head/neuron scoring gathers on demand (`hfprune.structured.UnitStatistics` implements it);
    each result is ``{kind: [layers, units]}``."""

    def weight_norms(self, p: int) -> dict[str, Tensor]: ...
    def random(self) -> dict[str, Tensor]: ...
    def mask_gradient_sums(self) -> dict[str, Tensor]: ...
    def mask_gradient_squares(self) -> dict[str, Tensor]: ...


class ChannelStats(Protocol):
    """What CNN channel scoring gathers on demand (`hfprune.channels.ChannelStatistics` implements it); each result
    is one score per output channel of each group."""

    def weight_norms(self, p: int) -> dict[str, Tensor]: ...
    def bn_scales(self) -> dict[str, Tensor]: ...
    def random(self) -> dict[str, Tensor]: ...
    def nonzero_rates(self) -> dict[str, Tensor]: ...
    def gradient_weight_products(self) -> dict[str, Tensor]: ...


IMPORTANCES: Registry[Importance] = Registry("importance")

#: What a criterion needs from a run, hence what the engines gather for it (and which data it requires).
NEEDS = ("weights", "seed", "gradients", "per_example_gradients", "activations", "learned_scores", "synaptic_flow")
#: Needs only calibration (or training) data can meet.
DATA_NEEDS = ("gradients", "per_example_gradients", "activations")
#: Needs met by backward passes.
GRADIENT_NEEDS = ("gradients", "per_example_gradients", "learned_scores")

#: Structure names, grouped by the engine that runs them: per-tensor masks (`Pruner`), encoder units (heads and
#: FFN neurons) and CNN channels.
PER_TENSOR_STRUCTURES = ("unstructured", "blocks", "stripes", "nm")
UNIT_STRUCTURES = ("heads", "neurons", "heads_and_neurons")
#: Fine-pruning structures that mix per-tensor blocks and units (`HybridBlocks`).
HYBRID_STRUCTURES = ("hybrid",)
CHANNEL_STRUCTURES = ("channels",)


@dataclass(frozen=True)
class Importance(SerializableComponent):
    """Base class of importance criteria.

    Subclasses set `needs` (from which `requires_grad` and `needs_data` follow) and implement `score` and the
    `unit_scores`/`channel_scores` of the structures they support.
    """

    #: What scoring needs (one of `NEEDS`): the engines gather exactly this, and refuse to run without the data.
    needs: ClassVar[str] = "weights"
    #: Scores are trainable parameters (movement pruning) rather than statistics.
    learned: ClassVar[bool] = False
    #: The unit scores are additive estimates of the loss increase, so a budget is met by Kwon et al.'s mask
    #: search over how many heads and neurons to keep (instead of one kept fraction for both).
    additive_unit_scores: ClassVar[bool] = False
    #: Structures some engine scores with this criterion; `PruningConfig` refuses any other pairing.
    supported_structures: ClassVar[tuple[str, ...]] = (
        PER_TENSOR_STRUCTURES + UNIT_STRUCTURES + HYBRID_STRUCTURES + CHANNEL_STRUCTURES
    )

    @property
    def requires_grad(self) -> bool:
        """Whether scoring needs backward passes (call `Pruner.accumulate` after each one)."""
        return self.needs in GRADIENT_NEEDS

    @property
    def needs_data(self) -> bool:
        """Whether scoring needs calibration batches (one-shot pruning refuses to run without them)."""
        return self.needs in DATA_NEEDS

    def init_state(self, weight: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-tensor state (accumulators, fixed random draws); empty for stateless criteria."""
        return {}

    def update(self, state: dict[str, Tensor], weight: Tensor, grad: Tensor) -> None:
        """Accumulate statistics after a backward pass; a no-op for data-free criteria."""

    def observe(self, state: dict[str, Tensor], inputs: Tensor) -> None:
        """Accumulate statistics of a pruned layer's input on a calibration batch (criteria that need
        ``activations``); a no-op for the others."""

    def score(self, state: dict[str, Tensor], weight: Tensor) -> Tensor:
        """Elementwise scores, same shape as ``weight``; larger means more important."""
        raise TypeError(f"{type(self).__name__} must implement score()")

    def unit_scores(self, stats: UnitStats) -> dict[str, Tensor]:
        """One-shot scores of every head and neuron (``{kind: [layers, units]}``) from what `needs` gathered."""
        raise ConfigError(unsupported_pair_message(self, "heads_and_neurons"))

    def wants_unit_interactions(self) -> bool:
        """Whether one-shot unit scoring should also gather each layer's per-example gradient products."""
        return False

    def channel_scores(self, stats: ChannelStats) -> dict[str, Tensor]:
        """One score per output channel of each CNN channel group, from what `needs` gathered."""
        raise ConfigError(unsupported_pair_message(self, "channels"))

    # Training hooks: a criterion that shapes training (soft movement) says how here; the Pruner and the trainer
    # call these for every criterion and know none of them.
    #: The kept count follows the schedule's sparsity (False: the criterion decides it, e.g. by a threshold).
    follows_sparsity: ClassVar[bool] = True

    def threshold(self, progress: float) -> float | None:
        """Score threshold at schedule ``progress`` (0 to 1) for criteria that keep units above one; else None."""
        return None

    def regularization_weight(self, progress: float) -> float | None:
        """Weight of the penalty on learned scores at ``progress`` (added to the loss); None when there is none."""
        return None


@IMPORTANCES.register("magnitude", "l1")
@dataclass(frozen=True)
class MagnitudeImportance(Importance):
    """Weight magnitude (Han et al. 2015). The ShrinkBench baseline.

    Args:
        p (`int`, defaults to 1): Norm used when elements are grouped into blocks or structures: scores are
            ``|w|^p``, summed per group. For unstructured pruning 1 and 2 give the same ranking.
    """

    p: int = 1

    def validate(self) -> None:
        if self.p not in (1, 2):
            raise ConfigError(f"MagnitudeImportance.p must be 1 (L1) or 2 (L2); got {self.p!r}.")

    def score(self, state: dict[str, Tensor], weight: Tensor) -> Tensor:
        return weight.detach().abs().float().pow(self.p)

    def channel_scores(self, stats: ChannelStats) -> dict[str, Tensor]:
        return stats.weight_norms(self.p)

    def unit_scores(self, stats: UnitStats) -> dict[str, Tensor]:
        # A unit's magnitude is that of every weight it owns (query/key/value rows and output columns of a head).
        return stats.weight_norms(self.p)


@IMPORTANCES.register("l2")
@dataclass(frozen=True)
class L2MagnitudeImportance(MagnitudeImportance):
    """`MagnitudeImportance` with ``p=2``: groups are ranked by their L2 norm."""

    p: int = 2


@IMPORTANCES.register("random")
@dataclass(frozen=True)
class RandomImportance(Importance):
    """Uniform random scores: the sanity baseline every criterion should beat.

    Scores are drawn once per tensor (seeded from `PruningConfig.seed`) and kept in the pruner state, so a gradual
    schedule removes nested sets of weights and a resumed run draws nothing new.
    """

    def init_state(self, weight: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"scores": torch.rand(weight.shape, generator=generator, dtype=torch.float32).to(weight.device)}

    needs: ClassVar[str] = "seed"

    def score(self, state: dict[str, Tensor], weight: Tensor) -> Tensor:
        return state["scores"]

    def unit_scores(self, stats: UnitStats) -> dict[str, Tensor]:
        return stats.random()

    def channel_scores(self, stats: ChannelStats) -> dict[str, Tensor]:
        return stats.random()


@IMPORTANCES.register("taylor", "gradient_weight", "snip")
@dataclass(frozen=True)
class TaylorImportance(Importance):
    """First-order Taylor estimate of the loss change when a weight is removed: ``|w * dL/dw|``.

    This is ShrinkBench's "gradient x weight" baseline (Molchanov et al. 2017). It is averaged over every backward
    pass seen by `Pruner.accumulate`, so give it a few batches of real data. Applied at initialization (before
    training) it is SNIP's connection sensitivity (Lee et al. 2019), hence the alias ``"snip"``.
    """

    needs: ClassVar[str] = "gradients"

    def init_state(self, weight: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"sum": torch.zeros_like(weight, dtype=torch.float32), "count": torch.zeros((), dtype=torch.long)}

    def unit_scores(self, stats: UnitStats) -> dict[str, Tensor]:
        # First-order loss change of removing the unit, accumulated over the data.
        return {kind: total.abs() for kind, total in stats.mask_gradient_sums().items()}

    def channel_scores(self, stats: ChannelStats) -> dict[str, Tensor]:
        return stats.gradient_weight_products()

    def update(self, state: dict[str, Tensor], weight: Tensor, grad: Tensor) -> None:
        state["sum"] += (weight.detach().float() * grad.detach().float()).abs()
        state["count"] += 1

    def score(self, state: dict[str, Tensor], weight: Tensor) -> Tensor:
        if int(state["count"]) == 0:
            raise ConfigError(
                "TaylorImportance has seen no gradients. Run forward/backward passes and call Pruner.accumulate(), "
                "or pass a dataloader to prune_()."
            )
        return state["sum"] / state["count"].float()


@IMPORTANCES.register("wanda")
@dataclass(frozen=True)
class WandaImportance(Importance):
    """Wanda (Sun et al. 2024): ``|W_ij| * ||X_j||_2``, a weight's magnitude times the norm of the input feature it
    multiplies over the calibration tokens. One-shot, no gradients, no weight update; with ``structure="nm"`` it
    gives N:M masks from a few batches of data. Linear layers only (`prune_` with a dataloader); the paper compares
    weights within each output row, hfprune within each tensor (and within each N:M group).
    """

    needs: ClassVar[str] = "activations"
    supported_structures: ClassVar[tuple[str, ...]] = PER_TENSOR_STRUCTURES

    def init_state(self, weight: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if weight.dim() != 2:
            raise ConfigError(
                f"Wanda scores the input features of linear layers; a weight of shape {tuple(weight.shape)} is not "
                "one. Target only nn.Linear modules."
            )
        return {"squares": torch.zeros(weight.shape[1], dtype=torch.float32, device=weight.device),
                "tokens": torch.zeros((), dtype=torch.long)}  # fmt: skip

    def observe(self, state: dict[str, Tensor], inputs: Tensor) -> None:
        flat = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        state["squares"] += flat.pow(2).sum(dim=0).to(state["squares"].device)
        state["tokens"] += flat.shape[0]

    def score(self, state: dict[str, Tensor], weight: Tensor) -> Tensor:
        if int(state["tokens"]) == 0:
            raise MissingDataError(
                "Wanda needs the inputs of the pruned layers: pass calibration batches to prune_(model, config, "
                "dataloader)."
            )
        return weight.detach().abs().float() * state["squares"].sqrt()[None, :]


@IMPORTANCES.register("synflow")
@dataclass(frozen=True)
class SynFlowImportance(Importance):
    """Iterative Synaptic Flow pruning (Tanaka et al. 2020): data-free pruning at initialization.

    A weight's score is ``|w * dR/dw|`` where ``R`` is the summed output of the network with every parameter replaced
    by its absolute value, fed one all-ones input (`hfprune.calibration.synaptic_flow_backward`). `prune_` prunes in
    ``iterations`` steps on an exponential schedule (kept share ``d**(k/iterations)`` for a final density ``d``),
    re-scoring the masked network each time: removing a weight lowers the flow through its neighbours, so a layer is
    never emptied while others keep weights (the paper's "layer collapse", which magnitude and SNIP suffer at
    extreme sparsity). The guarantee is over paths through weights: a bias (or BatchNorm shift) feeds flow past the
    layers before it, so a layer whose weights carry little flow next to its neighbours' biases can still empty.
    Use it with ``scope="global"``, as the paper does. One-shot only (`prune_`).

    Args:
        iterations (`int`, defaults to 100): Scoring-and-pruning rounds (the paper's 100).
        input_shape (`tuple[int, ...]`, *optional*): Shape of one input without the batch dimension, e.g.
            ``(3, 32, 32)``; default: the shape of the first batch of the dataloader given to `prune_` (only its
            shape is read).
    """

    needs: ClassVar[str] = "synaptic_flow"
    supported_structures: ClassVar[tuple[str, ...]] = PER_TENSOR_STRUCTURES
    iterations: int = 100
    input_shape: tuple[int, ...] | None = None

    def validate(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"SynFlow iterations must be >= 1; got {self.iterations}.")
        if self.input_shape is not None:  # a list from JSON/YAML: stored as the tuple it is, so configs compare equal
            object.__setattr__(self, "input_shape", tuple(self.input_shape))
        if self.input_shape is not None and (not self.input_shape or any(int(n) < 1 for n in self.input_shape)):
            raise ConfigError(
                f"input_shape is one input's shape without the batch dimension, e.g. (3, 32, 32); got "
                f"{self.input_shape!r}."
            )

    def init_state(self, weight: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"score": torch.zeros_like(weight, dtype=torch.float32), "passes": torch.zeros((), dtype=torch.long)}

    def update(self, state: dict[str, Tensor], weight: Tensor, grad: Tensor) -> None:
        # Each pass scores the network as it is now (masked weights score 0): the latest pass replaces the last.
        state["score"] = (weight.detach().double() * grad.detach().double()).abs().float()
        state["passes"] += 1

    def score(self, state: dict[str, Tensor], weight: Tensor) -> Tensor:
        if int(state["passes"]) == 0:
            raise ConfigError(
                "SynFlow scores a network at initialization, in one call: use hfprune.prune_(model, config) (it runs "
                "the data-free passes itself), not PruningTrainer or a Pruner in a training loop."
            )
        return state["score"]


@IMPORTANCES.register("movement", "hard_movement")
@dataclass(frozen=True)
class MovementImportance(Importance):
    """Hard movement pruning (Sanh, Wolf & Rush 2020): keep the top-k units by learned scores.

    Each pruned unit (weight or block) gets a score, a parameter trained with its own learning rate; the
    straight-through estimator gives it the gradient ``dL/dW' * W``, so weights that move away from zero during
    fine-tuning are kept. The number kept follows the schedule (``PruningConfig.sparsity``); masks are
    recomputed from the scores every ``update_every`` optimizer steps.

    Args:
        score_init (`float`, defaults to 0.0): Initial value of every score (the paper's constant init).
        init (`str`, defaults to ``"constant"``): ``"constant"`` starts every score at ``score_init``, as the paper
            does. ``"magnitude"`` starts each unit's score at its mean ``|W|`` over the mean of its matrix (about 1)
            and lets movement add to it: a hybrid of magnitude and movement pruning for short runs. With Adam, a
            score after t steps is about ``(score lr / weight lr) * sign(W) * (W_t - W_0)``: it carries no size
            information until the weights have moved far, so a top-k taken after a few hundred steps removes
            full-size weights and can collapse the network (see the README).
        update_every (`int`, defaults to 1): Recompute masks every this many steps. A top-k over all
            MiniLM encoder weights costs ~0.15 s on 2 CPU cores, so CPU runs use ~10.
    """

    needs: ClassVar[str] = "learned_scores"
    learned: ClassVar[bool] = True
    # Learned scores live in masks, which channel pruning (a one-shot dependency-graph plan) does not have.
    supported_structures: ClassVar[tuple[str, ...]] = PER_TENSOR_STRUCTURES + UNIT_STRUCTURES + HYBRID_STRUCTURES

    score_init: float = 0.0
    init: Literal["constant", "magnitude"] = "constant"
    update_every: int = 1

    def validate(self) -> None:
        if self.update_every < 1:
            raise ConfigError(f"update_every must be >= 1; got {self.update_every}.")

    def initial_scores(self, unit_magnitudes: Tensor) -> Tensor:
        """Every unit's first score, from its mean ``|W|`` (``unit_magnitudes``, one per unit)."""
        if self.init == "magnitude":
            return unit_magnitudes.float() / unit_magnitudes.float().mean().clamp_min(1e-12)
        return torch.full_like(unit_magnitudes, float(self.score_init), dtype=torch.float32)

    def score(self, state: dict[str, Tensor], weight: Tensor) -> Tensor:
        raise TypeError("Movement scores are learned parameters; the Pruner reads them from the mask.")


@IMPORTANCES.register("soft_movement")
@dataclass(frozen=True)
class SoftMovementImportance(MovementImportance):
    """Soft movement pruning: keep units whose ``sigmoid(score)`` exceeds a threshold, with an L1 penalty.

    The threshold ramps from ``initial_threshold`` to ``final_threshold`` and the penalty
    ``lambda * mean(sigmoid(scores))`` from 0 to ``final_lambda``, both on the config's schedule. Sparsity is not
    set directly: it emerges per layer from ``final_lambda`` (larger = sparser), which is what lets soft movement
    allocate sparsity unevenly across layers. ``PruningConfig.sparsity`` is not used for the masks.

    Args:
        initial_threshold (`float`, defaults to 0.0): Threshold at the start of the ramp.
        final_threshold (`float`, defaults to 0.1): Threshold at the end of the ramp (paper's value).
        final_lambda (`float`, defaults to 400.0): Weight of the L1 penalty at the end of the ramp.
        score_init (`float`, defaults to 0.0): Initial score (sigmoid 0.5, above any threshold < 0.5).
        update_every (`int`, defaults to 1): Recompute masks every this many steps (a comparison: cheap).
        min_density (`float`, defaults to 0.005): Each module keeps at least this fraction of its units (its
            highest scores), as in the paper's code, so the penalty cannot cut a layer off entirely.
        use_sparsity (`bool`, defaults to False): Aim at ``PruningConfig.sparsity`` (or its FLOPs/parameter
            target) instead of a fixed threshold: at each mask update the threshold is the score that keeps what
            the schedule asks for, over all pruned modules at once with ``scope="global"`` (so per-layer sparsities
            still emerge, as with a threshold), while the L1 penalty ramps as usual. The run then ends at the
            sparsity asked for, whatever ``final_lambda`` and the score learning rate.
    """

    # A threshold keeps any number of a group's weights, so it cannot hold an N:M pattern.
    supported_structures: ClassVar[tuple[str, ...]] = tuple(
        name for name in MovementImportance.supported_structures if name != "nm"
    )

    initial_threshold: float = 0.0
    final_threshold: float = 0.1
    final_lambda: float = 400.0
    min_density: float = 0.005
    use_sparsity: bool = False

    def validate(self) -> None:
        super().validate()
        for name in ("initial_threshold", "final_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} is a sigmoid threshold in [0, 1); got {value!r}.")
        if not 0.0 <= self.min_density <= 1.0:
            raise ConfigError(f"min_density must be in [0, 1]; got {self.min_density!r}.")
        if self.final_lambda < 0:
            raise ConfigError(f"final_lambda must be >= 0; got {self.final_lambda!r}.")

    @property
    def follows_sparsity(self) -> bool:  # type: ignore[override]
        return self.use_sparsity

    def threshold(self, progress: float) -> float | None:
        if self.use_sparsity:
            return None  # chosen at each update by the kept count the schedule asks for
        return self.initial_threshold + (self.final_threshold - self.initial_threshold) * progress

    def regularization_weight(self, progress: float) -> float | None:
        return self.final_lambda * progress


@IMPORTANCES.register("fisher")
@dataclass(frozen=True)
class FisherImportance(Importance):
    """Diagonal Fisher information of head and neuron masks (Michel et al. 2019; Kwon et al. 2022).

    For a mask ``m`` multiplying a head's (or neuron's) output, ``I = sum over examples of (dL_i/dm)^2`` estimates
    how much the loss grows when the unit is removed. hfprune computes it with hooks on the inputs of the attention
    output and FFN output projections (``dL/dm`` per example is ``sum over tokens of activation * gradient``), so it
    works with eager and sdpa attention alike. Only for the structured kinds (``heads``, ``neurons``,
    ``heads_and_neurons``); it needs labelled calibration data.

    Args:
        rearrange (`bool`, defaults to `True`): After the mask search, swap units within each layer while the
            layer's full (block-diagonal) Fisher predicts a smaller loss increase (Kwon et al.'s mask
            rearrangement).
    """

    needs: ClassVar[str] = "per_example_gradients"
    additive_unit_scores: ClassVar[bool] = True
    supported_structures: ClassVar[tuple[str, ...]] = UNIT_STRUCTURES
    rearrange: bool = True

    def unit_scores(self, stats: UnitStats) -> dict[str, Tensor]:
        return stats.mask_gradient_squares()

    def wants_unit_interactions(self) -> bool:
        return self.rearrange

    def score(self, state: dict[str, Tensor], weight: Tensor) -> Tensor:
        raise ConfigError(
            "Fisher importance scores heads and neurons, not single weights: use structure='heads', 'neurons' or "
            "'heads_and_neurons'."
        )


@IMPORTANCES.register("bn_scale")
@dataclass(frozen=True)
class BNScaleImportance(Importance):
    """|gamma| of the BatchNorm after a convolution (network slimming, Liu et al. 2017); CNN channels only.

    Train with an L1 penalty on BN scales (``PruningTrainer(bn_l1=...)``) to push unimportant channels to zero.
    """

    supported_structures: ClassVar[tuple[str, ...]] = CHANNEL_STRUCTURES

    def score(self, state: dict[str, Tensor], weight: Tensor) -> Tensor:
        raise ConfigError("bn_scale scores CNN channels: use structure='channels'.")

    def channel_scores(self, stats: ChannelStats) -> dict[str, Tensor]:
        return stats.bn_scales()


@IMPORTANCES.register("apoz")
@dataclass(frozen=True)
class APoZImportance(Importance):
    """Average percentage of zeros of a channel's activation after ReLU (Hu et al. 2016), measured on data.

    A channel that is almost always zero contributes little; scores are ``1 - APoZ``. CNN channels only.
    """

    needs: ClassVar[str] = "activations"
    supported_structures: ClassVar[tuple[str, ...]] = CHANNEL_STRUCTURES

    def score(self, state: dict[str, Tensor], weight: Tensor) -> Tensor:
        raise ConfigError("apoz scores CNN channels: use structure='channels'.")

    def channel_scores(self, stats: ChannelStats) -> dict[str, Tensor]:
        return stats.nonzero_rates()


def unsupported_pair_message(importance: Importance, structure_name: str) -> str:
    """One message for every importance/structure pair no engine runs, generated from the registry."""
    name = importance.registered_name
    works_with = sorted(cls.registered_name for cls in IMPORTANCES.classes()  # type: ignore[attr-defined]
                        if structure_name in cls.supported_structures)  # fmt: skip
    return (
        f"Importance {name!r} cannot prune structure {structure_name!r}. {name!r} works with structure "
        f"{', '.join(repr(s) for s in sorted(importance.supported_structures))}; structure {structure_name!r} works "
        f"with importance {', '.join(repr(n) for n in works_with)}."
    )
