"""A path relative to the input folder -> ignored, unmatched, or a plan of output files.

`decide()` is pure: it reads the Config and the path's text, never the filesystem, so the watcher,
the rescan and the `check` command all get the same answer. Logging an unmatched file once is the
caller's business.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wcmatch import fnmatch as wcfnmatch
from wcmatch import glob as wcglob

from daemon.config import BUILTIN_IGNORES, MATCH_FLAGS, NAME_FLAGS, Config, Rule
from daemon.orders import Painting, PaintingIds, WorkOrder
from engine.metadata import Credit
from engine.params import StyleParams, StyleSpec


@dataclass(frozen=True)
class Ignored:
    """Not a photo to work on: `reason` is a stable code for logs, `detail` the name or pattern.

    Reasons: unsafe_path, output_folder, state_folder, ignored (a built-in or user pattern),
    not_recursive, extension, unsafe_output.
    """

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Unmatched:
    """A photo that no rule matches: it is left alone."""


@dataclass(frozen=True)
class PlannedOutput:
    style_name: str
    style: StyleSpec
    params: StyleParams
    relpath: PurePosixPath  # inside the output folder
    format: str  # Pillow's name of a writable format (engine.formats): "JPEG", "AVIF", ...
    quality: int
    metadata: str = "private"  # what the output keeps of the photo's (engine.metadata)
    credit: Credit | None = None  # the painting's, from the style


@dataclass(frozen=True)
class Plan:
    rule_index: int
    rule: Rule
    outputs: tuple[PlannedOutput, ...]  # one per style of the rule, in the rule's order


Decision = Ignored | Unmatched | Plan


def ignored(config: Config, relpath: PurePosixPath, *, is_dir: bool = False) -> Ignored | None:
    """Why `relpath` (a file, or a folder with is_dir) is skipped, or None when it is not.

    The watcher can call this on folders to avoid descending into ignored ones.
    """
    parts = relpath.parts
    if not parts or relpath.is_absolute() or ".." in parts:
        return Ignored("unsafe_path", str(relpath))
    for folder, reason in ((config.output, "output_folder"), (config.state, "state_folder")):
        inside = _inside(folder, config.input)
        if inside is not None and relpath.is_relative_to(inside):
            return Ignored(reason, inside.as_posix())
    names, paths = _patterns(config.watch.ignore)
    for part in parts:
        for pattern, matcher in names:
            if matcher.match(part):
                return Ignored("ignored", pattern)
    for pattern, matcher in paths:
        if matcher.match(relpath.as_posix()):
            return Ignored("ignored", pattern)
    if not config.watch.recursive and len(parts) > (0 if is_dir else 1):
        return Ignored("not_recursive", parts[0])
    return None


def decide(config: Config, relpath: PurePosixPath) -> Decision:
    """What to do with the file at `relpath` (relative to config.input); the first match wins."""
    skipped = ignored(config, relpath)
    if skipped is not None:
        return skipped
    if relpath.suffix[1:].lower() not in config.watch.extensions:
        return Ignored("extension", relpath.suffix)
    for rule in config.rules:
        if rule.matches(relpath):
            return plan(rule, relpath)
    return Unmatched()


def plan(rule: Rule, relpath: PurePosixPath) -> Plan | Ignored:
    """The output files `rule` makes of the photo at `relpath`."""
    folder = relpath.parent.as_posix()
    outputs = []
    for target in rule.outputs:
        pillow_format, ext = target.settings.output.resolve(relpath.suffix)
        try:
            # The template was checked at load; a real name can still render badly (a stem of
            # `..` from `...jpg`), so the check is repeated for every path.
            out = rule.output.render(
                dir="" if folder == "." else folder,
                stem=relpath.stem,
                ext=ext,
                style=target.style_name,
                rule=rule.name,
            )
        except ValueError as exc:
            return Ignored("unsafe_output", str(exc))
        outputs.append(
            PlannedOutput(
                style_name=target.style_name,
                style=target.style,
                params=target.settings.params,
                relpath=out,
                format=pillow_format,
                quality=target.settings.output.quality,
                metadata=target.settings.output.metadata,
                credit=target.credit,
            )
        )
    return Plan(rule.index, rule, tuple(outputs))


def orders(
    decision: Plan, source: str, fingerprint: str, paintings: PaintingIds | None = None
) -> tuple[WorkOrder, ...]:
    """The work orders of a plan, one per output, for this content of the photo at `source`.
    `paintings` gives the paintings' content hashes (without it they are left empty)."""
    return tuple(
        WorkOrder(
            source=source,
            fingerprint=fingerprint,
            rule=decision.rule.name,
            style=out.style_name,
            paintings=(
                paintings.of(out.style)
                if paintings is not None
                else tuple(Painting(str(i.path), i.weight) for i in out.style.images)
            ),
            params=out.params,
            output=str(out.relpath),
            format=out.format,
            quality=out.quality,
            metadata=out.metadata,
            credit=out.credit,
        )
        for out in decision.outputs
    )


def _inside(folder: Path, parent: Path) -> PurePosixPath | None:
    if folder == parent or not folder.is_relative_to(parent):
        return None
    return PurePosixPath(folder.relative_to(parent).as_posix())


_Matchers = tuple[tuple[str, "wcfnmatch.WcMatcher[str] | wcglob.WcMatcher[str]"], ...]


@functools.lru_cache(maxsize=8)
def _patterns(user: tuple[str, ...]) -> tuple[_Matchers, _Matchers]:
    """(name patterns, path patterns): a pattern with a `/` is a glob on the whole relative path."""
    names: list[tuple[str, wcfnmatch.WcMatcher[str] | wcglob.WcMatcher[str]]] = []
    paths: list[tuple[str, wcfnmatch.WcMatcher[str] | wcglob.WcMatcher[str]]] = []
    for pattern in BUILTIN_IGNORES + user:
        if "/" in pattern:
            paths.append((pattern, wcglob.compile([pattern], flags=MATCH_FLAGS)))
        else:
            names.append((pattern, wcfnmatch.compile([pattern], flags=NAME_FLAGS)))
    return tuple(names), tuple(paths)
