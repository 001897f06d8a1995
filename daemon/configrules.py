"""The `rules:` list: globs, styles and output templates, each rule read from its YAML node."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from types import MappingProxyType

import yaml
from wcmatch import glob as wcglob

from daemon.config import (
    MATCH_FLAGS,
    RULE_NAME,
    SETTING_KEYS,
    OutputTemplate,
    Rule,
    Style,
    StyleOutput,
    name_rules,
)
from daemon.configchecks import STYLE_NAME
from daemon.confignodes import Fields
from daemon.configsettings import Given, StyleReader
from daemon.schema import suggest

_RULE_KEYS = ("name", "match", "styles", "output")


class RuleReader(StyleReader):
    def rules(
        self,
        entry: tuple[yaml.Node, yaml.Node] | None,
        root: yaml.Node,
        styles: dict[str, Style],
        style_layers: dict[str, dict[str, Given]],
        defaults: dict[str, Given],
    ) -> list[Rule]:
        rules: list[Rule] = []
        if entry is None:
            self.problem(root, "rules", "missing: without rules no photo is stylized")
            return rules
        node = entry[1]
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.problem(node, "rules", "expected a list of rules (`- match: ...`)")
            return rules
        named: dict[str, int] = {}
        for index, rule_node in enumerate(node.value):
            rule = self.rule(index, rule_node, styles, style_layers, defaults)
            if rule is None:
                continue
            if rule.name:
                if rule.name in named:
                    where = next(
                        (v for k, v in rule_node.value if getattr(k, "value", None) == "name"),
                        rule_node,
                    )
                    self.problem(
                        where,
                        f"rules[{index}].name",
                        f"the name {rule.name!r} is already taken by rules[{named[rule.name]}]",
                    )
                named.setdefault(rule.name, index)
            rules.append(rule)
        return name_rules(rules)

    def rule(
        self,
        index: int,
        node: yaml.Node,
        styles: dict[str, Style],
        style_layers: dict[str, dict[str, Given]],
        defaults: dict[str, Given],
    ) -> Rule | None:
        key = f"rules[{index}]"
        fields = self.mapping(node, key)
        if fields is None:
            return None
        self.check_keys(fields, _RULE_KEYS + SETTING_KEYS, key)
        ok = True
        rule_name = ""
        if "name" in fields:
            value = self.text(fields["name"][1], f"{key}.name")
            if isinstance(value, str) and RULE_NAME.fullmatch(value) is None:
                self.problem(
                    fields["name"][1],
                    f"{key}.name",
                    f"{value!r} is not a valid rule name: up to 64 letters, digits, `_`, `-` and "
                    "`.`, starting with a letter or a digit (it can appear in output paths)",
                )
                ok = False
            elif isinstance(value, str):
                rule_name = value
            else:
                ok = False
        patterns = self.globs(fields, node, key)
        names = self.rule_styles(fields, node, key, styles)
        layer = self.overrides(fields, key)
        if patterns is None or names is None:
            ok = False
            names = names or ()
        targets: list[StyleOutput] = []
        for name in names:
            settings = self.resolve(
                [defaults, style_layers.get(name, {}), layer], fields["styles"][1], f"{key}.styles"
            )
            if settings is None or name not in styles:
                ok = False
            else:
                targets.append(StyleOutput(name, styles[name].spec, settings, styles[name].credit))
        template = self.template(fields, node, key=key, names=names, targets=targets)
        if not ok or template is None or patterns is None:
            return None
        return Rule(
            index=index,
            line=node.start_mark.line + 1,
            match=patterns,
            styles=tuple(names),
            output=template,
            outputs=tuple(targets),
            name=rule_name,
            overrides=MappingProxyType({k: s.value for k, s in layer.items()}),
            matcher=wcglob.compile(list(patterns), flags=MATCH_FLAGS),
        )

    def globs(self, fields: Fields, node: yaml.Node, key: str) -> tuple[str, ...] | None:
        if "match" not in fields:
            self.problem(node, key, "missing: match (a glob such as `booth1/**/*.jpg`)")
            return None
        items = self.texts(fields["match"][1], f"{key}.match")
        if items is None:
            return None
        ok = bool(items)
        if not items:
            self.problem(fields["match"][1], f"{key}.match", "name at least one glob")
        for position, (item, text) in enumerate(items):
            item_key = f"{key}.match" if len(items) == 1 else f"{key}.match[{position}]"
            problem = _glob_problem(text)
            if problem:
                self.problem(item, item_key, problem)
                ok = False
        return tuple(text for _, text in items) if ok else None

    def rule_styles(
        self, fields: Fields, node: yaml.Node, key: str, styles: dict[str, Style]
    ) -> tuple[str, ...] | None:
        if "styles" not in fields:
            self.problem(node, key, "missing: styles (one or more style names)")
            return None
        list_node = fields["styles"][1]
        items = self.texts(list_node, f"{key}.styles")
        if items is None:
            return None
        if not items:
            self.problem(list_node, f"{key}.styles", "name at least one style")
        names: list[str] = []
        for item, name in items:
            if name in names:
                self.problem(item, f"{key}.styles", f"style {name!r} is listed twice")
                continue
            names.append(name)
            if name in styles or name in self.broken_styles:
                continue  # a broken style's own problems are reported where it is defined
            if STYLE_NAME.fullmatch(name) is None:
                self.problem(item, f"{key}.styles", f"{name!r} is not a valid style name")
            else:
                hint = suggest(name, list(styles))
                self.problem(item, f"{key}.styles", f"unknown style {name!r}{hint}")
        return tuple(names)

    def template(
        self,
        fields: Fields,
        rule_node: yaml.Node,
        *,
        key: str,
        names: Sequence[str],
        targets: Sequence[StyleOutput],
    ) -> OutputTemplate | None:
        if "output" in fields:
            node = fields["output"][1]
            text = self.text(node, f"{key}.output")
            if not isinstance(text, str):
                return None
        else:
            node = rule_node
            text = "{dir}/{stem}.{ext}" if len(names) <= 1 else "{dir}/{stem}.{style}.{ext}"
        try:
            template = OutputTemplate.parse(text)
            # Rendering samples now finds templates that escape the output folder or that give
            # two styles of the rule the same file, before any photo arrives.
            exts = {t.style_name: t.settings.output.resolve(".jpg")[1] for t in targets}
            for folder in ("", "sample/folder"):
                seen: dict[PurePosixPath, str] = {}
                for name in names or ("style",):
                    path = template.render(
                        dir=folder, stem="photo", ext=exts.get(name, "jpg"), style=name, rule="rule"
                    )
                    if path in seen:
                        raise ValueError(
                            f"styles {seen[path]!r} and {name!r} would write the same "
                            f"file {str(path)!r}; add {{style}} to the template"
                        )
                    seen[path] = name
        except ValueError as exc:
            self.problem(node, f"{key}.output", str(exc))
            return None
        return template


def _glob_problem(pattern: str) -> str | None:
    if not pattern.strip():
        return "the glob is empty"
    if pattern.startswith(("/", "~")):
        return f"{pattern!r}: globs are relative to the input folder; drop the {pattern[0]!r}"
    if ".." in pattern.split("/"):
        return f"{pattern!r}: a glob cannot reach outside the input folder ('..')"
    if pattern.endswith("/"):
        return f"{pattern!r} matches folders only; add `**/*` to match the files in them"
    return None
