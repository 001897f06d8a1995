"""The daemon's config as frozen objects: the data model, each setting described beside its field.

`load_config(path)` (daemon/configload.py) returns a `Config` or raises a `ConfigError` that lists
every problem found, each with the file, the line and the key path (`rules[1].styles`), and a
suggestion for a typo. Nothing downstream sees YAML or dicts: rules carry ready-made
`StyleParams` per style, built once at load time, so a setting the engine would refuse is refused
at load time, not on the first photo.

Each setting's default is its field's; its doc, bounds and unit are the field's metadata
(`setting(...)`, daemon/schema.py): the loader reads values by it, a test checks the example.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Literal

from wcmatch import fnmatch as wcfnmatch
from wcmatch import glob as wcglob

from daemon import configchecks as checks

# Importable from here, as they always were (the web server and the CLI use them).
from daemon.configchecks import DEFAULT_LISTEN as DEFAULT_LISTEN  # noqa: PLC0414
from daemon.configchecks import MIN_TOKEN_LENGTH as MIN_TOKEN_LENGTH  # noqa: PLC0414
from daemon.configchecks import OUTPUT_FORMATS as OUTPUT_FORMATS  # noqa: PLC0414
from daemon.configchecks import PLACEHOLDERS as PLACEHOLDERS  # noqa: PLC0414
from daemon.configchecks import STYLE_NAME as STYLE_NAME  # noqa: PLC0414
from daemon.configchecks import OutputTemplate as OutputTemplate  # noqa: PLC0414
from daemon.configchecks import is_loopback as is_loopback  # noqa: PLC0414
from daemon.configchecks import parse_listen as parse_listen  # noqa: PLC0414
from daemon.configchecks import safe_relpath as safe_relpath  # noqa: PLC0414
from daemon.errors import ConfigError, Problem  # noqa: F401  (re-exported, as before)
from daemon.logs import LEVELS, Renderer

# These lived here before daemon/mounts.py; callers and tests import them from here still.
from daemon.mounts import (  # noqa: F401
    NETWORK_FILESYSTEMS,
    filesystem_type,
    is_network_filesystem,
    parse_mountinfo,
)
from daemon.schema import DEVICE, Items, Range, setting  # noqa: F401  (DEVICE: re-exported)
from engine import formats
from engine.metadata import METADATA_POLICIES, Credit
from engine.params import EngineConfig, StyleParams, StyleSpec

WatchMode = Literal["auto", "native", "polling"]
ResolvedWatchMode = Literal["native", "polling"]

WATCH_MODES: tuple[str, ...] = ("auto", "native", "polling")
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

# A rule's name goes into output paths through `{rule}`: letters, digits, `_`, `-` and `.`.
RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)

PARAM_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(StyleParams))
OUTPUT_KEYS: tuple[str, ...] = ("format", "quality", "metadata")
# `preset` names a schedule from engine.params.PRESETS; keys beside it in the same mapping win.
SETTING_KEYS: tuple[str, ...] = (*PARAM_KEYS, *OUTPUT_KEYS, "preset")
CREDIT_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Credit))


# ---------------------------------------------------------------------------------------------
# The objects a config becomes


@dataclass(frozen=True)
class WatchConfig:
    mode: WatchMode = field(
        default="auto",
        metadata=setting("auto: polling on network and FUSE filesystems, native otherwise"),
    )
    poll_interval: float = field(
        default=2.0,
        metadata=setting(
            "seconds between directory scans in polling mode",
            check=Range(gt=0, le=3600),
            unit="seconds",
        ),
    )
    # A booth wants seconds; shares fed by slow copies need more.
    settle_seconds: float = field(
        default=2.0,
        metadata=setting(
            "how long size and mtime must stay unchanged before a file counts as complete",
            check=Range(ge=0),
            unit="seconds",
        ),
    )
    rescan_interval: float = field(
        default=300.0,
        metadata=setting(
            "full safety-net scan for missed events; 0 disables it",
            check=Range(ge=0),
            unit="seconds",
        ),
    )
    recursive: bool = field(default=True, metadata=setting("watch sub-folders too"))
    extensions: tuple[str, ...] = field(
        default=DEFAULT_EXTENSIONS,
        metadata=setting(
            "file extensions to consider: lower-case, without the dot",
            items=Items(
                each=checks.check_extension,
                empty="name at least one extension, or no photo will be picked up",
                clean=checks.clean_extensions,
            ),
        ),
    )
    ignore: tuple[str, ...] = field(
        default=(),
        metadata=setting(
            "the user's patterns to skip, on top of BUILTIN_IGNORES",
            items=Items(each=checks.check_ignore_pattern),
        ),
    )

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

    # Trouble that can pass (I/O errors, permissions, a painting or a share that is away): hours,
    # so that an outage overnight loses nothing; `stylewatch status` shows what waits.
    give_up_after: float = field(
        default=6 * 3600.0,
        metadata=setting(
            "passing trouble fails the photo for good this long after its first failure",
            check=Range(ge=0),
            unit="seconds",
        ),
    )
    first_delay: float = field(
        default=5.0,
        metadata=setting("the first wait after a failure", check=Range(gt=0, le=86400), unit="s"),
    )
    # Also how long a booth may wait after the trouble is gone before its photos move again.
    max_delay: float = field(
        default=60.0,
        metadata=setting(
            "the longest wait between two tries", check=Range(gt=0, le=86400), unit="s"
        ),
    )
    max_attempts: int = field(
        default=5,
        metadata=setting(
            "tries in all of errors of unknown kind and of crashes during a job",
            check=Range(ge=1, le=100),
        ),
    )


@dataclass(frozen=True)
class EngineSettings:
    """The `engine:` section: the engine's EngineConfig (its settings described in
    daemon/schema.py's ENGINE_CONFIG) and the daemon's own settings of its workers."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    batch_size: int = field(
        default=4,
        metadata=setting("photos of one style stylized together", check=Range(ge=1, le=64)),
    )
    # The service then stops answering systemd's watchdog, which restarts it: far above the
    # slowest step of a legitimate job.
    stuck_seconds: float = field(
        default=600.0,
        metadata=setting(
            "a batch that shows no progress for this long counts as stuck",
            check=Range(gt=0),
            unit="seconds",
        ),
    )
    # Lower it to leave cores to other services on the same machine.
    threads: int | None = field(
        default=None,
        metadata=setting(
            "CPU threads torch computes with; unset: one per physical core",
            check=Range(ge=1, le=1024),
        ),
    )
    # So that a stop or a crash resumes the job from there instead of from step 0.
    snapshot_seconds: float = field(
        default=10.0,
        metadata=setting(
            "a running job's image is saved to the state folder this often; 0: never",
            check=Range(ge=0),
            unit="seconds",
        ),
    )
    # ("auto",) is one worker on `device`; ("all",) one per CUDA GPU found at start; or devices
    # such as ("cuda:0", "cuda:1") or ("cpu", "cpu"). The loader reads it by hand (configload).
    devices: tuple[str, ...] = field(
        default=("auto",), metadata=setting("one worker process per entry")
    )


