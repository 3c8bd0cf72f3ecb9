"""A deliberately tiny template language, so the page needs no template engine.

``{{ t:key }}`` is a catalog message, ``{{ name }}`` a value, both HTML-escaped; ``{{ !name }}``
inserts a value verbatim and is used only for fragments the server built itself (the page body,
JSON already made safe by :func:`agent.web.i18n.script_json`). Dynamic figures are filled in by
the page's script with ``textContent``, never as HTML.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Mapping
from importlib import resources

from agent.web.i18n import Catalog

__all__ = ["render", "template"]

_TAG = re.compile(r"\{\{\s*(t:|!)?([A-Za-z0-9_.\-]+)\s*\}\}")


@functools.cache
def template(name: str) -> str:
    return resources.files("agent.web").joinpath("templates", name).read_text("utf-8")


def render(name: str, catalog: Catalog, values: Mapping[str, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        marker, key = match.group(1), match.group(2)
        if marker == "t:":
            return html.escape(catalog.t(key))
        if key not in values:
            raise KeyError(f"template {name}: no value for {key!r}")
        value = values[key]
        return value if marker == "!" else html.escape(value)

    return _TAG.sub(fill, template(name))
