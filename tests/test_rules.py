"""daemon/rules.py: a path relative to the input folder -> ignored, unmatched or planned."""

from __future__ import annotations

import textwrap
from pathlib import Path, PurePosixPath

import pytest
from harness import MINIMAL

from daemon.config import Config, load_config
from daemon.errors import ConfigError
from daemon.rules import Ignored, Plan, Unmatched, decide, ignored, plan
from engine.params import StyleImage, StyleParams

# The minimal config, verbatim.


# A config whose sections are filled in by each test: {folders}, {watch}, {rules}.
SKELETON = """\
{folders}
watch: {watch}
styles:
  starry: {{image: styles/starry_night.jpg}}
  blend: {{images: [styles/the_scream.jpg, styles/shipwreck.jpg]}}
rules:
{rules}
"""
FOLDERS = "input: inbox\noutput: outbox\nstate: state"


def load(root: Path, text: str) -> Config:
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    (root / "styles").mkdir(exist_ok=True)
    for name in ("starry_night.jpg", "the_scream.jpg", "shipwreck.jpg"):
        (root / "styles" / name).write_bytes(b"painting")  # only their existence is checked
    path = root / "config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config(path)


def custom(root: Path, rules: str, *, watch: str = "{}", folders: str = FOLDERS) -> Config:
    return load(root, SKELETON.format(folders=folders, watch=watch, rules=textwrap.dedent(rules)))


@pytest.fixture
def minimal(tmp_path: Path) -> Config:
    return load(tmp_path, MINIMAL)


def planned(config: Config, relpath: str) -> Plan:
    decision = decide(config, PurePosixPath(relpath))
    assert isinstance(decision, Plan), decision
    return decision


def outputs(config: Config, relpath: str) -> list[tuple[str, str]]:
    return [(o.style_name, o.relpath.as_posix()) for o in planned(config, relpath).outputs]


# --- the minimal config works as it reads -------------------------------------------------------


def test_booth_photo_gets_one_output_per_style(minimal: Config, tmp_path: Path) -> None:
    decision = planned(minimal, "booth1/x.jpg")

    assert decision.rule_index == 0
    assert decision.rule is minimal.rules[0]
    starry, blend = decision.outputs
    assert (starry.style_name, starry.relpath) == ("starry", PurePosixPath("booth1/x.starry.jpg"))
    assert (blend.style_name, blend.relpath) == ("blend", PurePosixPath("booth1/x.blend.jpg"))
    assert starry.style.images == (StyleImage(tmp_path / "styles" / "starry_night.jpg"),)
    assert blend.style.name == "blend"
    assert blend.style.normalised_weights() == pytest.approx((0.7, 0.3))
    assert starry.params == blend.params == StyleParams(size=512, steps=300)
    assert (starry.format, starry.quality) == ("JPEG", 92)


def test_booth_photo_deep_in_folders(minimal: Config) -> None:
    assert outputs(minimal, "booth1/a/b/c.jpg") == [
        ("starry", "booth1/a/b/c.starry.jpg"),
        ("blend", "booth1/a/b/c.blend.jpg"),
    ]


def test_top_level_photo_gets_one_output_at_the_same_path(minimal: Config) -> None:
    decision = planned(minimal, "x.jpg")
    assert decision.rule_index == 1
    assert [(o.style_name, o.relpath) for o in decision.outputs] == [
        ("starry", PurePosixPath("x.jpg"))
    ]
    assert outputs(minimal, "elsewhere/deep/y.jpg") == [("starry", "elsewhere/deep/y.jpg")]


def test_double_star_matches_zero_folders(tmp_path: Path) -> None:
    config = custom(
        tmp_path,
        """\
        - match: "a/**/b/*.jpg"
          styles: [starry]
        """,
    )
    assert planned(config, "a/b/x.jpg").rule_index == 0
    assert planned(config, "a/1/2/b/x.jpg").rule_index == 0
    assert decide(config, PurePosixPath("a/x.jpg")) == Unmatched()
    assert decide(config, PurePosixPath("ab/b/x.jpg")) == Unmatched()


