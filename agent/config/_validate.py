"""Typed validation: the devices union from the driver registry, and pydantic's errors rewritten
into plain installer language at the right line and column."""

from __future__ import annotations

import datetime
import enum
import functools
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, Field, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

import drivers
from agent.config._yaml import Source
from agent.config.errors import ConfigIssue, PathKey, did_you_mean, known_hint
from agent.config.models import EVENT_TYPE, IDENT, AgentConfig, DeviceConfig

__all__ = [
    "agent_model",
    "device_model",
    "issues_from",
    "show",
]

Path_ = tuple[PathKey, ...]

_PATTERN_HINTS = {
    IDENT: "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
    r"^\d{12}$": (
        'must be the 12-digit statistical division code (统计用区划代码), e.g. "350102001001"'
    ),
    r"^\d{20}$": 'must be a 20-digit GB/T 28181 code, e.g. "35010200001907000001"',
    r"^https?://[^\s/]+(/\S*)?$": (
        "must be an http:// or https:// address, e.g. https://platform.example.gov.cn/api"
    ),
    EVENT_TYPE: "must be a dotted lowercase event type such as door.forced_open",
}

_KINDS_OF_VALUE = {
    "float_type": "a number",
    "int_type": "a whole number",
    "bool_type": "true or false",
    "string_type": "text",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
}


def device_model(driver: str) -> type[DeviceConfig] | None:
    """The device model of a registered driver (imported now, checked against the contract);
    None for a name the registry does not know."""
    spec = drivers.DRIVERS.get(driver)
    return None if spec is None else _device_model(driver, spec.config)


@functools.cache
def _device_model(name: str, where: str) -> type[DeviceConfig]:
    # Keyed by where the model lives too (``where``), so a registry changed by a test is seen.
    model = drivers.config_model(name)
    del where
    if not (isinstance(model, type) and issubclass(model, DeviceConfig)):
        raise TypeError(f"driver {name!r}: config model {model!r} must subclass DeviceConfig")
    field = model.model_fields.get("driver")
    if field is None or _literal_values(field.annotation) != (name,):
        raise TypeError(f"driver {name!r}: {model.__name__} must declare driver: Literal[{name!r}]")
    return model


def agent_model(names: Sequence[object]) -> type[AgentConfig]:
    """``AgentConfig`` whose ``devices`` is the union of the models of the drivers ``names``
    mentions (the ``driver`` values of a file): a driver no device names is never imported.
    A name the registry does not know is reported from the registry, not from this union."""
    registered = [n for n in names if isinstance(n, str) and n in drivers.DRIVERS]
    wanted = set(registered)
    if len(registered) < len(names):
        # A missing or unknown driver: validate against every driver, as the messages expect.
        wanted = set(drivers.DRIVERS)
    models = (device_model(n) for n in sorted(wanted))
    return _agent_model(tuple(m for m in models if m is not None))


class _Unnamed(DeviceConfig):
    """Second member of a union that names one driver: pydantic discriminates only unions."""

    driver: Literal[""]


def _tagged_union(models: tuple[type[DeviceConfig], ...]) -> Any:
    # Built at run time from the registry, so no static type can spell it.
    members = models if len(models) > 1 else (*models, _Unnamed)
    return Annotated[Union[members], Field(discriminator="driver")]  # noqa: UP007


class _BuiltConfig(AgentConfig):
    """Base of the configurations built by :func:`_agent_model`: such a class exists only at
    run time, so pickle finds it again by the device models it was built from."""

    device_models: ClassVar[tuple[type[DeviceConfig], ...]] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (type(self).device_models, self.__getstate__()))


def _restore(models: tuple[type[DeviceConfig], ...], state: dict[Any, Any]) -> AgentConfig:
    cls = _agent_model(models)
    config = cls.__new__(cls)
    config.__setstate__(state)
    return config


@functools.cache
def _agent_model(models: tuple[type[DeviceConfig], ...]) -> type[AgentConfig]:
    if not models:
        return AgentConfig
    devices: Any = list[_tagged_union(models)]  # type: ignore[misc]
    default: Any = Field(default_factory=list)
    built: type[_BuiltConfig] = create_model(
        "AgentConfig",
        __base__=_BuiltConfig,
        __module__=AgentConfig.__module__,
        devices=(devices, default),
    )
    built.device_models = models
    return built


# --- walking a pydantic ``loc`` through the model types ------------------------------------------


