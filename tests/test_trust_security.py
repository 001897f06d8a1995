"""Trust: security. Symlinks out of the tree, templates that try to leave the output folder, file
modes, an output folder inside the input, and no listening socket."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

import pytest
from harness import (
    Fleet,
    OutputSpy,
    check_invariants,
    originals,
    output_names,
    photo,
    sha256,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import rules
from daemon.config import load_config
from daemon.errors import ConfigError


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def network_sockets(pid: int) -> list[str]:
    """The process's sockets that are IP sockets (any state) or listening Unix sockets."""
    mine = socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[9]) in mine:
                found.append(f"{table}: {line.strip()}")
    unix = Path("/proc/net/unix")
    if unix.exists():
        for line in unix.read_text().splitlines()[1:]:
            fields = line.split()
            # Flags 00010000: __SO_ACCEPTCON, a listening socket.
            if int(fields[6]) in mine and int(fields[3], 16) & 0x10000:
                found.append(f"unix listening: {line.strip()}")
    return found


def test_symlinks_out_and_loops_are_not_followed_and_modes_are_safe_and_no_socket_listens(
    fleet: Fleet, tmp_path: Path
) -> None:
    inbox, outbox = fleet.inbox, fleet.outbox
    secret = tmp_path / "secret"
    hidden = photo(secret / "private.jpg", (255, 0, 0))
    photo(secret / "album" / "deep.jpg", (0, 255, 0))
    daemon = fleet.daemon()
    good = photo(inbox / "good.jpg", (0, 0, 255))
    (inbox / "outside-file.jpg").symlink_to(hidden)
    (inbox / "outside-dir").symlink_to(secret, target_is_directory=True)
    (inbox / "loop-a.jpg").symlink_to(inbox / "loop-b.jpg")
    (inbox / "loop-b.jpg").symlink_to(inbox / "loop-a.jpg")
    (inbox / "self").symlink_to(inbox, target_is_directory=True)
    (inbox / "up").symlink_to("..", target_is_directory=True)
    (inbox / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    # Planted in the output folder: a dangling link where an output will go, and one at an
    # outside file. Neither may be written through, and the photos still get their outputs.
    outbox.mkdir()
    (outbox / "victim.jpg").symlink_to(tmp_path / "written-through.jpg")
    bait = tmp_path / "bait.jpg"
    bait.write_bytes(b"must stay as it is")
    (outbox / "bait.jpg").symlink_to(bait)
    victims = [photo(inbox / "victim.jpg", (9, 99, 9)), photo(inbox / "bait.jpg", (99, 9, 9))]
    secrets_before = {p: sha256(p) for p in secret.rglob("*.jpg")}
    before = os.umask(0)  # the daemon must not inherit a careless umask
    try:
        with OutputSpy(outbox) as spy:
            daemon.start()
            assert daemon.proc is not None
            (inbox / "late-outside.jpg").symlink_to(secret / "album" / "deep.jpg")
            # Events come in order: once this photo is done, the link's event was dealt with.
            marker = photo(inbox / "after-link.jpg", (1, 1, 1))
            daemon.wait(lambda: len(output_names(outbox)) >= 4, "the good photos' outputs")
            # Nothing listens: no IP socket at all, no listening Unix socket.
            assert network_sockets(daemon.proc.pid) == []
            assert daemon.stop() == 0
    finally:
        os.umask(before)
    expected = {"good.jpg", "victim~2.jpg", "bait~2.jpg", "after-link.jpg"}
    check_invariants(
        daemon,
        outbox=outbox,
        sources=originals([good, marker, *victims]),
        expected=expected,
        spy=spy,
    )
    assert (outbox / "victim.jpg").is_symlink()
    assert (outbox / "bait.jpg").is_symlink()
    assert not (tmp_path / "written-through.jpg").exists()
    assert bait.read_bytes() == b"must stay as it is"
    assert {p: sha256(p) for p in secret.rglob("*.jpg")} == secrets_before
    queued = {e["source"] for e in daemon.events() if e.get("event") == "job_queued"}
    assert queued == {"good.jpg", "victim.jpg", "bait.jpg", "after-link.jpg"}
    # Modes: nothing the daemon made is writable by group or others, whatever umask it got.
    made = [p for p in outbox.rglob("*") if not p.is_symlink()]
    made += [*(fleet.root / "state").rglob("*"), fleet.root / "state"]
    loose = {str(p): oct(p.stat().st_mode) for p in made if p.stat().st_mode & 0o022}
    assert loose == {}


def test_an_output_folder_inside_the_input_is_excluded_and_never_fed_back(
    fleet: Fleet,
) -> None:
    inbox = fleet.inbox
    daemon = fleet.daemon(output="inbox/_out", state="inbox/_state", rescan=1)
    made = [photo(inbox / "in" / f"p{i}.jpg", (i * 90, 9, 9)) for i in range(3)]
    outbox = inbox / "_out"
    with OutputSpy(outbox) as spy:
        daemon.start()
        daemon.wait(lambda: len(output_names(outbox)) == 3, "the outputs inside the input")
        scans = sum(e.get("event") == "scan_done" for e in daemon.events())
        daemon.wait(
            lambda: sum(e.get("event") == "scan_done" for e in daemon.events()) >= scans + 2,
            "two rescans that walk past the outputs",
        )
        assert daemon.stop() == 0
    status = check_invariants(
        daemon,
        outbox=outbox,
        sources=originals(made),
        expected={f"in/p{i}.jpg" for i in range(3)},
        spy=spy,
    )
    assert status["counts"] == {"done": 3}
    touched = {e.get("source") for e in daemon.events() if "source" in e}
    assert not {s for s in touched if s.startswith(("_out", "_state"))}


# ---- output templates: never outside the output folder ------------------------------------------

BASE = """\
input: inbox
output: outbox
state: state
engine: {{device: cpu, weights: {weights}, download: false}}
styles:
  {style}: {{image: {painting}}}
rules:
  - match: "**/*"
    styles: [{style}]
    output: {output}
"""


@pytest.mark.parametrize(
    ("style", "output"),
    [
        ("starry", "'../{stem}.{ext}'"),
        ("starry", "'{dir}/../../{stem}.{ext}'"),
        ("starry", "'/tmp/{stem}.{ext}'"),
        ("starry", "'~/{stem}.{ext}'"),
        ("starry", "'C:/x/{stem}.{ext}'"),
        ("starry", "'{dir}\\\\{stem}.{ext}'"),
        ("starry", "'{dir}/{stem}.{ext}/'"),
        ("starry", "'{stem!r}.{ext}'"),
        ('"a/b"', "'{dir}/{stem}.{style}.{ext}'"),
        ('".."', "'{style}/{stem}.{ext}'"),
        ('"x\\\\y"', "'{dir}/{stem}.{style}.{ext}'"),
        ('"../../etc"', "'{style}/{stem}.{ext}'"),
    ],
)
def test_templates_and_style_names_that_would_leave_the_output_folder_are_refused(
    tmp_path: Path, vgg_checkpoint: Path, style_files: tuple[Path, Path], style: str, output: str
) -> None:
    (tmp_path / "inbox").mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        BASE.format(weights=vgg_checkpoint, painting=style_files[0], style=style, output=output)
    )
    with pytest.raises(ConfigError):
        load_config(config)


