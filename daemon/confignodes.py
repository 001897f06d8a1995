"""Typed values out of YAML nodes, each problem recorded with its file, line and key path.

The document is composed into YAML nodes (which keep their line numbers) and read by hand rather
than loaded into plain dicts, because a dict forgets where each value came from. `NodeReader`
reads scalars, texts, numbers and mappings; `SchemaReader` reads one value by its field's type and
its `Setting` (daemon/schema.py), and `read_fields` a whole section that way. The loader
(daemon/configload.py and the modules it names) walks the document with them.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

import yaml

from daemon.errors import Problem
from daemon.schema import Field, Range, Setting, suggest

Fields = dict[str, tuple[yaml.Node, yaml.Node]]  # key -> (key node, value node)
INVALID = object()  # a value that failed to parse; the problem is already recorded
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN = Setting("")  # a value with no description of its own (a list item)


class NodeReader:
    def __init__(self, shown: Path, base: Path, *, require_input: bool = True) -> None:
        self.shown = shown  # the path as the user wrote it, for messages
        self.base = base  # relative paths are resolved against the config's folder
        self.require_input = require_input
        self.problems: list[Problem] = []
        self._constructor = yaml.SafeLoader("")

    def problem(self, node: yaml.Node | None, key: str, message: str) -> None:
        line = None if node is None else node.start_mark.line + 1
        self.problems.append(Problem(self.shown, line, key, message))

    def section(
        self, entry: tuple[yaml.Node, yaml.Node] | None, key: str, allowed: Sequence[str]
    ) -> Fields:
        if entry is None:
            return {}
        fields = self.mapping(entry[1], key)
        if fields is None:
            return {}
        self.check_keys(fields, allowed, key)
        return {k: v for k, v in fields.items() if k in allowed}

    def check_keys(self, fields: Fields, allowed: Sequence[str], key: str) -> None:
        for name, (name_node, _) in fields.items():
            if name not in allowed:
                self.problem(name_node, join(key, name), f"unknown key{suggest(name, allowed)}")

    def mapping(self, node: yaml.Node, key: str) -> Fields | None:
        if not isinstance(node, yaml.MappingNode):
            self.problem(
                node, key or "(document)", f"expected a mapping, got {self.describe(node)}"
            )
            return None
        seen: set[object] = set()
        for name_node, _ in node.value:
            name = self.scalar(name_node)
            if name_node.tag == _MERGE_TAG:
                continue
            if isinstance(name, str) and name in seen:
                self.problem(name_node, join(key, name), "duplicate key")
            seen.add(name)
        try:
            # Applies `<<: *anchor` merge keys: the merged pairs go first, so explicit keys win.
            self._constructor.flatten_mapping(node)
        except yaml.YAMLError as exc:
            self.problem(node, key, f"invalid merge key: {exc}")
            return None
        fields: Fields = {}
        for name_node, value_node in node.value:
            name = self.scalar(name_node)
            if isinstance(name, str):
                fields[name] = (name_node, value_node)
            else:
                self.problem(name_node, key, f"keys must be text, got {name!r} (quote it)")
        return fields

    # -- scalars

    def scalar(self, node: yaml.Node) -> object:
        if not isinstance(node, yaml.ScalarNode):
            return INVALID
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError):
            # Explicit tags run their constructors: `!!int inbox` raises a plain ValueError.
            return INVALID

    def describe(self, node: yaml.Node) -> str:
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        value = self.scalar(node)
        if value is INVALID:
            return f"an unreadable {node.tag} value"
        return "nothing" if value is None else repr(value)

    def text(self, node: yaml.Node, key: str) -> object:
        value = self.scalar(node)
        if isinstance(value, str):
            return value
        self.problem(node, key, f"expected text, got {self.describe(node)}")
        return INVALID

    def texts(self, node: yaml.Node, key: str) -> list[tuple[yaml.Node, str]] | None:
        """One text or a list of them."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out: list[tuple[yaml.Node, str]] = []
        ok = True
        for index, item in enumerate(items):
            value = self.text(item, f"{key}[{index}]" if item is not node else key)
            if isinstance(value, str):
                out.append((item, value))
            else:
                ok = False
        return out if ok else None

    def boolean(self, node: yaml.Node, key: str) -> object:
        value = self.scalar(node)
        if isinstance(value, bool):
            return value
        self.problem(node, key, f"expected true or false, got {self.describe(node)}")
        return INVALID

    def integer(self, node: yaml.Node, key: str, bounds: Range | None, unit: str = "") -> object:
        value = self.scalar(node)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(node, key, f"expected a whole number, got {self.describe(node)}")
            return INVALID
        if bounds is not None and not bounds.holds(value):
            self.problem(node, key, f"must be {bounds.wanted(unit)}, got {value}")
            return INVALID
        return value

    def real(self, node: yaml.Node, key: str, bounds: Range | None, unit: str = "") -> object:
        value = self.scalar(node)
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # YAML 1.1 reads `1e6` (no dot) as text; a user writing it means the number.
            try:
                number = float(value)
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            self.problem(node, key, f"expected a number, got {self.describe(node)}")
            return INVALID
        if bounds is not None and not bounds.holds(number):
            self.problem(node, key, f"must be {bounds.wanted(unit)}, got {number:g}")
            return INVALID
        return number

    def choice(self, node: yaml.Node, key: str, choices: Sequence[str]) -> object:
        value = self.scalar(node)
        if isinstance(value, str) and value in choices:
            return value
        shown = repr(value) if isinstance(value, str) else self.describe(node)
        hint = suggest(value.lower(), choices) if isinstance(value, str) else ""
        self.problem(node, key, f"{shown} is not one of {', '.join(choices)}{hint}")
        return INVALID

    def path_value(self, node: yaml.Node, key: str) -> Path | None:
        text = self.text(node, key)
        if not isinstance(text, str):
            return None
        if not text.strip():
            self.problem(node, key, "expected a path, got an empty text")
            return None
        return (self.base / Path(text).expanduser()).resolve()

    def existing_file(self, node: yaml.Node, key: str) -> Path | None:
        path = self.path_value(node, key)
        if not self.require_input:
            return path  # the journal's commands read no painting: one that is away is fine
        if path is not None and not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            self.problem(node, key, f"{path} {what}")
            return None
        return path


