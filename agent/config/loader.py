"""Load and check a configuration (DESIGN.md section 7).

``load_config`` reads the YAML file and its includes, validates it against the typed models
(the devices union is assembled from the driver registry), runs the checks across entries, and
either returns the configuration or raises one :class:`ConfigError` listing every problem as
``file:line:col: path.to.key: message``. It does no network or device I/O and reads no secret.
"""

from __future__ import annotations

import collections
import gc
import pickle
from pathlib import Path
from typing import Any, TextIO, TypeVar

from pydantic import BaseModel, ValidationError

from agent.config._checks import cross_check
from agent.config._validate import agent_model, issues_from
from agent.config._yaml import Source, load_source
from agent.config.errors import ConfigError, ConfigIssue, PathKey
from agent.config.identity import gateway_code, resolved_code
from agent.config.models import AgentConfig

__all__ = ["check_config_command", "load_config"]

M = TypeVar("M", bound=BaseModel)


def load_config(path: Path | str) -> AgentConfig:
    """The validated configuration in ``path``, with every device's ``code`` filled in.

    Relative file paths in it (buffer, control socket, secrets, certificates) are made absolute
    against the directory of the YAML file they are written in, so the agent finds them whatever
    its working directory.
    """
    config, values = _load(str(path))  # Errors name the file as the installer typed it.
    if values < _COMPACT_FROM_VALUES:
        return config
    # Rebuilt from a pickle once everything the parse made is gone. The configuration's objects
    # were made among the parser's (nodes, marks, positions), and would keep that memory from
    # going back to the system: 4,000 points pinned 13 MB more than they use.
    frozen = pickle.dumps(config, pickle.HIGHEST_PROTOCOL)
    del config
    gc.collect()
    restored: AgentConfig = pickle.loads(frozen)  # noqa: S301 - made above, from our own objects
    return restored


_COMPACT_FROM_VALUES = 10_000
"""Below this many values (some 800 points) what the parser leaves behind is not worth a
collection."""


def _load(file: str) -> tuple[AgentConfig, int]:
    source = load_source(file)
    issues: list[ConfigIssue] = list(source.issues)
    if source.data is None:
        raise ConfigError(issues)
    raw_devices = source.data.get("devices") if isinstance(source.data, dict) else None
    named = (
        [d.get("driver") for d in raw_devices if isinstance(d, dict)]
        if isinstance(raw_devices, list)
        else []
    )
    model = agent_model(named)
    config: AgentConfig | None = None
    try:
        config = model.model_validate(source.data)
    except ValidationError as exc:
        issues += issues_from(exc, model, source)
    issues += cross_check(source, config)
    if issues or config is None:
        raise ConfigError(issues)
    config = _absolute_paths(config, (), source)
    devices = [d.model_copy(update={"code": resolved_code(config, d)}) for d in config.devices]
    gateway = config.gateway.model_copy(update={"code": gateway_code(config.gateway)})
    return config.model_copy(update={"devices": devices, "gateway": gateway}), source.values


def _absolute(value: Any, path: tuple[PathKey, ...], source: Source) -> Any:
    if isinstance(value, Path) and not value.is_absolute():
        return Path(source.mark(path).file).parent.absolute() / value
    if isinstance(value, BaseModel):
        return _absolute_paths(value, path, source)
    if isinstance(value, list):
        items = [_absolute(item, (*path, i), source) for i, item in enumerate(value)]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


def _absolute_paths(model: M, path: tuple[PathKey, ...], source: Source) -> M:
    update: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        new = _absolute(value, (*path, name), source)
        if new is not value:
            update[name] = new
    return model.model_copy(update=update) if update else model


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def check_config_command(path: str, out: TextIO, err: TextIO) -> int:
    """``edge-agent check-config``: 0 and a summary on ``out``, or 1 and every error on ``err``.

    Reads only the YAML files: no network, no serial port, no secret.
    """
    try:
        config = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=err)
        print(f"{path}: {_plural(len(exc.issues), 'error')}", file=err)
        return 1
    community = config.gateway.community
    name = f" ({community.name})" if community.name else ""
    by_driver = collections.Counter(device.driver for device in config.devices)
    drivers = ", ".join(f"{driver}: {count}" for driver, count in sorted(by_driver.items()))
    devices = _plural(len(config.devices), "device") + (f" ({drivers})" if drivers else "")
    print(
        f"{path}: OK - gateway {config.gateway.id}, community {community.code}{name}, "
        f"{_plural(len(config.buses), 'bus', 'buses')}, {devices}",
        file=out,
    )
    return 0