NAME = st.text(
    alphabet=st.characters(exclude_characters="/\0", exclude_categories=("Cs",)),
    min_size=1,
    max_size=12,
) | st.sampled_from(["..", ".", "...", "..jpg", "-", " "])


@pytest.mark.parametrize(
    "template",
    [
        "{dir}/{stem}.{ext}",
        "{dir}/{stem}.{style}.{ext}",
        "{stem}/{style}.{ext}",
        "{style}/{dir}/{stem}.{ext}",
        "by-rule-{rule}/{dir}/{stem}-{style}.{ext}",
    ],
)
def test_no_file_name_renders_a_template_outside_the_output_folder(
    tmp_path: Path, vgg_checkpoint: Path, style_files: tuple[Path, Path], template: str
) -> None:
    (tmp_path / "inbox").mkdir()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        BASE.format(
            weights=vgg_checkpoint, painting=style_files[0], style="starry", output=f"'{template}'"
        )
    )
    config = load_config(config_path)
    outbox = config.output

    @settings(max_examples=150, deadline=None, database=None, derandomize=True)
    @given(st.lists(NAME, min_size=1, max_size=4), st.sampled_from(["jpg", "png", "JPG"]))
    def renders_inside(parts: list[str], ext: str) -> None:
        parts[-1] = f"{parts[-1]}.{ext}"
        decision = rules.decide(config, PurePosixPath(*parts))
        if not isinstance(decision, rules.Plan):
            return  # ignored (a `..` part, a hidden name, an unsafe output): nothing written
        for planned in decision.outputs:
            target = outbox / planned.relpath
            assert not planned.relpath.is_absolute()
            assert ".." not in planned.relpath.parts
            assert Path(os.path.normpath(target)).is_relative_to(outbox), planned.relpath

    renders_inside()


def test_the_unit_of_writing_creates_nothing_group_or_world_writable(tmp_path: Path) -> None:
    """The CLI sets umask 022 itself; this checks write_atomic's own default on top of it."""
    from daemon.outputs import write_atomic

    before = os.umask(0)
    try:
        write_atomic(tmp_path / "a" / "b.jpg", b"data")
    finally:
        os.umask(before)
    mode = stat.S_IMODE((tmp_path / "a" / "b.jpg").stat().st_mode)
    assert mode & 0o022 == 0, oct(mode)
