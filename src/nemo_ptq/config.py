"""Config dataclasses from YAML: the parser and the checks that `__post_init__` methods use.

It sits below every layer (params, data, backends, training) and imports none of them, so any of
them can validate its section the same way: unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from nemo_ptq.errors import ConfigError


def parse_dataclass(cls: type, values: Mapping[str, Any] | None, *, where: str) -> Any:
    """Build a (possibly nested) dataclass from YAML values; unknown or missing keys are errors."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        nested = _dataclass_type(fields[name].type, cls)
        if nested is not None and isinstance(value, Mapping):
            value = parse_dataclass(nested, value, where=f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required key is missing
        raise ConfigError(f"{where}: {err}") from None
    except ValueError as err:  # __post_init__ validation
        raise ConfigError(f"{where}: {err}") from None


def check_choices(config: Any, choices: Mapping[str, Iterable[str]]) -> None:
    """Config validation: each named field holds one of its valid values."""
    for key, valid in choices.items():
        if getattr(config, key) not in valid:
            raise ValueError(f"unknown {key} {getattr(config, key)!r}; choose one of: {', '.join(valid)}")


def check_flags(config: Any, names: Iterable[str]) -> None:
    """Config validation: each named field is a boolean (YAML `yes`/`1` would slip through otherwise)."""
    for name in names:
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be true or false")


def _dataclass_type(annotation: Any, owner: type) -> type | None:
    if isinstance(annotation, str):  # `from __future__ import annotations`: resolve in the owner's module
        annotation = getattr(sys.modules[owner.__module__], annotation, None)
    return annotation if dataclasses.is_dataclass(annotation) else None
