"""A tiny name -> class registry used for every pluggable part (importance, structure, schedule, adapter).

Registries are the only place where a string from a config file or the command line turns into a class.
That makes them an allow-list: loading JSON never imports arbitrary code.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from .errors import ConfigError, HfPruneWarning
from .field_types import coerce_fields, coerce_mapping


T = TypeVar("T")

#: True while loading a file written by a newer hfprune: unknown keys are then dropped with a warning instead of
#: refused (they are probably fields this version does not know, not typos).
_TOLERATE_UNKNOWN_KEYS = contextvars.ContextVar("hfprune_tolerate_unknown_keys", default=False)


@contextmanager
def tolerate_unknown_keys(enabled: bool = True) -> Iterator[None]:
    """Within the block, unknown config keys warn instead of raising (for files from newer versions)."""
    token = _TOLERATE_UNKNOWN_KEYS.set(enabled)
    try:
        yield
    finally:
        _TOLERATE_UNKNOWN_KEYS.reset(token)


def check_unknown_keys(where: str, given: Mapping[str, Any], known: set[str] | list[str]) -> list[str]:
    """Raise a `ConfigError` with a did-you-mean for keys of ``given`` not in ``known``; return them.

    Inside `tolerate_unknown_keys` they are only warned about, so a file from a newer version still loads.
    """
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return []
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), sorted(known), n=1)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    message = f"Unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints)} in {where}. Known: {sorted(known)}."
    if _TOLERATE_UNKNOWN_KEYS.get():
        warnings.warn(f"Ignoring: {message} (the file comes from a newer hfprune).", HfPruneWarning, stacklevel=3)
        return unknown
    raise ConfigError(message)


class Registry(Generic[T]):
    """Maps names to classes for one kind of component.

    Args:
        kind (`str`): What is registered, used in error messages (e.g. ``"importance"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, *names: str) -> Callable[[type[T]], type[T]]:
        """Class decorator registering ``cls`` under each of ``names`` (the first one is canonical)."""

        def decorator(cls: type[T]) -> type[T]:
            for name in names:
                if name in self._entries and self._entries[name] is not cls:
                    raise ValueError(f"{self.kind} name {name!r} is already registered to {self._entries[name]}")
                self._entries[name] = cls
            if not hasattr(cls, "registered_name") or cls.__dict__.get("registered_name") is None:
                cls.registered_name = names[0]  # type: ignore[attr-defined]
            return cls

        return decorator

    def get(self, name: str) -> type[T]:
        """Return the class registered as ``name``; unknown names raise a `ConfigError` with a suggestion."""
        key = name.strip().lower()
        if key in self._entries:
            return self._entries[key]
        message = f"Unknown {self.kind} {name!r}. Registered: {', '.join(self.names())}."
        close = difflib.get_close_matches(key, list(self._entries), n=1)
        if close:
            message += f" Did you mean {close[0]!r}?"
        raise ConfigError(message)

    def resolve(self, spec: T | str | Mapping[str, Any]) -> T:
        """Turn a name, a ``{"type": name, **fields}`` dict or an instance into an instance.

        This is the boundary where strings from configs and the CLI become objects; unknown fields in a dict are
        dropped with a warning so files written by newer versions still load.
        """
        if isinstance(spec, str):
            return self.get(spec)()
        if isinstance(spec, Mapping):
            if "type" not in spec:
                raise ConfigError(
                    f"A serialized {self.kind} needs a 'type' key naming one of {self.names()}; got {dict(spec)}."
                )
            fields = dict(spec)
            name = str(fields.pop("type"))
            cls = self.get(name)
            where = f"the {self.kind} section ({name})"
            if dataclasses.is_dataclass(cls):
                known = {f.name for f in dataclasses.fields(cls) if f.init}
                unknown = check_unknown_keys(where, fields, known)
                fields = coerce_mapping({k: v for k, v in fields.items() if k not in unknown}, cls, self.kind)
            try:
                return self.check(cls(**fields))
            except TypeError as err:
                raise ConfigError(f"Invalid fields for {self.kind} {cls.__name__}: {err}") from err
        if any(isinstance(spec, cls) for cls in self._entries.values()):
            return self.check(spec)
        raise ConfigError(
            f"Expected a {self.kind} name, dict or object (one of {self.names()}); got "
            f"{type(spec).__name__}: {spec!r}."
        )

    def check(self, component: T) -> T:
        """Coerce a component's fields to their declared types (``every: 2.0`` -> 2); refuse ``every: 2.5``.

        Components check themselves when built; this names the field by its config key (``importance.every``)
        and covers components whose fields were changed after construction."""
        if dataclasses.is_dataclass(component):
            coerce_fields(component, prefix=f"{self.kind}.")
            validate = getattr(component, "validate", None)
            if validate is not None:
                validate()  # re-validate with the coerced values
        return component

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def classes(self) -> list[type[T]]:
        """Each registered class once, in name order of their canonical names."""
        unique = {cls.registered_name: cls for cls in self._entries.values()}  # type: ignore[attr-defined]
        return [unique[name] for name in sorted(unique)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


class SerializableComponent:
    """Mixin for frozen dataclass components: ``to_dict`` writes ``{"type": registered_name, **fields}``."""

    registered_name: str | None = None

    def __post_init__(self) -> None:
        # Built in Python, a component is checked as one read from a file: `update_every=2.5` is refused, not
        # truncated later; `every=2.0` becomes 2.
        coerce_fields(self, prefix=f"{type(self).__name__}.")
        self.validate()

    def validate(self) -> None:
        """Range and consistency checks of the component's fields (their types are already right)."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.registered_name}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            data[field.name] = list(value) if isinstance(value, tuple) else value
        return data
