"""Checking and coercing config values against their dataclass field types.

Values reach configs from YAML, JSON and the command line, where ``5e-5`` is a string (YAML 1.1), ``2.5`` can land
in an integer field and ``"false"`` in a boolean one. `coerce` turns what a user plainly meant into the field's
type and refuses the rest with a message that names the key, so nothing is silently truncated.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from typing import Any, Literal, Union

from .errors import ConfigError


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
#: How each simple type is described in errors.
EXPECTED = {bool: "true or false", int: "an integer (e.g. 3)", float: "a number (e.g. 0.5 or 5e-5)", str: "a string"}


def _type_name(annotation: Any) -> str:
    return EXPECTED.get(annotation) or getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _fail(name: str, value: Any, expected: str) -> ConfigError:
    shown = "nothing (an empty value)" if value is None else f"{value!r} ({type(value).__name__})"
    return ConfigError(f"{name} must be {expected}; got {shown}.")


def _number(text: str) -> int | float | None:
    """``"3"`` -> 3, ``"5e-5"`` -> 5e-05 (YAML 1.1 reads exponents without a dot as strings), else ``None``."""
    for parse in (int, float):
        try:
            number = parse(text.strip())
        except ValueError:
            continue
        return number if math.isfinite(number) else None
    return None


def _coerce_scalar(value: Any, annotation: type, name: str, bool_as_str: bool) -> Any:
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _fail(name, value, EXPECTED[bool])
    if annotation in (int, float):
        number = _number(value) if isinstance(value, str) else value
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise _fail(name, value, EXPECTED[annotation])
        if annotation is int and isinstance(number, float):
            if not number.is_integer():
                raise _fail(name, value, EXPECTED[int])
            return int(number)
        # A float field keeps an int as it is: TrainingArguments tells 100 warm-up steps from a 0.1 ratio.
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool) and bool_as_str:
            return value  # TrainingArguments' str fields such as resume_from_checkpoint also take true
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # run_name: 2026
        raise _fail(name, value, EXPECTED[str])
    return value


class _NoMatch(Exception):
    pass


def coerce(value: Any, annotation: Any, name: str, *, bool_as_str: bool = False) -> Any:
    """Return ``value`` as the type ``annotation`` describes, or raise a `ConfigError` naming ``name``.

    Handles ``bool``, ``int``, ``float``, ``str``, enums, ``Literal``, ``X | None``, unions of those and
    ``list[X]``/``dict[str, X]``; any other annotation (component objects, classes) passes the value through.
    Integer fields take ``3``, ``"3"`` and ``3.0`` and refuse ``2.5``; float fields take numeric strings; bool
    fields take true/false, yes/no, 1/0. ``bool_as_str`` lets a bool through to a ``str`` field.
    """
    if isinstance(annotation, type) and annotation in EXPECTED:
        if value is None:
            raise _fail(name, value, EXPECTED[annotation])
        return _coerce_scalar(value, annotation, name, bool_as_str)
    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is object:
        return value
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if any(value == option and type(value) is type(option) for option in allowed):
            return value
        raise _fail(name, value, f"one of {list(allowed)}")
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None:
            if type(None) in options:
                return None
            raise _fail(name, value, " or ".join(_type_name(option) for option in options))
        concrete = [option for option in options if option is not type(None)]
        # An exact type match first, so that a str in "str | int" stays a str.
        for option in concrete:
            if isinstance(option, type) and type(value) is option:
                return value
        errors = []
        for option in concrete:
            try:
                return coerce(value, option, name, bool_as_str=bool_as_str)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise _fail(name, value, " or ".join(_type_name(option) for option in concrete))
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple):
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise _fail(name, value, "a list")
        if not args or origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
            return value  # fixed-length tuples are left to the config's own checks
        item = args[0]
        converted = [coerce(element, item, f"{name}[{index}]") for index, element in enumerate(value)]
        return type(value)(converted) if not isinstance(value, list) else converted
    if origin is dict or annotation is dict:
        args = typing.get_args(annotation)
        if not isinstance(value, dict):
            raise _fail(name, value, "a mapping")
        if len(args) != 2:
            return value
        return {coerce(key, args[0], f"{name} key"): coerce(item, args[1], f"{name}[{key!r}]")
                for key, item in value.items()}  # fmt: skip
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError:
            raise _fail(name, value, f"one of {[member.value for member in annotation]}") from None
    return value  # not a type this module knows: the receiving class's own validation has the last word


def field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved annotation}`` of a dataclass (string annotations resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def coerce_fields(instance: Any, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Coerce every init field of a (possibly frozen) dataclass instance in place; raise on a wrong type."""
    for name, annotation in field_types(type(instance)).items():
        if name in skip:
            continue
        value = getattr(instance, name)
        converted = coerce(value, annotation, f"{prefix}{name}")
        if converted is not value:
            object.__setattr__(instance, name, converted)


def coerce_mapping(data: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    """``data`` with each key coerced to the type of ``cls``'s field of that name (unknown keys kept as they are)."""
    types_ = field_types(cls)
    return {key: coerce(value, types_[key], f"{where}.{key}") if key in types_ else value
            for key, value in data.items()}  # fmt: skip
