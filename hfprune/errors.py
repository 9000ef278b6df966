"""Exceptions and warnings raised by hfprune.

Every error also subclasses the matching builtin, so callers that already catch ``ValueError`` or
``TypeError`` keep working.
"""


class HfPruneError(Exception):
    """Base class of every error hfprune raises on purpose."""


class ConfigError(HfPruneError, ValueError):
    """A configuration value is invalid (out of range, unknown name, inconsistent fields)."""


class NoPrunableModulesError(HfPruneError, ValueError):
    """The target selection matched no module that hfprune can prune."""


class UnsupportedArchitectureError(HfPruneError, ValueError):
    """The model's architecture has no adapter and the user gave no explicit targets."""


class MissingDataError(HfPruneError, ValueError):
    """A method needs data (gradients, activations) and none was given."""


class HfPruneWarning(UserWarning):
    """Warnings emitted by hfprune."""
