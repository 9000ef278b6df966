"""Which modules get pruned: `target_modules` / `exclude_modules` matching with PEFT's semantics.

- a ``str`` is a regular expression that must match the whole module name (``re.fullmatch``);
- a list of strings matches a module whose name equals an entry or ends with ``"." + entry``.

Per-module sparsity overrides use the list semantics, plus ``"re:<regex>"`` keys for full-match regexes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from .errors import ConfigError, NoPrunableModulesError


PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def _suffix_match(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def matches(name: str, spec: str | Sequence[str] | None) -> bool:
    """Whether module ``name`` is selected by ``spec`` (regex string, or list of names/suffixes)."""
    if spec is None:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(_suffix_match(name, pattern) for pattern in spec)


def check_module_patterns(name: str, value: str | Sequence[str] | None, regex_prefix: str | None = None) -> None:
    """Refuse a module-selecting regex that does not compile, naming ``name`` (the option), the pattern and the
    problem. ``value`` is one regex, or (with ``regex_prefix``, e.g. ``"re:"``) keys of which those that start with
    the prefix are regexes; other strings are names."""
    patterns = [value] if isinstance(value, str) and regex_prefix is None else []
    if regex_prefix is not None and value is not None:
        patterns = [key[len(regex_prefix):] for key in value if isinstance(key, str) and key.startswith(regex_prefix)]
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ConfigError(
                f"{name} {pattern!r} is not a valid regular expression: {err}. Escape special characters with a "
                r"backslash (e.g. '\[' for a literal '['), or use e.g. '.*attention.*'."
            ) from None


def override_matches(name: str, key: str) -> bool:
    """Whether a `sparsity_overrides` key (``"re:<regex>"`` or a name/suffix) selects ``name``."""
    if key.startswith("re:"):
        return re.fullmatch(key[3:], name) is not None
    return _suffix_match(name, key)


def resolve_targets(
    model: nn.Module,
    target_modules: str | Sequence[str],
    exclude_modules: str | Sequence[str] | None = None,
) -> dict[str, nn.Module]:
    """The prunable modules of ``model`` selected by ``target_modules`` and not by ``exclude_modules``.

    Raises:
        NoPrunableModulesError: nothing prunable matched; the message lists what the model contains.
    """
    selected: dict[str, nn.Module] = {}
    matched_unsupported: list[str] = []
    for name, module in model.named_modules():
        if not name or not matches(name, target_modules) or matches(name, exclude_modules):
            continue
        if isinstance(module, PRUNABLE_TYPES):
            selected[name] = module
        elif getattr(module, "weight", None) is not None and not list(module.children()):
            matched_unsupported.append(f"{name} ({type(module).__name__})")
    if not selected:
        candidates = [name for name, module in model.named_modules() if isinstance(module, PRUNABLE_TYPES)]
        if not candidates:
            raise NoPrunableModulesError(
                f"{type(model).__name__} has no prunable layers (hfprune prunes "
                f"{', '.join(t.__name__ for t in PRUNABLE_TYPES)} weights)."
            )
        hint = (
            f" It matched only unsupported modules: {', '.join(matched_unsupported[:5])}."
            if matched_unsupported
            else ""
        )
        raise NoPrunableModulesError(
            f"target_modules={target_modules!r} (exclude_modules={exclude_modules!r}) matched no prunable module of "
            f"{type(model).__name__}.{hint} Prunable modules look like: {', '.join(candidates[:6])}"
            f"{' ...' if len(candidates) > 6 else ''}. A string is a full-match regex; a list matches names or "
            "dotted suffixes."
        )
    return selected


def resolve_overrides(names: Iterable[str], overrides: Mapping[str, float]) -> dict[str, float]:
    """Per-module sparsity from ``overrides`` (first matching key wins); keys that match nothing raise."""
    result: dict[str, float] = {}
    names = list(names)
    for key in overrides:
        if not any(override_matches(name, key) for name in names):
            raise ConfigError(
                f"sparsity_overrides key {key!r} matches none of the pruned modules (e.g. {', '.join(names[:4])}). "
                "Use a module name, a dotted suffix, or 're:<regex>'."
            )
    for name in names:
        for key, value in overrides.items():
            if override_matches(name, key):
                result[name] = value
                break
    return result


def require_real_weights(model: nn.Module, action: str) -> None:
    """Refuse a model whose weights are on the ``meta`` device: they have shapes but no values, so scores, masks
    and plans computed from them would be meaningless (and would be returned without any error).

    Args:
        model (`nn.Module`): The model an entry point was given.
        action (`str`): What was asked, for the message (e.g. ``"prune_"``).

    Raises:
        ConfigError: some parameter or buffer is on the meta device.
    """
    tensors = [*model.named_parameters(), *model.named_buffers()]
    on_meta = [name for name, tensor in tensors if tensor.is_meta]
    if on_meta:
        raise ConfigError(
            f"{action} needs the model's weights, but {len(on_meta)} of its {len(tensors)} parameters and buffers "
            f"(e.g. {', '.join(on_meta[:3])}) are on the meta device: they have shapes but no values, as when a "
            "model is built under accelerate's init_empty_weights or loaded with device_map='meta'. Load the real "
            "weights first (from_pretrained without device_map='meta', or load_state_dict(..., assign=True)), then "
            f"call {action} again."
        )