def _strip(annotation: Any) -> Any:
    """Drop ``Annotated`` and ``| None`` wrappers."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if _is_union(annotation):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def _literal_values(annotation: Any) -> tuple[Any, ...]:
    annotation = _strip(annotation)
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return ()


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


class _Walk:
    """The data path of a ``loc`` (union tags removed) and the types met along it."""

    def __init__(self, root: type[BaseModel], loc: Sequence[PathKey]) -> None:
        self.path: list[PathKey] = []
        self.types: list[Any] = [root]
        """``types[i]`` is the type at ``path[:i]``."""
        self.union_member = False
        annotation: Any = root
        for element in loc:
            discriminator = _discriminator(annotation)
            annotation = _strip(annotation)
            if discriminator is not None:
                # A tagged union (the devices list) puts the tag ('simulated') in the loc. With
                # a single driver the union has collapsed into that driver's model.
                members = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
                tagged = [m for m in members if _tags(m, discriminator, element)]
                annotation = tagged[0] if tagged else Any
                self.types[-1] = annotation
                continue
            if _is_union(annotation):
                # A plain union reports each member under its own tag ('float', 'str').
                self.union_member = True
                annotation = Any
                self.types[-1] = annotation
                continue
            origin = typing.get_origin(annotation)
            args = typing.get_args(annotation)
            if isinstance(element, int) and origin in (list, tuple, set, frozenset) and args:
                annotation = args[0]
            elif origin in (dict, Mapping) and len(args) == 2:
                annotation = args[1]
            elif _is_model(annotation) and isinstance(element, str):
                field = annotation.model_fields.get(element)
                annotation = field.annotation if field is not None else Any
            else:
                annotation = Any
            self.path.append(element)
            self.types.append(annotation)

    @property
    def last(self) -> Any:
        return _strip(self.types[-1])

    @property
    def parent(self) -> Any:
        return _strip(self.types[-2]) if len(self.types) > 1 else None


def _discriminator(annotation: Any) -> str | None:
    if typing.get_origin(annotation) is Annotated:
        for meta in typing.get_args(annotation)[1:]:
            if isinstance(meta, FieldInfo) and isinstance(meta.discriminator, str):
                return meta.discriminator
    return None


def _tags(model: Any, discriminator: str, element: PathKey) -> bool:
    if not _is_model(model):
        return False
    field = model.model_fields.get(discriminator)
    return field is not None and element in _literal_values(field.annotation)


# --- messages -------------------------------------------------------------------------------------


def show(value: Any) -> str:
    """A value as an installer would recognise it from their YAML."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _choices(annotation: Any) -> list[Any]:
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [member.value for member in annotation]
    return list(_literal_values(annotation))


def _not_one_of(value: Any, choices: list[Any], fallback: str) -> str:
    listed = ", ".join(str(c) for c in choices) if choices else fallback
    message = f"{show(value)} is not one of {listed}"
    if isinstance(value, str):
        close = did_you_mean(value, [str(c) for c in choices])
        if close is not None:
            message += f" (did you mean {close!r}?)"
    return message


def _pattern(error: ErrorDetails) -> str:
    pattern = str(error.get("ctx", {}).get("pattern", ""))
    value = error["input"]
    hint = _PATTERN_HINTS.get(pattern)
    if hint is None:
        return f"{show(value)} does not have the expected form ({pattern})"
    got = f"got {show(value)}"
    if isinstance(value, str) and value.isdigit():
        got += f" ({len(value)} digits)"
    return f"{hint}; {got}"


def _text(error: ErrorDetails) -> str:
    value = error["input"]
    if isinstance(value, bool):
        return f"must be text; got {show(value)}: put the value in quotes"
    if isinstance(value, int | float):
        return f'must be text; put it in quotes: "{_number(value)}"'
    if isinstance(value, datetime.date):
        return f'must be text; put it in quotes: "{value.isoformat()}"'
    return f"must be text, got {show(value)}"


def _shape(kind: str, empty: str) -> Callable[[ErrorDetails], str]:
    def message(error: ErrorDetails) -> str:
        if error["input"] is None:
            return f"is empty: {empty}"
        return f"expected {kind}, got {show(error['input'])}"

    return message


def _length(error: ErrorDetails, *, at_least: bool) -> str:
    ctx = error.get("ctx", {})
    limit = int(ctx.get("min_length" if at_least else "max_length", 0))
    if error["type"].startswith("string"):
        if at_least and limit == 1:
            return "must not be empty"
        unit = "character" if limit == 1 else "characters"
    else:
        if at_least and limit == 1:
            return "needs at least one entry"
        unit = "entry" if limit == 1 else "entries"
    return f"needs {'at least' if at_least else 'at most'} {limit} {unit}"


def _bound(words: str, key: str) -> Callable[[ErrorDetails], str]:
    def message(error: ErrorDetails) -> str:
        limit = error.get("ctx", {}).get(key)
        return f"must be {words} {_number(limit)}, got {show(error['input'])}"

    return message


