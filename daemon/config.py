"""The daemon's YAML config, read once into frozen objects and validated there.

`load_config(path)` returns a `Config` or raises a `ConfigError` that lists every problem found,
each with the file, the line and the key path (`rules[1].styles`), and a suggestion for a typo.
Nothing downstream sees YAML or dicts: rules carry ready-made `StyleParams` per style, built once
here, so a setting the engine would refuse is refused at load time, not on the first photo.

The document is composed into YAML nodes (which keep their line numbers) and walked by hand rather
than loaded into plain dicts, because a dict forgets where each value came from.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import hashlib
import ipaddress
import json
import math
import re
import string
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Literal, Union, get_args, get_origin, get_type_hints

import yaml
from wcmatch import fnmatch as wcfnmatch
from wcmatch import glob as wcglob

from daemon.errors import ConfigError, Problem
from daemon.logs import LEVELS, RENDERERS, Renderer
from daemon.mounts import (  # noqa: F401  (re-exported: tests and older callers import them here)
    NETWORK_FILESYSTEMS,
    _read_mounts,
    _unescape_mount,
    filesystem_type,
    is_network_filesystem,
    parse_mountinfo,
)
from engine import formats
from engine.metadata import METADATA_POLICIES, Credit
from engine.params import (
    PRECISIONS,
    PREPROCESSES,
    PRESETS,
    EngineConfig,
    StyleImage,
    StyleParams,
    StyleSpec,
)

WatchMode = Literal["auto", "native", "polling"]
ResolvedWatchMode = Literal["native", "polling"]

WATCH_MODES: tuple[str, ...] = ("auto", "native", "polling")
# "same", or the name of a format an output can take (engine.formats).
OUTPUT_FORMATS: tuple[str, ...] = ("same", *(f.name for f in formats.WRITABLE))
DEFAULT_EXTENSIONS: tuple[str, ...] = formats.EXTENSIONS

# Names that are never photos, matched on every component of a path: hidden files and folders,
# downloads and copies still in progress, Office lock files, and the litter of macOS, Windows and
# Synology NAS boxes. The output and state folders are excluded too (see rules.ignored()).
BUILTIN_IGNORES: tuple[str, ...] = (
    ".*",
    "*.part",
    "*.tmp",
    "*.crdownload",
    "~$*",
    ".DS_Store",
    "Thumbs.db",
    "@eaDir",
    "#recycle",
    "$RECYCLE.BIN",
)

# Cameras write IMG_0001.JPG, so globs ignore case; `**` matches any depth, including none.
MATCH_FLAGS = wcglob.GLOBSTAR | wcglob.IGNORECASE | wcglob.FORCEUNIX
NAME_FLAGS = wcfnmatch.IGNORECASE | wcfnmatch.DOTMATCH | wcfnmatch.FORCEUNIX

STYLE_NAME = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
# A rule's name goes into output paths through `{rule}`: letters, digits, `_`, `-` and `.`.
RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?", re.ASCII)
PLACEHOLDERS: tuple[str, ...] = ("dir", "stem", "ext", "style", "rule")

PARAM_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(StyleParams))
OUTPUT_KEYS: tuple[str, ...] = ("format", "quality", "metadata")
# `preset` names a schedule from engine.params.PRESETS; keys beside it in the same mapping win.
SETTING_KEYS: tuple[str, ...] = (*PARAM_KEYS, *OUTPUT_KEYS, "preset")
_PARAM_TYPES: dict[str, object] = get_type_hints(StyleParams)
CREDIT_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Credit))


# ---------------------------------------------------------------------------------------------
# The objects a config becomes


@dataclass(frozen=True)
class WatchConfig:
    mode: WatchMode = "auto"  # auto: polling on network and FUSE filesystems, native otherwise
    poll_interval: float = 2.0  # seconds between directory scans in polling mode
    # How long size and mtime must stay unchanged before a file counts as complete. A booth wants
    # seconds; shares fed by slow copies need more.
    settle_seconds: float = 2.0
    rescan_interval: float = 300.0  # full safety-net scan for missed events; 0 disables it
    recursive: bool = True
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS  # lower-case, without the dot
    ignore: tuple[str, ...] = ()  # the user's patterns, on top of BUILTIN_IGNORES

    def resolve_mode(self, path: Path, mountinfo: str | None = None) -> ResolvedWatchMode:
        """The watch mode to use for `path`: `auto` looks at the filesystem type it lives on."""
        if self.mode == "native":
            return "native"
        if self.mode == "polling":
            return "polling"
        fstype = filesystem_type(path, mountinfo)
        return "polling" if fstype is not None and is_network_filesystem(fstype) else "native"


@dataclass(frozen=True)
class RetrySettings:
    """How failed jobs are tried again (daemon/journal.py applies it)."""

    # Trouble that can pass (I/O errors, permissions, a painting or a share that is away) is
    # retried for this long from its first failure before the job fails for good, in seconds.
    # Hours, so that an outage overnight loses nothing; `stylewatch status` shows what waits.
    give_up_after: float = 6 * 3600.0
    first_delay: float = 5.0  # the first wait after a failure, in seconds
    # The longest wait between two tries, in seconds: also how long a booth may wait after the
    # trouble is gone before its photos move again.
    max_delay: float = 60.0
    # Errors of unknown kind, and crashes during a job, are tried this many times in all.
    max_attempts: int = 5


@dataclass(frozen=True)
class EngineSettings:
    engine: EngineConfig = field(default_factory=EngineConfig)
    batch_size: int = 4  # photos of one style stylized together
    # A batch that shows no progress for this long counts as stuck: the service stops answering
    # systemd's watchdog, which restarts it. Far above the slowest step of a legitimate job.
    stuck_seconds: float = 600.0
    # CPU threads torch computes with; None leaves torch's default (one per physical core).
    # Lower it to leave cores to other services on the same machine.
    threads: int | None = None
    # A running job's image is saved to the state folder this often (seconds; 0: never), so that
    # a stop or a crash resumes it from there instead of from step 0.
    snapshot_seconds: float = 10.0
    # One worker process per entry: ("auto",) is one worker on `device`; ("all",) one per CUDA
    # GPU found at start; or devices such as ("cuda:0", "cuda:1") or ("cpu", "cpu").
    devices: tuple[str, ...] = ("auto",)


@dataclass(frozen=True)
class BrokerConfig:
    """Several hosts: the work goes through Redis Streams (daemon/broker.py) when `url` is set."""

    url: str | None = None  # redis://host:port/db, rediss://..., unix:///path/redis.sock
    # Key prefix in Redis: installs that share one server keep apart by it.
    namespace: str = "stylewatch"
    # A worker that has not renewed its batch's lease for this long is taken for dead, and
    # another worker takes the batch over (seconds).
    lease_seconds: float = 60.0
    # A batch delivered this many times without a result (it kills its workers) fails its photos.
    max_attempts: int = 3


@dataclass(frozen=True)
class LoggingSettings:
    """How `stylewatch run` logs; its --log-level and --log-format win over these."""

    level: str = "info"  # debug | info | warning | error
    format: Renderer = "auto"  # auto: console on a terminal, JSON lines otherwise (journald)


@dataclass(frozen=True)
class OutputSettings:
    # One of OUTPUT_FORMATS. "same" keeps the photo's format when an output can take it (JPEG,
    # PNG, WebP, AVIF), and writes JPEG otherwise (HEIC, TIFF).
    format: str = "same"
    quality: int = 92  # quality of the lossy formats (JPEG, WebP, AVIF), 1..100
    # What of the photo's metadata the output keeps (engine.metadata): private (all but
    # location and serial numbers), full, or minimal (only what says how it was made).
    metadata: str = "private"

    def resolve(self, source_suffix: str) -> tuple[str, str]:
        """(Pillow format name, file extension without the dot) for a photo with this suffix.

        When the output keeps the photo's format it keeps its extension as written too (`.JPG`
        stays `.JPG`), so the output tree mirrors the input tree name for name.
        """
        source = formats.by_extension(source_suffix) if source_suffix else None
        if self.format != "same":
            chosen = formats.by_name(self.format)
        elif source is not None and source.writable:
            chosen = source
        else:
            chosen = formats.by_name("jpeg")
        ext = source_suffix[1:] if chosen == source else chosen.extensions[0]
        return chosen.pillow, ext


@dataclass(frozen=True)
class Settings:
    """Fully resolved settings of one stylization."""

    params: StyleParams
    output: OutputSettings


@dataclass(frozen=True)
class Style:
    name: str
    spec: StyleSpec
    overrides: Mapping[str, object] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    credit: Credit | None = None  # the painting's, written into every output of the style


@dataclass(frozen=True)
class Target:
    """One output of a rule: a style and the settings resolved for this (rule, style) pair."""

    style_name: str
    style: StyleSpec
    settings: Settings
    credit: Credit | None = None


@dataclass(frozen=True)
class OutputTemplate:
    """Where a rule writes, relative to the output folder: `{dir}/{stem}.{style}.{ext}`."""

    text: str

    @classmethod
    def parse(cls, text: str) -> OutputTemplate:
        """Check the template's shape; raises ValueError with a message that suits a ConfigError."""
        if not text.strip():
            raise ValueError("the output template is empty")
        if text.startswith(("/", "~")) or re.match(r"[A-Za-z]:[/\\]", text):
            raise ValueError("the output template must be relative to the output folder")
        if "\\" in text or "\0" in text:
            raise ValueError("the output template may not contain '\\' or NUL; use '/' for folders")
        if text.endswith("/"):
            raise ValueError("the output template must end with a file name")
        try:
            parts = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValueError(f"the output template is malformed: {exc}") from None
        for _literal, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in PLACEHOLDERS:
                raise ValueError(
                    f"unknown placeholder {{{name}}}{_suggest(name, PLACEHOLDERS)}; "
                    f"placeholders are {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
                )
            if conversion or (spec and "{" in spec):
                raise ValueError(f"placeholder {{{name}}} may only carry a plain format spec")
        return cls(text)

    def render(self, *, dir: str, stem: str, ext: str, style: str, rule: str) -> PurePosixPath:
        """The output path of one photo; ValueError when it would leave the output folder."""
        text = self.text.format(dir=dir, stem=stem, ext=ext, style=style, rule=rule)
        return safe_relpath(text)


