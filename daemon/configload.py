"""Loading a config file: the document's sections, read by their schema, into a `Config`.

daemon/confignodes.py reads typed values from YAML nodes; daemon/configsettings.py the settings
and styles; daemon/configrules.py the rules. This module reads the document itself: the folders,
the sections whose fields describe themselves (watch, retry, engine, logging, broker, web,
hooks, metrics) and the checks between their values.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import yaml

from daemon.config import (
    SETTING_KEYS,
    BrokerConfig,
    Config,
    EngineSettings,
    HooksConfig,
    LoggingSettings,
    MetricsConfig,
    RetrySettings,
    WatchConfig,
    WebConfig,
)
from daemon.confignodes import INVALID, Fields, yaml_syntax_problem
from daemon.configrules import RuleReader
from daemon.configsettings import SETTINGS
from daemon.errors import ConfigError, Problem
from daemon.schema import DEVICE, ENGINE_CONFIG, Field, fields_of, suggest
from engine.params import EngineConfig

_Section = TypeVar("_Section")

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
    "web",  # read by `stylewatch web`
    "hooks",
    "metrics",
)
# `engine:` holds the engine's EngineConfig and the daemon's EngineSettings side by side.
_ENGINE = fields_of(EngineConfig, ENGINE_CONFIG)
_ENGINE_SETTINGS = fields_of(EngineSettings)

# Every section whose keys the schema describes, as config.example.yaml documents them.
# `defaults` (as a style and a rule) also takes `preset`, a name from engine.params.PRESETS.
SCHEMA: Mapping[str, Mapping[str, Field]] = {
    "watch": fields_of(WatchConfig),
    "engine": {**_ENGINE, **_ENGINE_SETTINGS},
    "logging": fields_of(LoggingSettings),
    "retry": fields_of(RetrySettings),
    "defaults": SETTINGS,
    "web": fields_of(WebConfig),
    "hooks": fields_of(HooksConfig),
    "metrics": fields_of(MetricsConfig),
    "broker": fields_of(BrokerConfig),
}


def read_config(path: str | Path, *, require_input: bool = True) -> Config:
    """daemon.config.load_config: read and validate the config file, or raise ConfigError."""
    shown = Path(path)
    try:
        text = shown.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(shown, None, "", f"cannot read the config: {exc}")]) from None
    resolved = Path(path).resolve()
    return Loader(shown, resolved, require_input=require_input).load(text)


class Loader(RuleReader):
    def __init__(self, shown: Path, resolved: Path, *, require_input: bool = True) -> None:
        super().__init__(shown, resolved.parent, require_input=require_input)
        self.path = resolved

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
        self.check_keys(top, _TOP_KEYS, "")
        folders = {name: self.folder(top, name, root) for name in ("input", "output", "state")}
        watch = self.read_section(WatchConfig, top.get("watch"), "watch")
        retry = self.retry(top.get("retry"))
        engine = self.engine(top.get("engine"))
        logging_settings = self.read_section(LoggingSettings, top.get("logging"), "logging")
        broker = self.read_section(BrokerConfig, top.get("broker"), "broker")
        defaults_layer = self.overrides(
            self.section(top.get("defaults"), "defaults", SETTING_KEYS), "defaults"
        )
        defaults = self.resolve([defaults_layer], root, "defaults")
        styles, style_layers = self.styles(top.get("styles"), root, defaults_layer)
        rules = self.rules(top.get("rules"), root, styles, style_layers, defaults_layer)
        self.check_folders(top, folders)
        web = self.read_section(WebConfig, top.get("web"), "web")
        hooks = self.read_section(HooksConfig, top.get("hooks"), "hooks")
        metrics = self.read_section(MetricsConfig, top.get("metrics"), "metrics")
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

    def folder(self, top: Fields, name: str, root: yaml.Node) -> Path | None:
        if name not in top:
            self.problem(root, name, f"missing: the {name} folder is required")
            return None
        return self.path_value(top[name][1], name)

    def check_folders(self, top: Fields, folders: dict[str, Path | None]) -> None:
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

    def read_section(
        self, cls: type[_Section], entry: tuple[yaml.Node, yaml.Node] | None, key: str
    ) -> _Section:
        """A section whose keys are the fields of `cls`, each read by its type and metadata."""
        schema = fields_of(cls)
        fields = self.section(entry, key, tuple(schema))
        return cls(**self.read_fields(fields, key, schema))

    def retry(self, entry: tuple[yaml.Node, yaml.Node] | None) -> RetrySettings:
        retry = self.read_section(RetrySettings, entry, "retry")
        if retry.first_delay > retry.max_delay and entry is not None:
            self.problem(
                entry[1],
                "retry.first_delay",
                f"must not be longer than retry.max_delay ({retry.max_delay:g} s)",
            )
        return retry

    def engine(self, entry: tuple[yaml.Node, yaml.Node] | None) -> EngineSettings:
        fields = self.section(entry, "engine", (*_ENGINE, *_ENGINE_SETTINGS))
        device = fields.get("device")
        values = self.read_fields(
            fields,
            "engine",
            {**_ENGINE, **_ENGINE_SETTINGS},
            special={"devices": lambda node, key: self.devices(node, key, device)},
        )
        given = {k: v for k, v in values.items() if k in _ENGINE}
        try:
            # The schema has checked every value already; the engine's own checks stay the net.
            engine = EngineConfig(**given)  # type: ignore[arg-type]
        except ValueError as exc:
            self.problem(entry[1] if entry else None, "engine", str(exc))
            engine = EngineConfig()
        own = {k: v for k, v in values.items() if k in _ENGINE_SETTINGS}
        return EngineSettings(engine, **own)  # type: ignore[arg-type]

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
            return INVALID
        items = self.texts(node, key) or []
        found: list[str] = []
        problems = len(self.problems)
        for item, text in items:
            if not DEVICE.fullmatch(text) or text == "auto":
                self.problem(
                    item,
                    key,
                    f"unknown device {text!r}{suggest(text, ('cpu', 'cuda', 'mps'))}; "
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
        return tuple(found) if found and len(self.problems) == problems else INVALID