_SIMPLE: dict[str, Callable[[ErrorDetails], str]] = {
    "string_pattern_mismatch": _pattern,
    "string_type": _text,
    "int_parsing": lambda e: f"must be a whole number, got {show(e['input'])}",
    "int_type": lambda e: f"must be a whole number, got {show(e['input'])}",
    "int_from_float": lambda e: f"must be a whole number, got {show(e['input'])}",
    "float_parsing": lambda e: f"must be a number, got {show(e['input'])}",
    "float_type": lambda e: f"must be a number, got {show(e['input'])}",
    "finite_number": lambda e: f"must be a finite number, got {show(e['input'])}",
    "bool_parsing": lambda e: f"must be true or false, got {show(e['input'])}",
    "bool_type": lambda e: f"must be true or false, got {show(e['input'])}",
    "path_type": lambda e: f"must be a file path, got {show(e['input'])}",
    "greater_than": _bound("greater than", "gt"),
    "greater_than_equal": _bound("at least", "ge"),
    "less_than": _bound("less than", "lt"),
    "less_than_equal": _bound("at most", "le"),
    "multiple_of": _bound("a multiple of", "multiple_of"),
    "too_short": lambda e: _length(e, at_least=True),
    "string_too_short": lambda e: _length(e, at_least=True),
    "too_long": lambda e: _length(e, at_least=False),
    "string_too_long": lambda e: _length(e, at_least=False),
    "model_type": _shape("'key: value' entries", "expected 'key: value' entries below it"),
    "model_attributes_type": _shape(
        "'key: value' entries", "expected 'key: value' entries below it"
    ),
    "dict_type": _shape("'key: value' entries", "expected 'key: value' entries below it"),
    "list_type": _shape(
        "a list of '- ' entries", "expected '- ' entries below it (write [] for none)"
    ),
}

_PREFIXES = ("Value error, ", "Assertion failed, ")


def _plain(error: ErrorDetails) -> str:
    message = error["msg"]
    for prefix in _PREFIXES:
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message[:1].lower() + message[1:]


def _unknown_key(key: PathKey, model: Any) -> str:
    message = f"unknown key {key!r}"
    if not _is_model(model):
        return message
    known = list(model.model_fields)
    close = did_you_mean(str(key), known)
    if close is not None:
        return f"{message} (typo? did you mean {close!r}?)"
    if len(known) <= 10:
        return f"{message} (allowed: {', '.join(known)})"
    return message


def _unknown_driver(tag: str) -> str:
    return f"unknown driver {tag!r} {known_hint(tag, sorted(drivers.DRIVERS))}"


def _issue(error: ErrorDetails, root: type[BaseModel], source: Source) -> tuple[Path_, ConfigIssue]:
    """The issue for one pydantic error, and the path it is about (for grouping)."""
    walk = _Walk(root, error["loc"])
    path: Path_ = tuple(walk.path)
    kind = error["type"]
    if kind == "missing":
        parent, key = path[:-1], path[-1]
        return path, source.at(parent, f"missing required key {key!r}")
    if kind == "extra_forbidden":
        return path, source.at(path, _unknown_key(path[-1], walk.parent), source.key_mark(path))
    if kind == "union_tag_invalid":
        key = str(error.get("ctx", {}).get("discriminator", "'driver'")).strip("'")
        at = (*path, key)
        value = error["input"].get(key) if isinstance(error["input"], dict) else None
        if not isinstance(value, str):
            known = ", ".join(sorted(drivers.DRIVERS))
            return at, source.at(at, f"must be a driver name, got {show(value)} (known: {known})")
        return at, source.at(at, _unknown_driver(value))
    if kind == "union_tag_not_found":
        key = str(error.get("ctx", {}).get("discriminator", "'driver'")).strip("'")
        message = (
            f"missing required key {key!r} (known drivers: {', '.join(sorted(drivers.DRIVERS))})"
        )
        return path, source.at(path, message)
    if kind in ("literal_error", "enum"):
        fallback = str(error.get("ctx", {}).get("expected", ""))
        message = _not_one_of(error["input"], _choices(walk.last), fallback)
    elif kind in _SIMPLE:
        message = _SIMPLE[kind](error)
    else:
        message = _plain(error)
    return path, source.at(path, message)


def issues_from(exc: ValidationError, root: type[BaseModel], source: Source) -> list[ConfigIssue]:
    """Every error of ``exc`` as an installer-facing issue, except about values the YAML layer
    already rejected (they would be reported twice)."""
    issues: list[tuple[Path_, ConfigIssue]] = []
    members: dict[Path_, list[ErrorDetails]] = {}
    for error in exc.errors(include_url=False):
        walk = _Walk(root, error["loc"])
        if walk.union_member:
            members.setdefault(tuple(walk.path), []).append(error)
            continue
        issues.append(_issue(error, root, source))
    for path, errors in members.items():
        kinds = [_KINDS_OF_VALUE.get(e["type"]) for e in errors]
        if all(kinds):
            wanted = " or ".join(dict.fromkeys(k for k in kinds if k))
            message = f"must be {wanted}, got {show(errors[0]['input'])}"
            issues.append((path, source.at(path, message)))
        else:
            issues.extend(_issue(e, root, source) for e in errors)
    return [issue for path, issue in issues if path not in source.rejected]