@dataclass(frozen=True)
class BrokerConfig:
    """Several hosts: the work goes through Redis Streams (daemon/broker/) when `url` is set."""

    url: str | None = field(
        default=None,
        metadata=setting(
            "redis://host:port/db, rediss://..., unix:///path/redis.sock",
            check=checks.check_redis_url,
        ),
    )
    # Installs that share one Redis server keep apart by it.
    namespace: str = field(
        default="stylewatch", metadata=setting("key prefix in Redis", check=checks.check_namespace)
    )
    # Another worker then takes the batch over.
    lease_seconds: float = field(
        default=60.0,
        metadata=setting(
            "a worker that has not renewed its batch's lease for this long is taken for dead",
            check=Range(ge=5, le=3600),
            unit="s",
        ),
    )
    max_attempts: int = field(
        default=3,
        metadata=setting(
            "a batch delivered this many times without a result fails its photos",
            check=Range(ge=1, le=100),
        ),
    )


@dataclass(frozen=True)
class LoggingSettings:
    """How `stylewatch run` logs; its --log-level and --log-format win over these."""

    level: str = field(
        default="info", metadata=setting("debug | info | warning | error", choices=tuple(LEVELS))
    )
    format: Renderer = field(
        default="auto",
        metadata=setting("auto: console on a terminal, JSON lines otherwise (journald)"),
    )


