"""YAML to plain data, remembering where every key and value came from.

PyYAML's ``safe_load`` forgets positions and silently keeps the last of two equal keys. We
compose the node tree instead, build the data ourselves, and keep a map from each path
(``("devices", 2, "points", 5, "data_type")``) to its file, line and column.

Any input gets ``file:line:col`` issues, never a traceback, in bounded memory: a file is at most
:data:`MAX_FILE_BYTES`, all files of a configuration build at most :data:`MAX_VALUES` values
(YAML aliases count each time they are used, so a "billion laughs" stops at the budget instead
of expanding), nesting stops at :data:`MAX_DEPTH`, and control characters, bad tags (``!!int
abc``) and anything else a YAML reader can raise are reported where they are.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from agent.config.errors import ConfigIssue, Mark, PathKey

__all__ = ["INCLUDED_SECTIONS", "Source", "load_source"]

Path_ = tuple[PathKey, ...]

INCLUDED_SECTIONS = ("buses", "devices")
"""Top-level lists an included file may add to."""

MAX_FILE_BYTES = 4 * 2**20
"""A configuration file may be at most this large (16 times a 4,000-point file)."""
MAX_VALUES = 250_000
"""Values (mappings, lists, scalars) all files of a configuration may build, aliases counted at
each use: six times a 4,000-point configuration (about 55 MB at most)."""
MAX_DEPTH = 64
"""Nesting deeper than this is refused (no configuration key is nested beyond 8)."""


class _Budget:
    """What the files of one configuration may still build."""

    def __init__(self, values: int = MAX_VALUES) -> None:
        self.values = values


class _TooLargeError(Exception):
    def __init__(self, path: Path_) -> None:
        super().__init__()
        self.path = path


_SYNTAX_HINTS = {
    "expected <block end>, but found '<block mapping start>'": (
        "a line is indented more than the one before it: line up keys of the same level"
    ),
    "expected <block end>, but found '<block sequence start>'": (
        "a list item ('- ') is indented differently from the others: line them up"
    ),
    "expected <block end>, but found '-'": (
        "a list item ('- ') is indented differently from the others: line them up"
    ),
    "mapping values are not allowed here": (
        "a ':' where none was expected: check the indentation, or quote a value that contains ': '"
    ),
    "found character '\\t' that cannot start any token": "tabs cannot indent YAML: use spaces",
    "could not find expected ':'": "a key is missing its ':' or the indentation is off",
    "found a tab character that violates indentation": "tabs cannot indent YAML: use spaces",
}


@dataclasses.dataclass(slots=True)
class Source:
    """A configuration file (with its includes merged in) as plain data plus positions."""

    file: str
    data: Any = None
    marks: dict[Path_, Mark] = dataclasses.field(default_factory=dict)
    """Where each value starts."""
    key_marks: dict[Path_, Mark] = dataclasses.field(default_factory=dict)
    """Where the key of each mapping entry starts (unknown keys are reported there)."""
    issues: list[ConfigIssue] = dataclasses.field(default_factory=list)
    rejected: set[Path_] = dataclasses.field(default_factory=set)
    """Paths whose value the YAML layer already reported (a duplicate key, an unknown tag)."""
    origins: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    """For entries that came from an included file: (section, index here) -> index in the file
    that holds it, so paths in messages match what the installer sees in that file."""
    values: int = 0
    """Values built from this file and its includes (aliases counted at each use)."""

    def local(self, path: Path_) -> Path_:
        """``path`` with an included entry's index as it is in its own file."""
        if len(path) >= 2 and isinstance(path[0], str) and isinstance(path[1], int):
            index = self.origins.get((path[0], path[1]))
            if index is not None:
                return (path[0], index, *path[2:])
        return path

    def at(self, path: Path_, message: str, mark: Mark | None = None) -> ConfigIssue:
        """An issue about ``path``, at its own mark unless another is given."""
        return ConfigIssue.at(mark or self.mark(path), self.local(path), message)

    def mark(self, path: Path_) -> Mark:
        """The mark of ``path``, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            found = self.marks.get(path[:end])
            if found is not None:
                return found
        return Mark(self.file, 1, 1)

    def key_mark(self, path: Path_) -> Mark:
        return self.key_marks.get(path) or self.mark(path)


def _mark(file: str, mark: yaml.Mark | None) -> Mark:
    if mark is None:
        return Mark(file, 1, 1)
    return Mark(file, mark.line + 1, mark.column + 1)


class _Builder:
    def __init__(self, file: str, loader: yaml.SafeLoader, budget: _Budget) -> None:
        self.file = file
        self.loader = loader
        self.source = Source(file)
        self._budget = budget
        self._own_keys: dict[int, set[int]] = {}
        self._active: set[int] = set()

    def issue(self, mark: Mark, path: Path_, message: str) -> None:
        self.source.issues.append(ConfigIssue.at(mark, path, message))

    def build(self, node: yaml.Node, path: Path_) -> Any:
        mark = _mark(self.file, node.start_mark)
        self.source.marks.setdefault(path, mark)
        self._budget.values -= 1
        if self._budget.values < 0:
            raise _TooLargeError(path)
        if len(path) > MAX_DEPTH:
            self.source.rejected.add(path)
            # Named by where it starts to go deep, not by a path as long as the nesting.
            self.issue(mark, path[:8], f"nested more than {MAX_DEPTH} levels deep")
            return None
        if id(node) in self._active:
            self.source.rejected.add(path)
            self.issue(mark, path, "a YAML alias refers to the value that contains it")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return self._scalar(node, path, mark)
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: yaml.Node, path: Path_, mark: Mark) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            self.source.rejected.add(path)
            if node.tag.startswith("!") and not node.tag.startswith("!!"):
                self.issue(mark, path, f"unknown YAML tag {node.tag!r}: write the value plainly")
            else:
                self.issue(mark, path, f"invalid {node.tag.rsplit(':', 1)[-1]}: {exc.problem}")
            return None
        except Exception:
            # ValueError, KeyError, AttributeError… for an explicit tag on text that is not of
            # that type (``!!int abc``, ``!!bool 7``, ``!!timestamp soon``, ``!!float x``).
            self.source.rejected.add(path)
            kind = node.tag.rsplit(":", 1)[-1]
            text = str(node.value)[:40]
            self.issue(mark, path, f"!!{kind} {text!r} is not a valid {kind}: drop the tag")
            return None

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        if id(node) not in self._own_keys:
            # Keys written in this mapping, as opposed to those pulled in by a '<<' merge: only
            # the former can be duplicates (a merge is meant to be overridden).
            self._own_keys[id(node)] = {id(key) for key, _ in node.value}
            try:
                self.loader.flatten_mapping(node)
            except yaml.constructor.ConstructorError as exc:
                self.issue(_mark(self.file, exc.problem_mark), path, f"bad merge: {exc.problem}")
        own = self._own_keys[id(node)]
        result: dict[str, Any] = {}
        first_own: dict[str, Mark] = {}
        for key_node, value_node in node.value:
            key_mark = _mark(self.file, key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                self.issue(key_mark, path, "a key must be plain text, not a list or mapping")
                continue
            # The key's text as written: YAML 1.1 would turn keys such as 'on' or 'no' into
            # booleans and '1' into a number, which no configuration key means.
            key = str(key_node.value)
            child = (*path, key)
            if id(key_node) in own:
                if key in first_own:
                    self.source.rejected.add(child)
                    where = first_own[key]
                    self.issue(
                        key_mark,
                        child,
                        f"duplicate key {key!r} (first set on line {where.line}; "
                        "YAML would silently keep only the last one)",
                    )
                    continue
                first_own[key] = key_mark
            self.source.key_marks[child] = key_mark
            self.source.marks.pop(child, None)
            result[key] = self.build(value_node, child)
        return result


def _syntax_issue(file: str, exc: yaml.YAMLError) -> ConfigIssue:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = _mark(file, exc.problem_mark or exc.context_mark)
        problem = exc.problem or "unreadable YAML"
        message = f"YAML syntax error: {problem}"
        if exc.context:
            start = exc.context_mark
            if start is not None and exc.problem_mark is not None and start.line != mark.line - 1:
                # The parser notices a missing ']' or '}' only where the next thing starts.
                message += f" ({exc.context} started on line {start.line + 1})"
            else:
                message += f" ({exc.context})"
        hint = _SYNTAX_HINTS.get(problem)
        if hint:
            message += f" - {hint}"
        return ConfigIssue.at(mark, (), message)
    return ConfigIssue(file, 1, 1, "", f"YAML syntax error: {exc}")


def _read_text(file: str) -> str | ConfigIssue:
    try:
        with Path(file).open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return ConfigIssue(file, 1, 1, "", f"cannot read the file: {exc.strerror or exc}")
    if len(raw) > MAX_FILE_BYTES:
        return ConfigIssue(
            file,
            1,
            1,
            "",
            f"the file is larger than {MAX_FILE_BYTES // 2**20} MiB: split it into files "
            "joined with include:",
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return ConfigIssue(file, line, col, "", "the file is not UTF-8 text: save it as UTF-8")


# libyaml composes about ten times faster than the pure-Python parser (a 4,000-point config
# in 0.3 s instead of 4 s on a Pi-class CPU); its error messages are worded differently, so a
# file that fails is parsed again by the pure-Python parser, whose messages our hints follow.
_LOADERS: tuple[type[yaml.SafeLoader], ...] = tuple(
    dict.fromkeys((getattr(yaml, "CSafeLoader", yaml.SafeLoader), yaml.SafeLoader))
)


def _parse(file: str, budget: _Budget) -> Source:
    text = _read_text(file)
    if isinstance(text, ConfigIssue):
        return Source(file, issues=[text])
    for loader_class in _LOADERS:
        loader: yaml.SafeLoader | None = None
        try:
            try:
                # The pure-Python reader checks the characters as it is made.
                loader = loader_class(text)
                node = loader.get_single_node()
            except yaml.YAMLError as exc:
                if loader_class is not yaml.SafeLoader:
                    continue  # the pure-Python parser words it (and counts in characters)
                if isinstance(exc, yaml.reader.ReaderError):
                    return Source(file, issues=[_reader_issue(file, text, exc)])
                return Source(file, issues=[_syntax_issue(file, exc)])
            except RecursionError:
                return Source(file, issues=[_too_deep(file)])
            if node is None:
                return Source(file)
            builder = _Builder(file, loader, budget)
            try:
                builder.source.data = builder.build(node, ())
            except _TooLargeError as exc:
                # Named by the section that was being read: an alias there expands too far.
                section = exc.path[:1]
                where = builder.source.key_marks.get(section) or builder.source.mark(section)
                message = (
                    f"more than {MAX_VALUES:,} values (YAML aliases count at every use): "
                    "the configuration is too large"
                )
                return Source(file, issues=[ConfigIssue.at(where, section, message)])
            return builder.source
        finally:
            if loader is not None:
                loader.dispose()
    raise AssertionError("unreachable: the pure-Python loader always answers")


def _reader_issue(file: str, text: str, exc: yaml.reader.ReaderError) -> ConfigIssue:
    """Where a character no YAML file may hold is, and which one."""
    position = min(max(exc.position, 0), len(text))
    line = text.count("\n", 0, position) + 1
    col = position - (text.rfind("\n", 0, position) + 1) + 1
    char = exc.character if isinstance(exc.character, str) else chr(int(exc.character))
    return ConfigIssue(
        file,
        line,
        col,
        "",
        f"the control character U+{ord(char):04X} cannot be in a YAML file: delete it "
        "(copied from a document or a terminal?)",
    )


def _too_deep(file: str) -> ConfigIssue:
    return ConfigIssue(file, 1, 1, "", f"nested more than {MAX_DEPTH} levels deep")


class _Includes:
    def __init__(self) -> None:
        self.seen: dict[str, str] = {}
        """Real path of each file read so far -> the name it is shown under."""
        self.budget = _Budget()

    def load(self, file: str, stack: tuple[str, ...], *, included: bool) -> Source:
        source = _parse(file, self.budget)
        if not isinstance(source.data, dict):
            if source.data is None and not source.issues:
                needs = "buses: or devices:" if included else "at least a gateway: section"
                source.issues.append(
                    ConfigIssue(file, 1, 1, "", f"the file is empty: it needs {needs}")
                )
            elif source.data is not None:
                mark = source.mark(())
                source.issues.append(
                    ConfigIssue.at(
                        mark, (), "the top level must be sections such as 'gateway:' and 'devices:'"
                    )
                )
            source.data = None
            return source
        if included:
            for key in list(source.data):
                if key not in (*INCLUDED_SECTIONS, "include"):
                    source.issues.append(
                        ConfigIssue.at(
                            source.key_mark((key,)),
                            (key,),
                            f"unknown key {key!r} in an included file "
                            "(an included file may hold only buses, devices and include)",
                        )
                    )
                    del source.data[key]
        entries = source.data.pop("include", None)
        if entries is not None:
            self._include(source, entries, file, stack)
        return source

    def _include(self, source: Source, entries: Any, file: str, stack: tuple[str, ...]) -> None:
        listed: list[tuple[Path_, Any]]
        if isinstance(entries, str):
            listed = [(("include",), entries)]
        elif isinstance(entries, list):
            listed = [(("include", i), entry) for i, entry in enumerate(entries)]
        else:
            source.issues.append(
                ConfigIssue.at(
                    source.mark(("include",)),
                    ("include",),
                    "must be a list of file names, e.g. include: [devices-b3.yaml]",
                )
            )
            return
        for path, entry in listed:
            mark = source.mark(path)
            if not isinstance(entry, str) or not entry:
                source.issues.append(ConfigIssue.at(mark, path, "must be a file name"))
                continue
            # Shown as the installer would write it from where they run the command, so
            # normalised but not made absolute.
            target = os.path.normpath(Path(file).parent / entry)
            try:
                real = str(Path(target).resolve())
                exists = Path(target).exists()
            except (OSError, ValueError) as exc:  # a name too long, a NUL in it
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                source.issues.append(
                    ConfigIssue.at(mark, path, f"included file {entry!r} cannot be read: {reason}")
                )
                continue
            if real in stack:
                names = [self.seen[r] for r in stack[stack.index(real) :]]
                cycle = " -> ".join([*names, target])
                source.issues.append(ConfigIssue.at(mark, path, f"include cycle: {cycle}"))
                continue
            if real in self.seen:
                source.issues.append(
                    ConfigIssue.at(mark, path, f"{entry!r} is included more than once")
                )
                continue
            if not exists:
                looked = f" (looked for {target})" if target != entry else ""
                source.issues.append(
                    ConfigIssue.at(mark, path, f"included file {entry!r} not found{looked}")
                )
                continue
            self.seen[real] = target
            child = self.load(target, (*stack, real), included=True)
            _merge(source, child)

    def load_root(self, file: str) -> Source:
        real = str(Path(file).resolve())
        self.seen[real] = file
        return self.load(file, (real,), included=False)


def _merge(parent: Source, child: Source) -> None:
    parent.issues.extend(child.issues)
    if not isinstance(child.data, dict):
        return
    for section in INCLUDED_SECTIONS:
        items = child.data.get(section)
        if items is None:
            continue
        if not isinstance(items, list):
            parent.issues.append(
                ConfigIssue.at(child.mark((section,)), (section,), "must be a list")
            )
            continue
        target = parent.data.setdefault(section, [])
        if not isinstance(target, list):
            continue  # The parent's own error about this section is reported by validation.
        base = len(target)
        target.extend(items)
        for index in range(len(items)):
            parent.origins[(section, base + index)] = child.origins.get((section, index), index)

        def moved(path: Path_, section: str = section, base: int = base) -> Path_ | None:
            if len(path) >= 2 and path[0] == section and isinstance(path[1], int):
                return (section, base + path[1], *path[2:])
            return None

        for table_name in ("marks", "key_marks"):
            table: dict[Path_, Mark] = getattr(child, table_name)
            into: dict[Path_, Mark] = getattr(parent, table_name)
            for path, mark in table.items():
                new = moved(path)
                if new is not None:
                    into[new] = mark
        parent.rejected.update(new for new in map(moved, child.rejected) if new is not None)


def load_source(file: str) -> Source:
    """Read ``file`` and its includes. Problems are collected in ``Source.issues``."""
    includes = _Includes()
    source = includes.load_root(file)
    source.values = MAX_VALUES - max(includes.budget.values, 0)
    return source
