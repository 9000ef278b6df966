"""hfprune: pruning for the Hugging Face ecosystem."""

__version__ = "0.1.0"

from .compaction import PlanMismatchError, PruningPlan, compact_
from .config import PruningConfig
from .distillation import DistillationConfig, kd_loss
from .errors import (
    ConfigError,
    HfPruneError,
    HfPruneWarning,
    MissingDataError,
    NoPrunableModulesError,
    UnsupportedArchitectureError,
)
from .hub import load_pruned
from .importance import (
    FisherImportance,
    L2MagnitudeImportance,
    MagnitudeImportance,
    MovementImportance,
    RandomImportance,
    SoftMovementImportance,
    SynFlowImportance,
    TaylorImportance,
    WandaImportance,
)
from .lottery import LotteryConfig, find_lottery_ticket
from .pruner import Pruner, prune_
from .reporting import PruningReport, compare_reports, report
from .schedules import ConstantSchedule, CubicSchedule, LinearSchedule
from .structured import plan_structured
from .structures import NM, Blocks, Heads, HeadsAndNeurons, Neurons, Stripes, Unstructured


__all__ = [
    "Blocks",
    "ConfigError",
    "FisherImportance",
    "Heads",
    "HeadsAndNeurons",
    "NM",
    "Neurons",
    "PlanMismatchError",
    "PruningPlan",
    "ConstantSchedule",
    "CubicSchedule",
    "DistillationConfig",
    "HfPruneError",
    "HfPruneWarning",
    "L2MagnitudeImportance",
    "LotteryConfig",
    "LinearSchedule",
    "MagnitudeImportance",
    "MissingDataError",
    "MovementImportance",
    "NoPrunableModulesError",
    "Pruner",
    "PruningCallback",
    "PruningTrainer",
    "PruningConfig",
    "PruningReport",
    "RandomImportance",
    "SoftMovementImportance",
    "Stripes",
    "SynFlowImportance",
    "TaylorImportance",
    "UnsupportedArchitectureError",
    "WandaImportance",
    "Unstructured",
    "__version__",
    "compact_",
    "compare_reports",
    "find_lottery_ticket",
    "load_pruned",
    "plan_structured",
    "kd_loss",
    "prune_",
    "report",
]


def __getattr__(name: str):
    # The trainer pulls in transformers.Trainer (accelerate, datasets, pandas: ~2 s and ~300 MB); one-shot pruning
    # and loading do not need it, so it is imported on first use.
    if name in ("PruningTrainer", "PruningCallback"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'hfprune' has no attribute {name!r}")