@dataclass(frozen=True)
class OutputSettings:
    # "same" keeps the photo's format when an output can take it (JPEG, PNG, WebP, AVIF), and
    # writes JPEG otherwise (HEIC, TIFF).
    format: str = field(
        default="same",
        metadata=setting(
            "same, or a format an output can take",
            choices=OUTPUT_FORMATS,
            alias=checks.output_format_alias,
        ),
    )
    quality: int = field(
        default=92,
        metadata=setting(
            "quality of the lossy formats (JPEG, WebP, AVIF)", check=Range(ge=1, le=100)
        ),
    )
    # engine.metadata: private (all but location and serial numbers), full, or minimal (only
    # what says how it was made).
    metadata: str = field(
        default="private",
        metadata=setting(
            "what of the photo's metadata the output keeps", choices=METADATA_POLICIES
        ),
    )

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
class StyleOutput:
    """One output of a rule: a style and the settings resolved for this (rule, style) pair."""

    style_name: str
    style: StyleSpec
    settings: Settings
    credit: Credit | None = None


@dataclass(frozen=True)
class Rule:
    index: int  # 0-based position in `rules`, as in error messages
    line: int
    match: tuple[str, ...]
    styles: tuple[str, ...]
    output: OutputTemplate
    outputs: tuple[StyleOutput, ...]  # one per style, in the order of `styles`
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


@dataclass(frozen=True)
class WebConfig:
    """`stylewatch web`: the booth page, the dashboard and /metrics."""

    listen: str = field(
        default=DEFAULT_LISTEN,
        metadata=setting(
            "HOST:PORT; any host but loopback needs a token", check=checks.check_listen
        ),
    )
    token: str | None = field(
        default=None,
        metadata=setting("checked on every route but /healthz when set", check=checks.check_token),
    )
    show_sources: bool = field(
        default=False, metadata=setting("serve the source photos beside the artworks")
    )


@dataclass(frozen=True)
class HooksConfig:
    """Commands run by the service after a job ends; argv lists, never through a shell."""

    on_done: tuple[str, ...] = field(
        default=(),
        metadata=setting(
            "run after an artwork is written", items=checks.COMMAND, check=checks.check_command
        ),
    )
    on_failed: tuple[str, ...] = field(
        default=(),
        metadata=setting(
            "run after a photo failed for good", items=checks.COMMAND, check=checks.check_command
        ),
    )
    timeout_seconds: float = field(
        default=30.0,
        metadata=setting(
            "a hook still running then is killed", check=Range(gt=0, le=3600), unit="seconds"
        ),
    )


@dataclass(frozen=True)
class MetricsConfig:
    # node_exporter's textfile collector: the service writes its metrics here atomically.
    textfile: Path | None = field(
        default=None, metadata=setting("the metrics file to write", check=checks.check_textfile)
    )
    interval_seconds: float = field(
        default=15.0,
        metadata=setting(
            "how often the textfile is rewritten (and at stop)",
            check=Range(ge=1, le=3600),
            unit="seconds",
        ),
    )


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


def load_config(path: str | Path, *, require_input: bool = True) -> Config:
    """Read and validate the config file; raises ConfigError listing every problem.

    require_input=False accepts an input folder that does not exist (yet, or any more), an
    output folder that something else stands in place of, and paintings that are away: the
    journal's commands (`status`, `retry`) need none of them, and are most wanted when they are
    away.
    """
    # Imported here: the loader builds the objects of this module, so it imports it.
    from daemon.configload import read_config

    return read_config(path, require_input=require_input)