def test_first_matching_rule_wins(minimal: Config) -> None:
    # booth1/x.png fails the first rule's *.jpg and falls through to the catch-all.
    assert planned(minimal, "booth1/x.png").rule_index == 1
    assert outputs(minimal, "booth1/x.png") == [("starry", "booth1/x.png")]


def test_an_earlier_broad_rule_shadows_a_later_narrow_one(tmp_path: Path) -> None:
    config = custom(
        tmp_path,
        """\
        - {match: "**/*.jpg", styles: [starry]}
        - {match: "booth1/*.jpg", styles: [blend]}
        """,
    )
    assert planned(config, "booth1/x.jpg").rule_index == 0


def test_a_file_no_rule_matches_is_unmatched(tmp_path: Path) -> None:
    config = custom(tmp_path, '- {match: ["booth1/**/*.jpg", "booth2/*.png"], styles: [starry]}')
    assert decide(config, PurePosixPath("booth3/x.jpg")) == Unmatched()
    assert decide(config, PurePosixPath("x.jpg")) == Unmatched()
    assert planned(config, "booth2/x.png").rule_index == 0  # any of the globs will do
    assert decide(config, PurePosixPath("booth2/a/x.png")) == Unmatched()  # `*` stays in a folder


# --- extensions and formats ---------------------------------------------------------------------


def test_extensions_and_globs_ignore_case(minimal: Config) -> None:
    decision = planned(minimal, "booth1/IMG_0001.JPG")
    assert decision.rule_index == 0  # "*.jpg" matches the camera's upper-case name
    # The output keeps the photo's format, and its extension as written.
    assert [o.relpath.name for o in decision.outputs] == [
        "IMG_0001.starry.JPG",
        "IMG_0001.blend.JPG",
    ]
    assert planned(minimal, "Photo.Jpeg").outputs[0].relpath == PurePosixPath("Photo.Jpeg")


@pytest.mark.parametrize(
    ("name", "fmt", "out"),
    [
        ("x.png", "PNG", "x.png"),
        ("x.webp", "WEBP", "x.webp"),
        ("x.jpeg", "JPEG", "x.jpeg"),
        ("x.tif", "JPEG", "x.jpg"),  # not an output format: JPEG
        ("x.TIFF", "JPEG", "x.jpg"),
        ("x.avif", "AVIF", "x.avif"),
        ("IMG_1.HEIC", "JPEG", "IMG_1.jpg"),  # read, not written: JPEG
        ("x.heif", "JPEG", "x.jpg"),
    ],
)
def test_same_format_keeps_the_photos_format_when_it_can(
    minimal: Config, name: str, fmt: str, out: str
) -> None:
    (output,) = planned(minimal, name).outputs
    assert (output.format, output.relpath.as_posix()) == (fmt, out)


@pytest.mark.parametrize("name", ["x.gif", "x.txt", "README", "x.jpg.bak", "x.heics"])
def test_other_extensions_are_ignored(minimal: Config, name: str) -> None:
    decision = decide(minimal, PurePosixPath(name))
    assert isinstance(decision, Ignored)
    assert decision.reason == "extension"


def test_configured_extensions_replace_the_defaults(tmp_path: Path) -> None:
    config = custom(tmp_path, '- {match: "**", styles: [starry]}', watch="{extensions: [PNG]}")
    assert planned(config, "a.png").rule_index == 0
    assert decide(config, PurePosixPath("a.jpg")) == Ignored("extension", ".jpg")


def test_format_and_quality_follow_the_settings(tmp_path: Path) -> None:
    config = custom(
        tmp_path,
        """\
        - {match: "web/**", styles: [starry, blend], format: webp, quality: 70}
        - {match: "**", styles: [starry], format: png}
        """,
    )
    web = planned(config, "web/x.JPG").outputs
    assert [(o.relpath.as_posix(), o.format, o.quality) for o in web] == [
        ("web/x.starry.webp", "WEBP", 70),
        ("web/x.blend.webp", "WEBP", 70),
    ]
    (png,) = planned(config, "x.jpg").outputs
    assert (png.relpath.as_posix(), png.format) == ("x.png", "PNG")