class SchemaReader(NodeReader):
    """Reads values by their field's type and `Setting`: a Literal is a choice, a `float` a
    number within its Range, a `tuple[str, ...]` one text or a list, an Optional also `null`."""

    def read_fields(
        self,
        fields: Fields,
        key: str,
        schema: Mapping[str, Field],
        special: Mapping[str, Callable[[yaml.Node, str], object]] | None = None,
    ) -> dict[str, object]:
        """The valid values of a section's keys that `schema` describes, in the file's order;
        `special` reads the few whose shape no type says."""
        values: dict[str, object] = {}
        for name, (_, node) in fields.items():
            if name not in schema:
                continue
            item_key = f"{key}.{name}"
            if special and name in special:
                value = special[name](node, item_key)
            else:
                value = self.value(node, item_key, schema[name].kind, schema[name].setting)
            if value is not INVALID:
                values[name] = value
        return values

    # -- one value, by its type and its description

    def value(self, node: yaml.Node, key: str, kind: object, described: Setting) -> object:
        origin, args = get_origin(kind), get_args(kind)
        if origin in (Union, types.UnionType) and type(None) in args:
            if self.scalar(node) is None:
                return None
            (inner,) = [a for a in args if a is not type(None)]
            return self.value(node, key, inner, described)
        if origin is Literal or described.choices:
            choices = described.choices or tuple(str(a) for a in args)
            given = self.scalar(node)
            alias = described.alias(given) if described.alias is not None else None
            return alias if alias is not None else self.choice(node, key, choices)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            if described.items is None:
                return self.sequence(node, key, args[0])
            return self.items(node, key, described)
        value = self.simple(node, key, kind, described)
        message = None
        if value is not INVALID and callable(described.check):
            message = described.check(value)
            if message is not None:
                self.problem(node, key, message)
        return INVALID if message is not None else value

    def sequence(self, node: yaml.Node, key: str, kind: object) -> object:
        """A tuple of values of one type: a list, or one value as a list of one."""
        nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
        values = [self.value(item, f"{key}[{i}]", kind, _PLAIN) for i, item in enumerate(nodes)]
        return INVALID if INVALID in values else tuple(values)

    def simple(self, node: yaml.Node, key: str, kind: object, described: Setting) -> object:
        """A value of a plain type: bool, int, float, str or Path."""
        bounds = described.check if isinstance(described.check, Range) else None
        if kind is bool:
            value = self.boolean(node, key)
        elif kind is int:
            value = self.integer(node, key, bounds, described.unit)
        elif kind is float:
            value = self.real(node, key, bounds, described.unit)
        elif kind is str:
            value = self.text(node, key)
        elif kind is Path:
            value = self.existing_file(node, key) if described.file else self.path_value(node, key)
            value = INVALID if value is None else value
        else:
            self.problem(node, key, "this setting cannot be set from the config")
            value = INVALID
        return value

    def items(self, node: yaml.Node, key: str, described: Setting) -> object:
        """One text or a list of them, each checked by the setting's `Items`."""
        rule = described.items
        assert rule is not None  # value() only calls this for a setting with items
        if rule.list_only is not None and not isinstance(node, yaml.SequenceNode):
            self.problem(node, key, rule.list_only)
            return INVALID
        found = self.texts(node, key)
        if found is None:
            return INVALID
        ok = True
        for index, (item, text) in enumerate(found):
            message = rule.each(text) if rule.each is not None else None
            if message is not None:
                self.problem(item, f"{key}[{index}]", message)
                ok = False
        if not found and rule.empty is not None:
            self.problem(node, key, rule.empty)
            ok = False
        value = tuple(text for _, text in found)
        if ok and callable(described.check) and (message := described.check(value)):
            self.problem(node, key, message)
            ok = False
        if not ok:
            return INVALID
        return rule.clean(value) if rule.clean is not None else value


