"""Snapshots of running jobs in the state folder, so that a stop or a crash loses seconds of work,
not the whole optimisation.

One job, one pair of files in `state/snapshots/`: `<job id>.png` (the pixels being optimised,
lossless) and `<job id>.json` (where in the schedule they stand, and whose they are: the job's
fingerprint and settings hash, and the PNG's digest). Both are replaced atomically; the JSON is
written second and names the PNG's digest, so a crash between the two leaves a pair that does not
match, which is ignored. A snapshot that does not match its job (new content, new settings) is
ignored too: the job then starts from step 0, as it did before snapshots existed.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Protocol

import structlog
from PIL import Image

from daemon.outputs import write_atomic
from engine.params import Snapshot

log = structlog.get_logger()

FOLDER = "snapshots"  # under the state folder


class Job(Protocol):
    """Whose snapshot it is: a journal's job, or a task of a worker process."""

    @property
    def id(self) -> int: ...
    @property
    def source(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def settings_hash(self) -> str: ...


class SnapshotStore:
    """Saves, finds and deletes the snapshots of jobs; one worker thread uses it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, job: Job, snapshot: Snapshot) -> None:
        """Replace the job's snapshot; raises OSError (the caller logs it and goes on)."""
        buffer = io.BytesIO()
        snapshot.image.save(buffer, format="PNG", compress_level=1)  # fast: saved every few s
        data = buffer.getvalue()
        sidecar = {
            "job": job.id,
            "source": job.source,
            "fingerprint": job.fingerprint,
            "settings_hash": job.settings_hash,
            "schedule": [list(pair) for pair in snapshot.schedule],
            "scale": snapshot.scale,
            "step": snapshot.step,
            "png_sha256": hashlib.sha256(data).hexdigest(),
        }
        write_atomic(self._png(job.id), data, overwrite=True)
        write_atomic(self._json(job.id), json.dumps(sidecar).encode(), overwrite=True)

    def load(self, job: Job, index: int) -> Snapshot | None:
        """The job's snapshot as the engine takes it (at batch position `index`), or None when
        there is none or it does not belong to this job as it stands now."""
        try:
            sidecar = json.loads(self._json(job.id).read_text(encoding="utf-8"))
            data = self._png(job.id).read_bytes()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("snapshot_unreadable", source=job.source, error=str(exc))
            return None
        try:
            if (
                sidecar["fingerprint"] != job.fingerprint
                or sidecar["settings_hash"] != job.settings_hash
            ):
                reason = "the photo or its settings changed since it was taken"
            elif sidecar["png_sha256"] != hashlib.sha256(data).hexdigest():
                reason = "its image and its description do not match (a crash between them)"
            else:
                with Image.open(io.BytesIO(data)) as picture:
                    image = picture.convert("RGB")
                return Snapshot(
                    index=index,
                    schedule=tuple((int(e), int(n)) for e, n in sidecar["schedule"]),
                    scale=int(sidecar["scale"]),
                    step=int(sidecar["step"]),
                    image=image,
                )
        except (KeyError, TypeError, ValueError, OSError) as exc:
            reason = f"damaged: {exc}"
        log.warning("snapshot_ignored", source=job.source, reason=reason)
        self.delete(job.id)
        return None

    def delete(self, job_id: int) -> None:
        for path in (self._json(job_id), self._png(job_id)):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("snapshot_not_deleted", path=str(path), error=str(exc))

    def prune(self, live: set[int]) -> int:
        """Delete the snapshots of jobs that are no longer queued or running; returns how many."""
        removed = 0
        try:
            names = list(self.folder.iterdir())
        except FileNotFoundError:
            return 0
        for path in names:
            stem = path.name.split(".", 1)[0]
            if path.suffix in (".png", ".json") and stem.isdigit() and int(stem) not in live:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _png(self, job_id: int) -> Path:
        return self.folder / f"{job_id}.png"

    def _json(self, job_id: int) -> Path:
        return self.folder / f"{job_id}.json"
