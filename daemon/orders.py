"""Work orders: what the intake decided for one output of one photo, complete in itself.

The intake matches a photo to a rule once and writes down everything that shapes its artwork:
the source and its content fingerprint, the rule's name, the style's name and its paintings
(path, weight, content hash), the resolved settings, and the output's path, format, quality,
metadata policy and credit. The journal stores the order as canonical JSON; a worker, local or on
another host, executes it without the config or the rules. So a reload or a rule moved in the
list cannot change what a queued job means, and the same order always produces the same artwork.

Identity: `settings_hash` hashes the canonical JSON of what shapes the pixels and the file
(settings, paintings, format, quality): the journal's key for "this content in this style and
these settings". The metadata policy and the credit are outside it on purpose: changing them
must not redo photos (the reuse of artworks checks them separately).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.metadata import Credit
from engine.params import StyleImage, StyleParams, StyleSpec

__all__ = [
    "ORDER_VERSION",
    "OrderError",
    "Painting",
    "PaintingIds",
    "WorkOrder",
    "canonical",
    "hash_file",
]

ORDER_VERSION = 1


def hash_file(path: Path) -> str:
    """sha256 of the file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class OrderError(ValueError):
    """A stored order that cannot be read back (written by a newer stylewatch, or damaged)."""


def canonical(value: object) -> str:
    """Sorted, compact JSON: the same value always gives the same text, on every host."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Painting:
    path: str  # absolute, as the config resolved it
    weight: float = 1.0
    sha256: str = ""  # of the file's content at intake; "" when it could not be read then


@dataclass(frozen=True)
class WorkOrder:
    source: str  # relative to the input folder, POSIX separators
    fingerprint: str  # sha256 of the photo's content
    rule: str  # the rule's name (daemon/config.py)
    style: str  # the style's name
    paintings: tuple[Painting, ...]
    params: StyleParams
    output: str  # the output path the rule asks for, relative to the output folder
    format: str  # Pillow's name of a writable format (engine.formats)
    quality: int
    metadata: str = "private"  # what the output keeps of the photo's (engine.metadata)
    credit: Credit | None = None

    @property
    def style_spec(self) -> StyleSpec:
        return StyleSpec(
            tuple(StyleImage(Path(p.path), p.weight) for p in self.paintings), name=self.style
        )

    @property
    def settings_hash(self) -> str:
        """Identity of everything that shapes the artwork: a change makes new jobs."""
        key = {
            "params": _params_json(self.params),
            "paintings": [{"path": p.path, "weight": p.weight} for p in self.paintings],
            "format": self.format,
            "quality": self.quality,
        }
        return hashlib.sha256(canonical(key).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return canonical(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": ORDER_VERSION,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "rule": self.rule,
            "style": self.style,
            "paintings": [dataclasses.asdict(p) for p in self.paintings],
            "params": _params_json(self.params),
            "output": {
                "path": self.output,
                "format": self.format,
                "quality": self.quality,
                "metadata": self.metadata,
            },
            "credit": None if self.credit is None else dataclasses.asdict(self.credit),
        }

    @classmethod
    def from_json(cls, text: str) -> WorkOrder:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise OrderError(f"a work order is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkOrder:
        if not isinstance(data, Mapping) or data.get("v") != ORDER_VERSION:
            version = data.get("v") if isinstance(data, Mapping) else None
            raise OrderError(
                f"a work order of version {version!r}; this stylewatch reads version "
                f"{ORDER_VERSION}: run the same release on every host"
            )
        try:
            output = data["output"]
            credit = data["credit"]
            return cls(
                source=str(data["source"]),
                fingerprint=str(data["fingerprint"]),
                rule=str(data["rule"]),
                style=str(data["style"]),
                paintings=tuple(
                    Painting(str(p["path"]), float(p["weight"]), str(p["sha256"]))
                    for p in data["paintings"]
                ),
                params=_params_from_json(data["params"]),
                output=str(output["path"]),
                format=str(output["format"]),
                quality=int(output["quality"]),
                metadata=str(output["metadata"]),
                credit=None if credit is None else Credit(**credit),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise OrderError(f"a work order is incomplete or damaged: {exc!r}") from exc


def _params_json(params: StyleParams) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


_PATH_FIELDS = frozenset({"init_image"})


def _params_from_json(data: Mapping[str, Any]) -> StyleParams:
    known = {f.name for f in dataclasses.fields(StyleParams)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"settings this stylewatch does not know: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name, raw in data.items():
        if isinstance(raw, list):
            values[name] = tuple(raw)
        elif name in _PATH_FIELDS and raw is not None:
            values[name] = Path(raw)
        else:
            values[name] = raw
    return StyleParams(**values)


class PaintingIds:
    """Content hashes of paintings, cached while a file's stat is unchanged (the intake asks for
    them with every order; a painting is read again only when it changed)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[int, int, int, int], str]] = {}

    def of(self, spec: StyleSpec) -> tuple[Painting, ...]:
        return tuple(
            Painting(str(image.path), image.weight, self.digest(image.path))
            for image in spec.images
        )

    def digest(self, path: Path) -> str:
        """sha256 of the painting, or "" when it cannot be read now (a share away): the worker
        then meets the same trouble and retries, and the order still names the painting."""
        try:
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):
                return ""  # a pipe or a device would block the intake; the worker reports it
            key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            cached = self._cache.get(str(path))
            if cached is not None and cached[0] == key:
                return cached[1]
            digest = hash_file(path)
        except OSError:
            return ""
        self._cache[str(path)] = (key, digest)
        return digest