def test_rule_overrides_reach_the_plan(tmp_path: Path) -> None:
    config = custom(
        tmp_path, '- {match: "**", styles: [starry], size: 128, preserve_colors: luminance}'
    )
    (output,) = planned(config, "x.jpg").outputs
    assert output.params == StyleParams(size=128, preserve_colors="luminance")


# --- output templates ---------------------------------------------------------------------------


def test_template_placeholders(tmp_path: Path) -> None:
    config = custom(
        tmp_path,
        """\
        - name: booth
          match: "**"
          styles: [starry, blend]
          output: "by-style/{style}/r-{rule}/{dir}/{stem}-art.{ext}"
        """,
    )
    assert outputs(config, "a/b/IMG_1.png") == [
        ("starry", "by-style/starry/r-booth/a/b/IMG_1-art.png"),
        ("blend", "by-style/blend/r-booth/a/b/IMG_1-art.png"),
    ]
    # {dir} is empty at the top level: no empty folder name and no leading '/'.
    assert outputs(config, "IMG_2.jpg")[0] == ("starry", "by-style/starry/r-booth/IMG_2-art.jpg")


def test_outputs_never_leave_the_output_folder_at_decide_time(tmp_path: Path) -> None:
    config = custom(
        tmp_path,
        """\
        - match: "**"
          styles: [starry]
          output: "{stem}/{style}.{ext}"
        """,
    )
    rule = config.rules[0]
    # `...jpg` has the stem `..`; the built-in ignores skip it as hidden, and the plan refuses it
    # on its own as well.
    assert isinstance(decide(config, PurePosixPath("...jpg")), Ignored)
    refused = plan(rule, PurePosixPath("...jpg"))
    assert isinstance(refused, Ignored)
    assert refused.reason == "unsafe_output"
    assert isinstance(plan(rule, PurePosixPath("a.jpg")), Plan)


@pytest.mark.parametrize("relpath", ["../x.jpg", "/etc/x.jpg", "a/../../x.jpg", "."])
def test_unsafe_input_paths_are_refused(minimal: Config, relpath: str) -> None:
    decision = decide(minimal, PurePosixPath(relpath))
    assert isinstance(decision, Ignored)
    assert decision.reason == "unsafe_path"


# --- ignores --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relpath", "pattern"),
    [
        (".hidden.jpg", ".*"),
        (".git/x.jpg", ".*"),
        ("booth1/.thumbs/x.jpg", ".*"),
        ("photo.jpg.part", "*.part"),
        ("booth1/photo.JPG.PART", "*.part"),
        ("photo.jpg.tmp", "*.tmp"),
        ("photo.jpg.crdownload", "*.crdownload"),
        ("~$photo.jpg", "~$*"),
        (".DS_Store", ".*"),
        ("Thumbs.db", "Thumbs.db"),
        ("booth1/thumbs.DB", "Thumbs.db"),
        ("@eaDir/x.jpg", "@eaDir"),
        ("booth1/@eaDir/x.jpg/SYNOPHOTO_THUMB_XL.jpg", "@eaDir"),
        ("#recycle/x.jpg", "#recycle"),
        ("$RECYCLE.BIN/x.jpg", "$RECYCLE.BIN"),
    ],
)
def test_built_in_ignores(minimal: Config, relpath: str, pattern: str) -> None:
    assert decide(minimal, PurePosixPath(relpath)) == Ignored("ignored", pattern)


def test_folders_can_be_checked_before_descending(minimal: Config) -> None:
    assert ignored(minimal, PurePosixPath("booth1/@eaDir"), is_dir=True) == Ignored(
        "ignored", "@eaDir"
    )
    assert ignored(minimal, PurePosixPath("booth1"), is_dir=True) is None


def test_user_ignore_patterns(tmp_path: Path) -> None:
    config = custom(
        tmp_path,
        '- {match: "**", styles: [starry]}',
        watch="{ignore: ['raw', '*-orig.jpg', 'archive/**']}",
    )
    for relpath, pattern in [
        ("raw/x.jpg", "raw"),
        ("a/RAW/x.jpg", "raw"),
        ("a/x-orig.jpg", "*-orig.jpg"),
        ("archive/2020/x.jpg", "archive/**"),
    ]:
        assert decide(config, PurePosixPath(relpath)) == Ignored("ignored", pattern), relpath
    assert planned(config, "a/archive/x.jpg").rule_index == 0  # a path glob starts at input
    assert planned(config, "rawhide/x.jpg").rule_index == 0  # a name pattern matches whole names


