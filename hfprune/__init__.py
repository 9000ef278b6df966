"""hfprune: pruning for the Hugging Face ecosystem."""

__version__ = "0.1.0"

from .config import PruningConfig
from .errors import (
    ConfigError,
    HfPruneError,
    HfPruneWarning,
    MissingDataError,
    NoPrunableModulesError,
    UnsupportedArchitectureError,
)
from .importance import L2MagnitudeImportance, MagnitudeImportance, RandomImportance, TaylorImportance
from .pruner import Pruner, prune_
from .reporting import PruningReport, compare_reports, report
from .schedules import ConstantSchedule, CubicSchedule, LinearSchedule
from .structures import Blocks, Unstructured


__all__ = [
    "Blocks",
    "ConfigError",
    "ConstantSchedule",
    "CubicSchedule",
    "HfPruneError",
    "HfPruneWarning",
    "L2MagnitudeImportance",
    "LinearSchedule",
    "MagnitudeImportance",
    "MissingDataError",
    "NoPrunableModulesError",
    "Pruner",
    "PruningConfig",
    "PruningReport",
    "RandomImportance",
    "TaylorImportance",
    "UnsupportedArchitectureError",
    "Unstructured",
    "__version__",
    "compare_reports",
    "prune_",
    "report",
]