@dataclass(frozen=True)
class Rule:
    index: int  # 0-based position in `rules`, as in error messages
    line: int
    match: tuple[str, ...]
    styles: tuple[str, ...]
    output: OutputTemplate
    targets: tuple[Target, ...]  # one per style, in the order of `styles`
    # The rule's identity in the journal, the logs and `{rule}`: its `name:`, or one derived
    # from its match and styles, so that moving the rule in the list changes nothing.
    name: str = ""
    overrides: Mapping[str, object] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    matcher: wcglob.WcMatcher[str] | None = field(default=None, repr=False, compare=False)

    def matches(self, relpath: PurePosixPath) -> bool:
        matcher = self.matcher or wcglob.compile(list(self.match), flags=MATCH_FLAGS)
        return matcher.match(relpath.as_posix())


DEFAULT_LISTEN = "127.0.0.1:8750"
MIN_TOKEN_LENGTH = 16  # a token short enough to guess protects nothing


@dataclass(frozen=True)
class WebConfig:
    """`stylewatch web`: the booth page, the dashboard and /metrics."""

    listen: str = DEFAULT_LISTEN  # HOST:PORT; any host but loopback needs a token
    token: str | None = None  # checked on every route but /healthz when set
    show_sources: bool = False  # serve the source photos beside the artworks


@dataclass(frozen=True)
class HooksConfig:
    """Commands run by the service after a job ends; argv lists, never through a shell."""

    on_done: tuple[str, ...] = ()
    on_failed: tuple[str, ...] = ()
    timeout_seconds: float = 30.0  # a hook still running then is killed