def test_output_and_state_inside_input_are_excluded(tmp_path: Path) -> None:
    (tmp_path / "inbox" / "work").mkdir(parents=True)
    config = custom(
        tmp_path,
        '- {match: "**", styles: [starry]}',
        folders="input: inbox\noutput: inbox/outbox\nstate: inbox/work/state",
    )
    assert decide(config, PurePosixPath("outbox/x.jpg")) == Ignored("output_folder", "outbox")
    assert decide(config, PurePosixPath("outbox/booth1/x.starry.jpg")) == Ignored(
        "output_folder", "outbox"
    )
    assert decide(config, PurePosixPath("work/state/x.jpg")) == Ignored(
        "state_folder", "work/state"
    )
    assert ignored(config, PurePosixPath("outbox"), is_dir=True) == Ignored(
        "output_folder", "outbox"
    )
    # Only the folders themselves: neighbours with similar names are photos like any other.
    assert planned(config, "outboxes/x.jpg").rule_index == 0
    assert planned(config, "work/x.jpg").rule_index == 0


def test_output_outside_input_excludes_nothing(minimal: Config) -> None:
    assert planned(minimal, "outbox/x.jpg").rule_index == 1


def test_not_recursive_takes_only_top_level_files(tmp_path: Path) -> None:
    config = custom(tmp_path, '- {match: "**", styles: [starry]}', watch="{recursive: false}")
    assert planned(config, "x.jpg").rule_index == 0
    assert decide(config, PurePosixPath("a/x.jpg")) == Ignored("not_recursive", "a")
    assert ignored(config, PurePosixPath("a"), is_dir=True) == Ignored("not_recursive", "a")


# --- rule names: the rule's identity, whatever its position --------------------------------------


def test_rules_without_a_name_get_one_from_their_match_and_styles(tmp_path: Path) -> None:
    config = custom(
        tmp_path,
        """\
        - match: "booth1/**/*.jpg"
          styles: [starry, blend]
        - match: "**/*"
          styles: [starry]
        """,
    )
    assert [rule.name for rule in config.rules] == ["booth1-jpg-starry-blend", "starry"]
    assert planned(config, "booth1/a.jpg").rule.name == "booth1-jpg-starry-blend"


def test_a_rules_name_does_not_depend_on_its_position(tmp_path: Path) -> None:
    first = custom(
        tmp_path / "a", '- match: "a/**"\n  styles: [starry]\n- match: "**"\n  styles: [blend]\n'
    )
    moved = custom(
        tmp_path / "b",
        '- match: "new/**"\n  styles: [blend]\n- match: "a/**"\n  styles: [starry]\n'
        '- match: "**"\n  styles: [blend]\n',
    )
    assert planned(first, "a/x.jpg").rule.name == planned(moved, "a/x.jpg").rule.name == "a-starry"


def test_rules_that_would_derive_the_same_name_are_told_apart_by_a_hash(tmp_path: Path) -> None:
    config = custom(
        tmp_path,
        """\
        - match: "a/*.jpg"
          styles: [starry]
        - match: "a/**/*.jpg"
          styles: [starry]
        - name: starry
          match: "**"
          styles: [starry]
        - match: "**/*"
          styles: [starry]
        """,
    )
    names = [rule.name for rule in config.rules]
    assert names[2] == "starry"
    assert len(set(names)) == 4
    assert names[0].startswith("a-jpg-starry-")
    assert names[1].startswith("a-jpg-starry-")
    assert names[3].startswith("starry-")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            '- {name: x, match: "a/**", styles: [starry]}\n'
            '- {name: x, match: "**", styles: [blend]}',
            "rules[1].name: the name 'x' is already taken by rules[0]",
        ),
        (
            '- {name: "../up", match: "**", styles: [starry]}',
            "rules[0].name: '../up' is not a valid rule name",
        ),
    ],
)
def test_bad_rule_names_are_refused(tmp_path: Path, rules: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        custom(tmp_path, rules)
    assert message in str(info.value)
