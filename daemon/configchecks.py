"""Checks of single config values, named by the fields of daemon/config.py: each takes a value
already read as its field's type and returns a problem's message, or None when it is fine. Also
the parsers of single values: an output template, a listen address, a relative path.
Nothing here reads YAML or knows where a value was written: the loader adds file, line and key.
"""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from daemon.schema import Items, suggest
from engine import formats

# "same", or the name of a format an output can take (engine.formats).
OUTPUT_FORMATS: tuple[str, ...] = ("same", *(f.name for f in formats.WRITABLE))
STYLE_NAME = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
DEFAULT_LISTEN = "127.0.0.1:8750"
MIN_TOKEN_LENGTH = 16  # a token short enough to guess protects nothing
PLACEHOLDERS: tuple[str, ...] = ("dir", "stem", "ext", "style", "rule")
# A hook's command: argv, never run through a shell.
COMMAND = Items(
    list_only="expected a command as a list, [program, arg, ...]: it is run without a shell"
)


def check_extension(text: str) -> str | None:
    ext = text.strip().lstrip(".").lower()
    return f"{text!r} is not a file extension" if not ext or "/" in ext else None


def clean_extensions(found: tuple[str, ...]) -> tuple[str, ...]:
    # Lower-case, without the dot, each once: `.JPG` and `jpg` are one extension.
    return tuple(dict.fromkeys(text.strip().lstrip(".").lower() for text in found))


def check_ignore_pattern(text: str) -> str | None:
    if not text or text.startswith("/") or ".." in text.split("/"):
        return (
            f"{text!r} is not a usable pattern: patterns are names (`*.bak`) or globs "
            "relative to the input folder (`archive/**`)"
        )
    return None


def check_listen(text: str) -> str | None:
    try:
        parse_listen(text)
    except ValueError as exc:
        return str(exc)
    return None


def check_token(text: str) -> str | None:
    if len(text.strip()) < MIN_TOKEN_LENGTH:
        return f"use at least {MIN_TOKEN_LENGTH} random characters (`openssl rand -hex 16`)"
    return None


def check_command(argv: tuple[str, ...]) -> str | None:
    return "the program (first item) is empty" if argv and not argv[0].strip() else None


def check_textfile(path: Path) -> str | None:
    return None if path.parent.is_dir() else f"{path.parent} does not exist"


def check_redis_url(text: str) -> str | None:
    if text.startswith(("redis://", "rediss://", "unix://")):
        return None
    return "expected redis://host:port/db, rediss://host:port/db or unix:///path/to/redis.sock"


def check_namespace(text: str) -> str | None:
    return None if STYLE_NAME.fullmatch(text) else "use letters, digits, `_` and `-`"


def output_format_alias(value: object) -> str | None:
    """`same`, a format's name or one of its extensions (`jpg`), in any case."""
    if not isinstance(value, str):
        return None
    if value.lower() == "same":
        return "same"
    row = formats.by_extension(value)
    if row is None and value.lower() in OUTPUT_FORMATS:
        row = formats.by_name(value)
    return row.name if row is not None and row.writable else None


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
                    f"unknown placeholder {{{name}}}{suggest(name, PLACEHOLDERS)}; "
                    f"placeholders are {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
                )
            if conversion or (spec and "{" in spec):
                raise ValueError(f"placeholder {{{name}}} may only carry a plain format spec")
        return cls(text)

    def render(self, *, dir: str, stem: str, ext: str, style: str, rule: str) -> PurePosixPath:
        """The output path of one photo; ValueError when it would leave the output folder."""
        text = self.text.format(dir=dir, stem=stem, ext=ext, style=style, rule=rule)
        return safe_relpath(text)