@dataclass(frozen=True)
class MetricsConfig:
    # node_exporter's textfile collector: the service writes its metrics here atomically.
    textfile: Path | None = None
    interval_seconds: float = 15.0  # how often the textfile is rewritten (and at stop)


@dataclass(frozen=True)
class Config:
    path: Path  # the config file, absolute
    input: Path  # the folders, absolute and with symlinks resolved
    output: Path
    state: Path
    watch: WatchConfig
    engine: EngineSettings
    styles: Mapping[str, Style] = field(hash=False)
    defaults: Settings
    rules: tuple[Rule, ...]
    retry: RetrySettings = field(default_factory=RetrySettings)
    web: WebConfig = field(default_factory=WebConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    broker: BrokerConfig = field(default_factory=BrokerConfig)


# ---------------------------------------------------------------------------------------------
# Public helpers


def derived_rule_name(match: Sequence[str], styles: Sequence[str]) -> str:
    """A rule's name when it has no `name:`: its globs and styles as a slug
    (`booth1/**/*.jpg` + starry -> `booth1-jpg-starry`), shortened with a hash when long."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", "-".join((*match, *styles))).strip("-") or "rule"
    if len(slug) > 48:
        slug = f"{slug[:40].rstrip('-')}-{_rule_hash(match, styles)}"
    return slug


def name_rules(rules: Sequence[Rule]) -> list[Rule]:
    """Give every rule without a `name:` its derived one. Two rules that would derive the same
    name (or one that a named rule took) each get a hash of their match and styles appended, so
    that the name never depends on the rules' order."""
    taken = {rule.name for rule in rules if rule.name}
    derived = {id(r): derived_rule_name(r.match, r.styles) for r in rules if not r.name}
    uses = collections.Counter(derived.values())
    named: list[Rule] = []
    for rule in rules:
        if rule.name:
            named.append(rule)
            continue
        name = derived[id(rule)]
        if name in taken or uses[name] > 1:
            name = f"{name}-{_rule_hash(rule.match, rule.styles)}"
        named.append(dataclasses.replace(rule, name=name))
    return named


def _rule_hash(match: Sequence[str], styles: Sequence[str]) -> str:
    key = json.dumps([list(match), list(styles)], separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()[:6]


def safe_relpath(text: str) -> PurePosixPath:
    """`text` as a normalised relative path that cannot leave its folder, or ValueError."""
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{text!r} would leave the output folder ('..')")
    if "\0" in text:
        raise ValueError(f"{text!r} contains NUL")
    if not parts:
        raise ValueError(f"{text!r} is an empty path")
    return PurePosixPath(*parts)


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:8750` for IPv6) -> (host, port); ValueError with a message."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT (for example {DEFAULT_LISTEN})")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, [::1]:8750")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: the port must be between 0 and 65535")
    return host, port


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(path: str | Path, *, require_input: bool = True) -> Config:
    """Read and validate the config file; raises ConfigError listing every problem.

    require_input=False accepts an input folder that does not exist (yet, or any more), an
    output folder that something else stands in place of, and paintings that are away: the
    journal's commands (`status`, `retry`) need none of them, and are most wanted when they are
    away.
    """
    shown = Path(path)
    try:
        text = shown.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(shown, None, "", f"cannot read the config: {exc}")]) from None
    return _Loader(shown, Path(path).resolve(), require_input=require_input).load(text)


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


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class _Setting:
    """A parsed setting override and where it was written, to blame it when the engine refuses."""

    value: object
    node: yaml.Node
    key: str


_Fields = dict[str, tuple[yaml.Node, yaml.Node]]
_TOP_KEYS = (
    "input",
    "output",
    "state",
    "watch",
    "engine",
    "styles",
    "defaults",
    "rules",
    "retry",
    "logging",
    "broker",
)
_RETRY_KEYS = tuple(f.name for f in dataclasses.fields(RetrySettings))
_FACE_KEYS = ("web", "hooks", "metrics")  # read by `stylewatch web`, hooks and metrics
_LOGGING_KEYS = ("level", "format")
_WATCH_KEYS = tuple(f.name for f in dataclasses.fields(WatchConfig))
_ENGINE_KEYS = (
    "device",
    "weights",
    "preprocess",
    "precision",
    "download",
    "style_cache_size",
    "batch_size",
    "stuck_seconds",
    "memory_budget_mb",
    "cuda_graphs",
    "threads",
    "snapshot_seconds",
    "devices",
)
_STYLE_KEYS = ("image", "images", "credit")
_RULE_KEYS = ("name", "match", "styles", "output")
_MERGE_TAG = "tag:yaml.org,2002:merge"
_INVALID = object()  # a value that failed to parse; the problem is already recorded


class _Loader:
    def __init__(self, shown: Path, resolved: Path, *, require_input: bool = True) -> None:
        self.shown = shown  # the path as the user wrote it, for messages
        self.require_input = require_input
        self.path = resolved
        self.base = resolved.parent
        self.problems: list[Problem] = []
        self.broken_styles: set[str] = set()  # defined, but with problems of their own
        self._constructor = yaml.SafeLoader("")

    # -- the document

    def load(self, text: str) -> Config:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            line, message = yaml_syntax_problem(exc, text)
            raise ConfigError([Problem(self.shown, line, "", message)]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([Problem(self.shown, None, "", f"invalid YAML: {exc}")]) from None
        if root is None:
            raise ConfigError([Problem(self.shown, None, "", "the config is empty")])
        top = self.mapping(root, "")
        if top is None:
            raise ConfigError(self.problems)
        self.check_keys(top, (*_TOP_KEYS, *_FACE_KEYS), "")
        folders = {name: self.folder(top, name, root) for name in ("input", "output", "state")}
        watch = self.watch(top.get("watch"))
        retry = self.retry(top.get("retry"))
        engine = self.engine(top.get("engine"))
        logging_settings = self.logging(top.get("logging"))
        broker = self.broker(top.get("broker"))
        defaults_layer = self.overrides(
            self.section(top.get("defaults"), "defaults", SETTING_KEYS), "defaults"
        )
        defaults = self.resolve([defaults_layer], root, "defaults")
        styles, style_layers = self.styles(top.get("styles"), root, defaults_layer)
        rules = self.rules(top.get("rules"), root, styles, style_layers, defaults_layer)
        self.check_folders(top, folders)
        web = self.web(top.get("web"))
        hooks = self.hooks(top.get("hooks"))
        metrics = self.metrics(top.get("metrics"))
        input_, output, state = folders["input"], folders["output"], folders["state"]
        # Each None below comes with a recorded problem; the test only narrows the types.
        if self.problems or input_ is None or output is None or state is None or defaults is None:
            raise ConfigError(self.problems)
        return Config(
            path=self.path,
            input=input_,
            output=output,
            state=state,
            watch=watch,
            engine=engine,
            styles=MappingProxyType(styles),
            defaults=defaults,
            rules=tuple(rules),
            retry=retry,
            web=web,
            hooks=hooks,
            metrics=metrics,
            logging=logging_settings,
            broker=broker,
        )

    def folder(self, top: _Fields, name: str, root: yaml.Node) -> Path | None:
        if name not in top:
            self.problem(root, name, f"missing: the {name} folder is required")
            return None
        return self.path_value(top[name][1], name)

    def check_folders(self, top: _Fields, folders: dict[str, Path | None]) -> None:
        def where(name: str) -> yaml.Node:
            return top[name][1]

        input_, output, state = folders["input"], folders["output"], folders["state"]
        if input_ is not None and not input_.is_dir():
            if input_.exists():
                self.problem(where("input"), "input", f"{input_} is not a folder")
            elif self.require_input:
                self.problem(where("input"), "input", f"{input_} does not exist")
        for name in ("output", "state"):
            folder = folders[name]
            if folder is None:
                continue
            if folder.exists() and not folder.is_dir():
                # The journal's commands still answer: they are most wanted when this breaks.
                if self.require_input or name == "state":
                    self.problem(where(name), name, f"{folder} exists and is not a folder")
            elif not folder.parent.is_dir():
                self.problem(
                    where(name),
                    name,
                    f"{folder.parent} does not exist (the daemon creates "
                    f"{folder.name}/ but not the folders above it)",
                )
            if folder == input_:
                self.problem(where(name), name, f"the {name} folder cannot be the input folder")
            elif input_ is not None and input_.is_relative_to(folder):
                self.problem(
                    where("input"),
                    "input",
                    f"the input folder is inside the {name} folder ({folder}): "
                    "the daemon would watch its own files",
                )
        if output is not None and output == state:
            self.problem(where("state"), "state", "the state folder cannot be the output folder")

    # -- sections

    def watch(self, entry: tuple[yaml.Node, yaml.Node] | None) -> WatchConfig:
        fields = self.section(entry, "watch", _WATCH_KEYS)
        changes: dict[str, object] = {}
        for name, (_, node) in fields.items():
            key = f"watch.{name}"
            value: object = _INVALID
            if name == "mode":
                value = self.choice(node, key, WATCH_MODES)
            elif name == "poll_interval":
                value = self.real(node, key, lambda v: 0 < v <= 3600, "between 0 and 3600 seconds")
            elif name in ("settle_seconds", "rescan_interval"):
                value = self.real(node, key, lambda v: v >= 0, "a number of seconds >= 0")
            elif name == "recursive":
                value = self.boolean(node, key)
            elif name == "extensions":
                value = self.extensions(node, key)
            elif name == "ignore":
                value = self.ignore_patterns(node, key)
            if value is not _INVALID:
                changes[name] = value
        return dataclasses.replace(WatchConfig(), **changes)  # type: ignore[arg-type]

    def retry(self, entry: tuple[yaml.Node, yaml.Node] | None) -> RetrySettings:
        fields = self.section(entry, "retry", _RETRY_KEYS)
        changes: dict[str, object] = {}
        for name, (_, node) in fields.items():
            key = f"retry.{name}"
            if name == "max_attempts":
                value = self.integer(node, key, lambda v: 1 <= v <= 100, "between 1 and 100")
            elif name == "give_up_after":
                value = self.real(node, key, lambda v: v >= 0, "a number of seconds >= 0")
            else:
                value = self.real(node, key, lambda v: 0 < v <= 86400, "between 0 and 86400 s")
            if value is not _INVALID:
                changes[name] = value
        retry = dataclasses.replace(RetrySettings(), **changes)  # type: ignore[arg-type]
        if retry.first_delay > retry.max_delay and entry is not None:
            self.problem(
                entry[1],
                "retry.first_delay",
                f"must not be longer than retry.max_delay ({retry.max_delay:g} s)",
            )
        return retry

    def web(self, entry: tuple[yaml.Node, yaml.Node] | None) -> WebConfig:
        fields = self.section(entry, "web", ("listen", "token", "show_sources"))
        changes: dict[str, object] = {}
        for name, (_, node) in fields.items():
            key = f"web.{name}"
            value: object = _INVALID
            if name == "listen":
                value = self.text(node, key)
                if isinstance(value, str):
                    try:
                        parse_listen(value)
                    except ValueError as exc:
                        self.problem(node, key, str(exc))
                        value = _INVALID
            elif name == "token":
                value = None if self.scalar(node) is None else self.text(node, key)
                if isinstance(value, str) and len(value.strip()) < MIN_TOKEN_LENGTH:
                    self.problem(
                        node,
                        key,
                        f"use at least {MIN_TOKEN_LENGTH} random characters "
                        "(`openssl rand -hex 16`)",
                    )
                    value = _INVALID
            elif name == "show_sources":
                value = self.boolean(node, key)
            if value is not _INVALID:
                changes[name] = value
        return dataclasses.replace(WebConfig(), **changes)  # type: ignore[arg-type]

    def hooks(self, entry: tuple[yaml.Node, yaml.Node] | None) -> HooksConfig:
        fields = self.section(entry, "hooks", ("on_done", "on_failed", "timeout_seconds"))
        changes: dict[str, object] = {}
        for name, (_, node) in fields.items():
            key = f"hooks.{name}"
            value: object = _INVALID
            if name in ("on_done", "on_failed"):
                if not isinstance(node, yaml.SequenceNode):
                    self.problem(
                        node,
                        key,
                        "expected a command as a list, [program, arg, ...]: it is "
                        "run without a shell",
                    )
                    continue
                items = self.texts(node, key)
                if items is not None:
                    value = tuple(text for _, text in items)
                    if value and not str(value[0]).strip():
                        self.problem(node, key, "the program (first item) is empty")
                        value = _INVALID
            elif name == "timeout_seconds":
                value = self.real(node, key, lambda v: 0 < v <= 3600, "between 0 and 3600 seconds")
            if value is not _INVALID:
                changes[name] = value
        return dataclasses.replace(HooksConfig(), **changes)  # type: ignore[arg-type]

    def metrics(self, entry: tuple[yaml.Node, yaml.Node] | None) -> MetricsConfig:
        fields = self.section(entry, "metrics", ("textfile", "interval_seconds"))
        changes: dict[str, object] = {}
        for name, (_, node) in fields.items():
            key = f"metrics.{name}"
            value: object = _INVALID
            if name == "textfile":
                value = None if self.scalar(node) is None else self.path_value(node, key)
                if isinstance(value, Path) and not value.parent.is_dir():
                    self.problem(node, key, f"{value.parent} does not exist")
                    value = _INVALID
                elif value is None and self.scalar(node) is not None:
                    value = _INVALID
            elif name == "interval_seconds":
                value = self.real(node, key, lambda v: 1 <= v <= 3600, "between 1 and 3600 seconds")
            if value is not _INVALID:
                changes[name] = value
        return dataclasses.replace(MetricsConfig(), **changes)  # type: ignore[arg-type]

    def extensions(self, node: yaml.Node, key: str) -> object:
        items = self.texts(node, key)
        if items is None:
            return _INVALID
        found: list[str] = []
        for index, (item, text) in enumerate(items):
            ext = text.strip().lstrip(".").lower()
            if not ext or "/" in ext:
                self.problem(item, f"{key}[{index}]", f"{text!r} is not a file extension")
            elif ext not in found:
                found.append(ext)
        if not items:
            self.problem(node, key, "name at least one extension, or no photo will be picked up")
        return tuple(found)

    def ignore_patterns(self, node: yaml.Node, key: str) -> object:
        items = self.texts(node, key)
        if items is None:
            return _INVALID
        for index, (item, text) in enumerate(items):
            if not text or text.startswith("/") or ".." in text.split("/"):
                self.problem(
                    item,
                    f"{key}[{index}]",
                    f"{text!r} is not a usable pattern: patterns are names (`*.bak`) or globs "
                    "relative to the input folder (`archive/**`)",
                )
        return tuple(text for _, text in items)

    def engine(self, entry: tuple[yaml.Node, yaml.Node] | None) -> EngineSettings:
        fields = self.section(entry, "engine", _ENGINE_KEYS)
        changes: dict[str, object] = {}
        batch_size: object = 4
        stuck_seconds: object = 600.0
        threads: object = None
        snapshot_seconds: object = 10.0
        devices: object = ("auto",)
        for name, (_, node) in fields.items():
            key = f"engine.{name}"
            value: object = _INVALID
            if name == "device":
                value = self.text(node, key)
                if isinstance(value, str) and not DEVICE.fullmatch(value):
                    self.problem(
                        node,
                        key,
                        f"unknown device {value!r}{_suggest(value, ('auto', 'cpu', 'cuda'))}; "
                        "use auto, cpu, cuda, cuda:N or mps",
                    )
                    value = _INVALID
            elif name == "weights":
                # A missing file is not a config error: `stylewatch weights fetch` puts it there,
                # and `check` and the service's start say where to get it.
                value = self.path_value(node, key)
                if isinstance(value, Path) and value.is_dir():
                    self.problem(node, key, f"{value} is a folder; name the checkpoint file")
                    value = _INVALID
            elif name == "preprocess":
                value = self.choice(node, key, PREPROCESSES)
            elif name == "precision":
                value = self.choice(node, key, PRECISIONS)
            elif name in ("download", "cuda_graphs"):
                value = self.boolean(node, key)
            elif name == "memory_budget_mb":
                value = self.integer(node, key, lambda v: v >= 1, "a number of MiB >= 1")
            elif name == "style_cache_size":
                value = self.integer(node, key, lambda v: 1 <= v <= 4096, "between 1 and 4096")
            elif name == "batch_size":
                batch_size = self.integer(node, key, lambda v: 1 <= v <= 64, "between 1 and 64")
            elif name == "stuck_seconds":
                stuck_seconds = self.real(node, key, lambda v: v > 0, "a number of seconds > 0")
            elif name == "snapshot_seconds":
                snapshot_seconds = self.real(
                    node, key, lambda v: v >= 0, "a number of seconds >= 0"
                )
            elif name == "threads":
                threads = self.integer(node, key, lambda v: 1 <= v <= 1024, "between 1 and 1024")
            elif name == "devices":
                devices = self.devices(node, key, fields.get("device"))
            if value is not _INVALID:
                changes[name] = value
        try:
            engine = EngineConfig(**changes)  # type: ignore[arg-type]
        except ValueError as exc:
            self.problem(entry[1] if entry else None, "engine", str(exc))
            engine = EngineConfig()
        return EngineSettings(
            engine,
            batch_size if isinstance(batch_size, int) else 4,
            float(stuck_seconds) if isinstance(stuck_seconds, int | float) else 600.0,
            threads if isinstance(threads, int) else None,
            float(snapshot_seconds) if isinstance(snapshot_seconds, int | float) else 10.0,
            devices if isinstance(devices, tuple) else ("auto",),
        )

    def devices(
        self, node: yaml.Node, key: str, device: tuple[yaml.Node, yaml.Node] | None
    ) -> object:
        """`auto`, `all`, or a list of devices, one worker process each."""
        if isinstance(node, yaml.ScalarNode):
            value = self.text(node, key)
            if value in ("auto", "all"):
                return (value,)
            if isinstance(value, str):
                self.problem(
                    node, key, "expected auto, all, or a list of devices such as [cuda:0, cuda:1]"
                )
            return _INVALID
        items = self.texts(node, key) or []
        found: list[str] = []
        problems = len(self.problems)
        for item, text in items:
            if not DEVICE.fullmatch(text) or text == "auto":
                self.problem(
                    item,
                    key,
                    f"unknown device {text!r}{_suggest(text, ('cpu', 'cuda', 'mps'))}; "
                    "use cpu, cuda:N or mps (each entry is one worker process)",
                )
            elif text.startswith("cuda") and text in found:
                self.problem(item, key, f"{text} is listed twice: one worker per GPU")
            found.append(text)
        if not items and isinstance(node, yaml.SequenceNode):
            self.problem(node, key, "name at least one device, or write auto")
        if device is not None and self.scalar(device[1]) not in ("auto", None):
            self.problem(
                device[1],
                "engine.device",
                "set engine.device or engine.devices, not both: with devices, each worker "
                "runs on its own entry",
            )
        return tuple(found) if found and len(self.problems) == problems else _INVALID

    def broker(self, entry: tuple[yaml.Node, yaml.Node] | None) -> BrokerConfig:
        fields = self.section(
            entry, "broker", tuple(f.name for f in dataclasses.fields(BrokerConfig))
        )
        changes: dict[str, object] = {}
        for name, (_, node) in fields.items():
            key = f"broker.{name}"
            value: object = _INVALID
            if name == "url":
                value = self.text(node, key)
                if isinstance(value, str) and not value.startswith(
                    ("redis://", "rediss://", "unix://")
                ):
                    self.problem(
                        node,
                        key,
                        "expected redis://host:port/db, rediss://host:port/db or "
                        "unix:///path/to/redis.sock",
                    )
                    value = _INVALID
            elif name == "namespace":
                value = self.text(node, key)
                if isinstance(value, str) and STYLE_NAME.fullmatch(value) is None:
                    self.problem(node, key, "use letters, digits, `_` and `-`")
                    value = _INVALID
            elif name == "lease_seconds":
                value = self.real(node, key, lambda v: 5 <= v <= 3600, "between 5 and 3600 s")
            elif name == "max_attempts":
                value = self.integer(node, key, lambda v: 1 <= v <= 100, "between 1 and 100")
            if value is not _INVALID:
                changes[name] = value
        return dataclasses.replace(BrokerConfig(), **changes)  # type: ignore[arg-type]

    def logging(self, entry: tuple[yaml.Node, yaml.Node] | None) -> LoggingSettings:
        fields = self.section(entry, "logging", _LOGGING_KEYS)
        changes: dict[str, object] = {}
        for name, (_, node) in fields.items():
            choices = tuple(LEVELS) if name == "level" else RENDERERS
            value = self.choice(node, f"logging.{name}", choices)
            if value is not _INVALID:
                changes[name] = value
        return dataclasses.replace(LoggingSettings(), **changes)  # type: ignore[arg-type]

    def styles(
        self,
        entry: tuple[yaml.Node, yaml.Node] | None,
        root: yaml.Node,
        defaults: dict[str, _Setting],
    ) -> tuple[dict[str, Style], dict[str, dict[str, _Setting]]]:
        styles: dict[str, Style] = {}
        layers: dict[str, dict[str, _Setting]] = {}
        if entry is None:
            self.problem(root, "styles", "missing: name at least one style")
            return styles, layers
        fields = self.mapping(entry[1], "styles")
        if fields is None:
            return styles, layers
        if not fields:
            self.problem(entry[1], "styles", "name at least one style")
        for name, (name_node, node) in fields.items():
            key = f"styles.{name}"
            valid_name = bool(STYLE_NAME.fullmatch(name))
            if not valid_name:
                self.problem(
                    name_node,
                    key,
                    "a style name may only use letters, digits, '-' and '_' (it becomes part of "
                    "output file names)",
                )
            style_fields = self.mapping(node, key)
            if style_fields is None:
                self.broken_styles.add(name)
                continue
            self.check_keys(style_fields, _STYLE_KEYS + SETTING_KEYS, key)
            images = self.style_images(style_fields, node, key)
            credit = self.credit(style_fields.get("credit"), f"{key}.credit")
            layer = self.overrides(style_fields, key)
            layers[name] = layer
            # Settings are checked once per style here, so an unused style still gets checked.
            self.resolve([defaults, layer], node, key)
            if not (images and valid_name) or credit is _INVALID:
                self.broken_styles.add(name)
            else:
                styles[name] = Style(
                    name=name,
                    spec=StyleSpec(tuple(images), name=name),
                    overrides=MappingProxyType({k: s.value for k, s in layer.items()}),
                    credit=credit if isinstance(credit, Credit) else None,
                )
        return styles, layers

    def credit(self, entry: tuple[yaml.Node, yaml.Node] | None, key: str) -> object:
        """A style's `credit:` mapping (artist, title, year, licence; all optional texts)."""
        if entry is None:
            return None
        fields = self.mapping(entry[1], key)
        if fields is None:
            return _INVALID
        self.check_keys(fields, CREDIT_KEYS, key)
        values: dict[str, str] = {}
        ok = True
        for name in CREDIT_KEYS:
            if name not in fields:
                continue
            node = fields[name][1]
            value = self.scalar(node)
            # YAML reads `year: 1889` as a number; a credit is text either way.
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                self.problem(node, f"{key}.{name}", f"expected text, got {self.describe(node)}")
                ok = False
            elif any(ord(c) < 32 or ord(c) == 127 for c in value) or len(value) > 500:
                self.problem(
                    node,
                    f"{key}.{name}",
                    "must be one line of at most 500 characters, without control characters",
                )
                ok = False
            elif value.strip():
                values[name] = value.strip()
        if not ok:
            return _INVALID
        return Credit(**values) if values else None

    def style_images(self, fields: _Fields, node: yaml.Node, key: str) -> list[StyleImage]:
        if ("image" in fields) == ("images" in fields):
            self.problem(node, key, "give either `image: path` or `images: [path, ...]`")
            return []
        if "image" in fields:
            path = self.existing_file(fields["image"][1], f"{key}.image")
            return [] if path is None else [StyleImage(path)]
        list_node = fields["images"][1]
        if not isinstance(list_node, yaml.SequenceNode) or not list_node.value:
            self.problem(list_node, f"{key}.images", "expected a list of paintings")
            return []
        images: list[StyleImage] = []
        for index, item in enumerate(list_node.value):
            item_key = f"{key}.images[{index}]"
            weight: object = 1.0
            if isinstance(item, yaml.MappingNode):
                item_fields = self.mapping(item, item_key) or {}
                self.check_keys(item_fields, ("path", "weight"), item_key)
                if "path" not in item_fields:
                    self.problem(item, item_key, "missing: path")
                    continue
                path = self.existing_file(item_fields["path"][1], f"{item_key}.path")
                if "weight" in item_fields:
                    weight = self.real(
                        item_fields["weight"][1], f"{item_key}.weight", lambda v: v > 0, "> 0"
                    )
            else:
                path = self.existing_file(item, item_key)
            if path is not None and isinstance(weight, float):
                images.append(StyleImage(path, weight))
        return images if len(images) == len(list_node.value) else []

    def rules(
        self,
        entry: tuple[yaml.Node, yaml.Node] | None,
        root: yaml.Node,
        styles: dict[str, Style],
        style_layers: dict[str, dict[str, _Setting]],
        defaults: dict[str, _Setting],
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
        style_layers: dict[str, dict[str, _Setting]],
        defaults: dict[str, _Setting],
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
        targets: list[Target] = []
        for name in names:
            settings = self.resolve(
                [defaults, style_layers.get(name, {}), layer], fields["styles"][1], f"{key}.styles"
            )
            if settings is None or name not in styles:
                ok = False
            else:
                targets.append(Target(name, styles[name].spec, settings, styles[name].credit))
        template = self.template(fields, node, key=key, names=names, targets=targets)
        if not ok or template is None or patterns is None:
            return None
        return Rule(
            index=index,
            line=node.start_mark.line + 1,
            match=patterns,
            styles=tuple(names),
            output=template,
            targets=tuple(targets),
            name=rule_name,
            overrides=MappingProxyType({k: s.value for k, s in layer.items()}),
            matcher=wcglob.compile(list(patterns), flags=MATCH_FLAGS),
        )

    def globs(self, fields: _Fields, node: yaml.Node, key: str) -> tuple[str, ...] | None:
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
        self, fields: _Fields, node: yaml.Node, key: str, styles: dict[str, Style]
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
                hint = _suggest(name, list(styles))
                self.problem(item, f"{key}.styles", f"unknown style {name!r}{hint}")
        return tuple(names)

    def template(
        self,
        fields: _Fields,
        rule_node: yaml.Node,
        *,
        key: str,
        names: Sequence[str],
        targets: Sequence[Target],
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

    # -- settings

    def overrides(self, fields: _Fields, key: str) -> dict[str, _Setting]:
        """The setting keys of a mapping (defaults, a style, a rule), as the engine's types."""
        layer: dict[str, _Setting] = {}
        preset: _Setting | None = None
        for name, (_, node) in fields.items():
            if name not in SETTING_KEYS:
                continue  # the section's own keys, or unknown ones (reported by check_keys)
            setting_key = f"{key}.{name}"
            if name == "preset":
                chosen = self.choice(node, setting_key, tuple(PRESETS))
                if chosen is not _INVALID:
                    preset = _Setting(chosen, node, setting_key)
                continue
            if name == "format":
                value: object = self.output_format(node, setting_key)
            elif name == "quality":
                value = self.integer(
                    node, setting_key, lambda v: 1 <= v <= 100, "between 1 and 100"
                )
            elif name == "metadata":
                value = self.choice(node, setting_key, METADATA_POLICIES)
            else:
                value = self.typed(node, setting_key, _PARAM_TYPES[name])
            if value is not _INVALID:
                layer[name] = _Setting(value, node, setting_key)
        if preset is not None:
            for name, value in PRESETS[str(preset.value)].items():
                layer.setdefault(name, _Setting(value, preset.node, preset.key))
        return layer

    def resolve(
        self, layers: Sequence[dict[str, _Setting]], node: yaml.Node, key: str
    ) -> Settings | None:
        """Defaults, then a style's overrides, then a rule's, built into the engine's objects."""
        merged: dict[str, _Setting] = {}
        for layer in layers:
            # A step count and a time budget answer one question: the more specific layer's
            # answer wins over an earlier one's (a preset's steps are not an answer).
            if "steps" in layer and not layer["steps"].key.endswith(".preset"):
                merged.pop("seconds", None)
            elif "seconds" in layer and layer["seconds"].value is not None:
                merged.pop("steps", None)
            merged.update(layer)
        budgeted = "seconds" in merged and merged["seconds"].value is not None
        if budgeted and "steps" in merged and merged["steps"].key.endswith(".preset"):
            del merged["steps"]  # the budget plans the steps; the preset gives the shape
        params_args = {k: s.value for k, s in merged.items() if k in PARAM_KEYS}
        try:
            params = StyleParams(**params_args)  # type: ignore[arg-type]
            params.layer_weights()
            params.schedule()
        except ValueError as exc:
            blamed = _blame(str(exc), merged)
            if blamed is None:
                self.problem(node, key, str(exc))
            else:
                self.problem(blamed.node, blamed.key, str(exc))
            return None
        output_args = {k: s.value for k, s in merged.items() if k in OUTPUT_KEYS}
        return Settings(params, OutputSettings(**output_args))  # type: ignore[arg-type]

    def typed(self, node: yaml.Node, key: str, kind: object) -> object:
        """A value of one of StyleParams' field types."""
        origin, args = get_origin(kind), get_args(kind)
        if origin in (Union, types.UnionType) and type(None) in args:
            if self.scalar(node) is None:
                return None
            (inner,) = [a for a in args if a is not type(None)]
            return self.typed(node, key, inner)
        if origin is Literal:
            return self.choice(node, key, tuple(str(a) for a in args))
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = node.value if isinstance(node, yaml.SequenceNode) else [node]
            values = [self.typed(item, f"{key}[{i}]", args[0]) for i, item in enumerate(items)]
            return _INVALID if _INVALID in values else tuple(values)
        simple: dict[object, Callable[[yaml.Node, str], object]] = {
            bool: self.boolean,
            int: self.integer,
            float: self.real,
            str: self.text,
            Path: self.existing_file,
        }
        if kind not in simple:
            self.problem(node, key, "this setting cannot be set from the config")
            return _INVALID
        return simple[kind](node, key)

    def output_format(self, node: yaml.Node, key: str) -> object:
        value = self.scalar(node)
        if isinstance(value, str) and value.lower() == "same":
            return "same"
        if isinstance(value, str):
            # An extension names its format too (`jpg`), in any case.
            row = formats.by_extension(value)
            if row is None and value.lower() in OUTPUT_FORMATS:
                row = formats.by_name(value)
            if row is not None and row.writable:
                return row.name
        return self.choice(node, key, OUTPUT_FORMATS)

    # -- values

    def problem(self, node: yaml.Node | None, key: str, message: str) -> None:
        line = None if node is None else node.start_mark.line + 1
        self.problems.append(Problem(self.shown, line, key, message))

    def section(
        self, entry: tuple[yaml.Node, yaml.Node] | None, key: str, allowed: Sequence[str]
    ) -> _Fields:
        if entry is None:
            return {}
        fields = self.mapping(entry[1], key)
        if fields is None:
            return {}
        self.check_keys(fields, allowed, key)
        return {k: v for k, v in fields.items() if k in allowed}

    def check_keys(self, fields: _Fields, allowed: Sequence[str], key: str) -> None:
        for name, (name_node, _) in fields.items():
            if name not in allowed:
                self.problem(name_node, _join(key, name), f"unknown key{_suggest(name, allowed)}")

    def mapping(self, node: yaml.Node, key: str) -> _Fields | None:
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
                self.problem(name_node, _join(key, name), "duplicate key")
            seen.add(name)
        try:
            # Applies `<<: *anchor` merge keys: the merged pairs go first, so explicit keys win.
            self._constructor.flatten_mapping(node)
        except yaml.YAMLError as exc:
            self.problem(node, key, f"invalid merge key: {exc}")
            return None
        fields: _Fields = {}
        for name_node, value_node in node.value:
            name = self.scalar(name_node)
            if isinstance(name, str):
                fields[name] = (name_node, value_node)
            else:
                self.problem(name_node, key, f"keys must be text, got {name!r} (quote it)")
        return fields

    def scalar(self, node: yaml.Node) -> object:
        if not isinstance(node, yaml.ScalarNode):
            return _INVALID
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError):
            # Explicit tags run their constructors: `!!int inbox` raises a plain ValueError.
            return _INVALID

    def describe(self, node: yaml.Node) -> str:
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        value = self.scalar(node)
        if value is _INVALID:
            return f"an unreadable {node.tag} value"
        return "nothing" if value is None else repr(value)

    def text(self, node: yaml.Node, key: str) -> object:
        value = self.scalar(node)
        if isinstance(value, str):
            return value
        self.problem(node, key, f"expected text, got {self.describe(node)}")
        return _INVALID

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
        return _INVALID

    def integer(
        self,
        node: yaml.Node,
        key: str,
        ok: Callable[[int], bool] = lambda v: True,
        wanted: str = "",
    ) -> object:
        value = self.scalar(node)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(node, key, f"expected a whole number, got {self.describe(node)}")
            return _INVALID
        if not ok(value):
            self.problem(node, key, f"must be {wanted}, got {value}")
            return _INVALID
        return value

    def real(
        self,
        node: yaml.Node,
        key: str,
        ok: Callable[[float], bool] = lambda v: True,
        wanted: str = "",
    ) -> object:
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
            return _INVALID
        if not ok(number):
            self.problem(node, key, f"must be {wanted}, got {number:g}")
            return _INVALID
        return number

    def choice(self, node: yaml.Node, key: str, choices: Sequence[str]) -> object:
        value = self.scalar(node)
        if isinstance(value, str) and value in choices:
            return value
        shown = repr(value) if isinstance(value, str) else self.describe(node)
        hint = _suggest(value.lower(), choices) if isinstance(value, str) else ""
        self.problem(node, key, f"{shown} is not one of {', '.join(choices)}{hint}")
        return _INVALID

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


# ---------------------------------------------------------------------------------------------
# Small pure helpers


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _suggest(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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


def _blame(message: str, merged: Mapping[str, _Setting]) -> _Setting | None:
    """The setting an engine ValueError is about: the one it names, else one it quotes."""
    for name in sorted(merged, key=len, reverse=True):
        if re.search(rf"\b{re.escape(name)}\b", message):
            return merged[name]
    for setting in merged.values():
        values = setting.value if isinstance(setting.value, tuple) else (setting.value,)
        if any(isinstance(v, str) and repr(v) in message for v in values):
            return setting
    return None
