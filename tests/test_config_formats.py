"""daemon/config.py and the formats: output formats from the table, `metadata`, `credit`."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import pytest
from harness import MINIMAL
from test_config import by_key, line_of, load_text, problems

from daemon import rules
from daemon.config import DEFAULT_EXTENSIONS, OUTPUT_FORMATS, load_config
from engine import formats
from engine.metadata import Credit


def test_the_config_reads_its_choices_from_the_format_table() -> None:
    assert OUTPUT_FORMATS == ("same", "jpeg", "png", "webp", "avif")
    assert set(DEFAULT_EXTENSIONS) == {ext for f in formats.FORMATS for ext in f.extensions}
    assert {"heic", "heif", "avif"} <= set(DEFAULT_EXTENSIONS)


@pytest.mark.parametrize(("written", "name"), [("avif", "avif"), ("AVIF", "avif"), ("jpg", "jpeg")])
def test_output_format_names(tmp_path: Path, written: str, name: str) -> None:
    config = load_text(tmp_path, MINIMAL.replace("steps: 300}", f"steps: 300, format: {written}}}"))

    assert config.defaults.output.format == name
    plan = rules.decide(config, PurePosixPath("IMG_1.HEIC"))
    assert isinstance(plan, rules.Plan)
    (output,) = plan.outputs
    assert output.format == formats.by_name(name).pillow
    assert output.relpath.suffix == "." + formats.by_name(name).extensions[0]


@pytest.mark.parametrize("written", ["heic", "tiff", "gif"])
def test_formats_that_cannot_be_written_are_refused(tmp_path: Path, written: str) -> None:
    text = MINIMAL.replace("steps: 300}", f"steps: 300, format: {written}}}")
    _, error = problems(tmp_path, text)
    problem = by_key(error)["defaults.format"]
    assert "same, jpeg, png, webp, avif" in problem.message


def test_metadata_layers_like_quality(tmp_path: Path) -> None:
    starry = "starry: {image: styles/starry_night.jpg"
    booth = "    styles: [starry, blend]\n"
    text = (
        MINIMAL.replace("steps: 300}", "steps: 300, metadata: minimal}")
        .replace(starry + "}", starry + ", metadata: full}")
        .replace(booth, booth + "    metadata: private\n")
    )
    config = load_text(tmp_path, text)

    assert config.defaults.output.metadata == "minimal"
    booth, rest = config.rules
    assert {t.style_name: t.settings.output.metadata for t in booth.outputs} == {
        "starry": "private",
        "blend": "private",
    }
    (starry,) = rest.outputs
    assert starry.settings.output.metadata == "full"
    plan = rules.decide(config, PurePosixPath("a.jpg"))
    assert isinstance(plan, rules.Plan)
    assert plan.outputs[0].metadata == "full"


def test_metadata_is_private_by_default(tmp_path: Path) -> None:
    assert load_text(tmp_path, MINIMAL).defaults.output.metadata == "private"


def test_a_bad_metadata_value_is_named(tmp_path: Path) -> None:
    text = MINIMAL.replace("steps: 300}", "steps: 300, metadata: everything}")
    _, error = problems(tmp_path, text)
    problem = by_key(error)["defaults.metadata"]
    assert "private, full, minimal" in problem.message
    assert problem.line == line_of(text, "metadata:")


CREDITED = MINIMAL.replace(
    "starry: {image: styles/starry_night.jpg}",
    "starry:\n"
    "    image: styles/starry_night.jpg\n"
    "    credit: {artist: Vincent van Gogh, title: The Starry Night, year: 1889,"
    " licence: public domain}",
)


def test_a_style_credit_reaches_every_planned_output(tmp_path: Path) -> None:
    config = load_text(tmp_path, CREDITED)

    credit = Credit("Vincent van Gogh", "The Starry Night", "1889", "public domain")
    assert config.styles["starry"].credit == credit
    assert config.styles["blend"].credit is None
    plan = rules.decide(config, PurePosixPath("booth1/a.jpg"))
    assert isinstance(plan, rules.Plan)
    assert {o.style_name: o.credit for o in plan.outputs} == {"starry": credit, "blend": None}


@pytest.mark.parametrize(
    ("credit", "key", "message"),
    [
        ("{artist: Munch, licens: CC0}", "styles.starry.credit.licens", "did you mean 'licence'"),
        ("{artist: [a, b]}", "styles.starry.credit.artist", "expected text"),
        ('{title: "two\\nlines"}', "styles.starry.credit.title", "one line"),
        ("Vincent", "styles.starry.credit", "expected a mapping"),
    ],
)
def test_bad_credits_are_named(tmp_path: Path, credit: str, key: str, message: str) -> None:
    text = MINIMAL.replace(
        "starry: {image: styles/starry_night.jpg}",
        f"starry: {{image: styles/starry_night.jpg, credit: {credit}}}",
    )
    _, error = problems(tmp_path, text)
    assert key in by_key(error), str(error)
    assert message in by_key(error)[key].message


def test_the_example_config_credits_its_paintings(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    (tmp_path / "run" / "inbox").mkdir(parents=True)
    shutil.copytree(repo / "samples", tmp_path / "samples")
    shutil.copyfile(repo / "config.example.yaml", tmp_path / "config.yaml")

    config = load_config(tmp_path / "config.yaml")

    credits = {name: style.credit for name, style in config.styles.items()}
    assert credits["starry"] == Credit(
        "Vincent van Gogh", "The Starry Night", "1889", "public domain"
    )
    assert all(credit is not None and credit.licence for credit in credits.values())
