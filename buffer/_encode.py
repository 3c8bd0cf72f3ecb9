"""Byte-identical, faster stand-in for :func:`agent.records.encode_record` on the append path.

orjson serialises a ``slots=True`` dataclass about half as fast as a dict literal, and encoding
is one of the two large costs of an append. So, per record class, this module generates (as
:mod:`dataclasses` itself does) a function that builds the dict literal in field order and hands
it to orjson. It never guesses: the first record of every class is encoded both ways, and a class
whose output differs in any byte (say ``encode_record`` gains an orjson option) uses
``encode_record`` from then on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from agent.records import PRIORITIES, Event, Record, encode_record

__all__ = ["Kind", "RecordEncoder"]

Encoder = Callable[[Any], bytes]


class Kind(NamedTuple):
    encode: Encoder
    priority: int | None
    """The class's priority; None where each record has its own (an event's is its severity's)."""


def _generated_encoder(cls: type[Any]) -> Encoder | None:
    if not dataclasses.is_dataclass(cls):
        return None
    names = [f.name for f in dataclasses.fields(cls)]
    if not names or not all(n.isidentifier() for n in names):
        return None
    items = ", ".join(f"{n!r}: record.{n}" for n in names)
    source = f"def encode(record):\n    return dumps({{{items}}})\n"
    namespace: dict[str, Any] = {"dumps": orjson.dumps}
    # Field names are identifiers (checked above), so the generated code is just attribute reads.
    exec(source, namespace)  # noqa: S102
    encoder: Encoder = namespace["encode"]
    return encoder


class RecordEncoder:
    """Maps a record class to its encoder and priority; ``encoder(record)`` equals
    ``encode_record(record)`` for every record."""

    __slots__ = ("kinds",)

    def __init__(self) -> None:
        self.kinds: dict[type[Any], Kind] = {}
        """Hot loops read this dict directly to save a call per record."""

    def __call__(self, record: Record) -> bytes:
        kind = self.kinds.get(type(record))
        if kind is None:
            kind = self.learn(record)
        return kind.encode(record)

    def learn(self, record: Record) -> Kind:
        priority = record.priority
        if priority not in PRIORITIES:
            raise ValueError(f"record priority {priority} is not one of {PRIORITIES}")
        reference = encode_record(record)
        fast = _generated_encoder(type(record))
        chosen: Encoder = encode_record
        if fast is not None:
            try:
                if fast(record) == reference:
                    chosen = fast
            except (TypeError, AttributeError, orjson.JSONEncodeError):
                pass
        kind = Kind(chosen, None if isinstance(record, Event) else priority)
        self.kinds[type(record)] = kind
        return kind