def join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def yaml_syntax_problem(exc: yaml.MarkedYAMLError, text: str) -> tuple[int | None, str]:
    """PyYAML's parser wording ("expected <block end>, but found ...") in plain words, with the
    line it concerns and a caret under the column: (1-based line, message)."""
    problem, context = exc.problem or "", exc.context or ""
    mark = exc.problem_mark or exc.context_mark
    opened = exc.context_mark
    if "quoted scalar" in context and opened is not None:
        mark, words = opened, "this quote is never closed: end the value with the same quote"
    elif "simple key" in context and opened is not None:
        mark, words = opened, "this line is not `key: value` (a colon is missing)"
    elif problem.startswith("found character '\\t'"):
        words = "a tab character: YAML indents with spaces only"
    elif problem.startswith("found character"):
        char = problem.split("'")[1] if problem.count("'") >= 2 else "this character"
        words = f"a value cannot start with {char!r}: put the value in quotes"
    elif problem.startswith("mapping values are not allowed"):
        words = (
            "a colon where none can be: a key indented deeper than the one above it, or a "
            "value that contains ': ' (put such a value in quotes)"
        )
    elif problem.startswith("expected <block end>"):
        words = (
            "this line does not line up with the ones above it: keys (and `- ` items) "
            "of one section need the same indentation"
        )
    elif "<stream end>" in problem:
        words = "the file ends in the middle of a value: a '[' or '{' is never closed"
    elif ("flow sequence" in context or "flow mapping" in context) and opened is not None:
        bracket = "[" if "sequence" in context else "{"
        words = (
            f"the {bracket!r} opened on line {opened.line + 1} is not closed here "
            "(or a comma is missing between its items)"
        )
    elif problem.startswith("found undefined alias"):
        words = f"{problem.split()[-1]} names an anchor (`&name`) that is not defined above it"
    else:
        words = problem or context or "syntax error"
    if mark is None:
        return None, f"invalid YAML: {words}"
    lines = text.splitlines()
    if mark.line >= len(lines):
        return mark.line + 1, f"invalid YAML: {words} (at the end of the file)"
    source = lines[mark.line]
    # Tabs are kept under the line so that the caret stays under its column.
    pad = "".join(c if c == "\t" else " " for c in source[: mark.column])
    return mark.line + 1, f"invalid YAML: {words}\n    {source}\n    {pad}^"
