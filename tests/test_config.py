"""daemon/config.py: YAML -> frozen objects, or a ConfigError naming file, line and key."""

from __future__ import annotations

import dataclasses
import shutil
import textwrap
from pathlib import Path, PurePosixPath

import pytest
from harness import MINIMAL

from daemon.config import (
    Config,
    LoggingSettings,
    RetrySettings,
    WatchConfig,
    filesystem_type,
    load_config,
    parse_mountinfo,
)
from daemon.errors import ConfigError, Problem
from engine.params import EngineConfig, StyleImage, StyleParams

REPO = Path(__file__).resolve().parent.parent

# The issue's minimal config, verbatim.


def make_site(root: Path) -> Path:
    """A folder with inbox/ and the three paintings the minimal config names.

    The loader only checks that paintings exist (decoding them is the `check` command's job), so a
    few bytes stand in for them.
    """
    (root / "inbox").mkdir(parents=True)
    (root / "styles").mkdir()
    for name in ("starry_night.jpg", "the_scream.jpg", "shipwreck.jpg"):
        (root / "styles" / name).write_bytes(b"painting")
    return root


def write(root: Path, text: str, name: str = "config.yaml") -> Path:
    path = root / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(write(make_site(tmp_path), text))


def problems(tmp_path: Path, text: str) -> tuple[Path, ConfigError]:
    path = write(make_site(tmp_path), text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return path, info.value


def by_key(error: ConfigError) -> dict[str, Problem]:
    return {problem.key: problem for problem in error.problems}


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line of `text` that contains `needle`."""
    for number, line in enumerate(textwrap.dedent(text).splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


# --- the minimal config works as it reads -------------------------------------------------------


def test_minimal_config_loads_as_it_reads(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL)

    assert config.path == tmp_path / "config.yaml"
    assert (config.input, config.output, config.state) == (
        tmp_path / "inbox",
        tmp_path / "outbox",
        tmp_path / "state",
    )
    assert config.watch == WatchConfig(settle_seconds=1.0, rescan_interval=60.0)
    assert config.engine.engine.device == "auto"
    assert config.engine.batch_size == 4
    assert config.defaults.params == StyleParams(size=512, steps=300)
    assert config.defaults.output.format == "same"
    assert config.defaults.output.quality == 92

    assert list(config.styles) == ["starry", "blend"]
    assert config.styles["starry"].spec.images == (
        StyleImage(tmp_path / "styles/starry_night.jpg"),
    )
    blend = config.styles["blend"].spec
    assert blend.name == "blend"
    assert blend.images == (
        StyleImage(tmp_path / "styles/the_scream.jpg", 0.7),
        StyleImage(tmp_path / "styles/shipwreck.jpg", 0.3),
    )

    first, second = config.rules
    assert first.match == ("booth1/**/*.jpg",)
    assert first.styles == ("starry", "blend")
    assert first.output.text == "{dir}/{stem}.{style}.{ext}"  # several styles: style in the name
    assert [t.style_name for t in first.outputs] == ["starry", "blend"]
    assert second.output.text == "{dir}/{stem}.{ext}"  # one style: the same relative path
    assert second.outputs[0].settings.params == StyleParams(size=512, steps=300)


def test_config_objects_are_immutable(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.input = tmp_path  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.styles["new"] = config.styles["starry"]  # type: ignore[index]


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = make_site(tmp_path / "site")
    path = write(site, MINIMAL)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(Path("..") / "site" / "config.yaml")

    assert config.path == path
    assert config.input == site / "inbox"
    assert config.output == site / "outbox"
    assert config.styles["starry"].spec.images[0].path == site / "styles" / "starry_night.jpg"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    inbox = tmp_path / "far" / "inbox"
    inbox.mkdir(parents=True)
    config = load_text(tmp_path / "site", MINIMAL.replace("input: inbox ", f"input: {inbox} "))
    assert config.input == inbox


def test_example_config_loads(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "run" / "inbox").mkdir(parents=True)  # `make run` creates it
    shutil.copytree(REPO / "samples", site / "samples")
    shutil.copyfile(REPO / "config.example.yaml", site / "config.yaml")

    config = load_config(site / "config.yaml")

    assert config.input == site / "run" / "inbox"
    assert config.output == site / "run" / "outbox"
    assert config.state == site / "run" / "state"
    assert config.watch == WatchConfig()  # the example spells out the defaults
    assert config.defaults.params == StyleParams()
    assert config.engine.batch_size == 4
    assert config.retry == RetrySettings()  # and the retry defaults
    assert config.engine.engine.precision == EngineConfig().precision == "auto"
    assert config.engine.threads is None  # commented out: all cores
    assert config.logging == LoggingSettings()
    assert config.rules
    assert all(config.styles[name] for rule in config.rules for name in rule.styles)


def test_setting_overrides_apply_defaults_then_style_then_rule(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """\
        input: inbox
        output: outbox
        state: state
        styles:
          plain: {image: styles/starry_night.jpg}
          fine: {image: styles/the_scream.jpg, size: 400, style_scale: 2.0, quality: 80}
        defaults: {size: 300, steps: 50, seed: 7, format: png}
        rules:
          - match: "big/**"
            styles: [plain, fine]
            size: 600
          - match: "**"
            styles: [plain, fine]
        """,
    )
    big, other = config.rules
    big_plain, big_fine = (t.settings for t in big.outputs)
    plain, fine = (t.settings for t in other.outputs)

    assert (plain.params.size, plain.params.steps, plain.params.seed) == (300, 50, 7)
    assert (fine.params.size, fine.params.style_scale) == (400, 2.0)  # style beats defaults
    assert big_fine.params.size == 600  # rule beats style
    assert big_fine.params.style_scale == 2.0  # ... and keeps what the rule leaves alone
    assert big_plain.params.size == 600
    assert plain.output.format == fine.output.format == "png"
    assert (plain.output.quality, fine.output.quality) == (92, 80)
    assert dict(config.styles["fine"].overrides) == {"size": 400, "style_scale": 2.0, "quality": 80}
    assert dict(big.overrides) == {"size": 600}


def test_every_engine_setting_can_be_set(tmp_path: Path) -> None:
    (tmp_path / "init.png").write_bytes(b"picture")
    config = load_text(
        tmp_path,
        """\
        input: inbox
        output: outbox
        state: state
        styles: {s: {image: styles/starry_night.jpg}}
        defaults:
          size: 256
          steps: 20
          scales: 2
          scale_step_ratio: 1.5
          min_scale_size: 32
          content_weight: 2
          style_weight: 1e5        # YAML 1.1 reads this as text; it means the number
          tv_weight: 0.01
          content_layers: [relu3_2]
          style_layers: [relu1_1, relu2_1]
          style_layer_weights: [1, 3]
          style_scale: 0.5
          pooling: avg
          optimizer: adam
          learning_rate: 0.05
          init: random
          init_image: init.png
          seed: 3
          preserve_colors: luminance
          format: jpg
          quality: 75
        rules: [{match: "**", styles: s}]
        """,
    )
    assert config.defaults.params == StyleParams(
        size=256,
        steps=20,
        scales=2,
        scale_step_ratio=1.5,
        min_scale_size=32,
        content_weight=2.0,
        style_weight=1e5,
        tv_weight=0.01,
        content_layers=("relu3_2",),
        style_layers=("relu1_1", "relu2_1"),
        style_layer_weights=(1.0, 3.0),
        style_scale=0.5,
        pooling="avg",
        optimizer="adam",
        learning_rate=0.05,
        init="random",
        init_image=tmp_path / "init.png",
        seed=3,
        preserve_colors="luminance",
    )
    assert config.defaults.output.format == "jpeg"
    assert config.defaults.output.quality == 75
    assert config.rules[0].styles == ("s",)  # one name without a list


def test_engine_section(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "vgg19.pth").write_bytes(b"checkpoint")
    config = load_text(
        tmp_path,
        MINIMAL.replace(
            "engine: {device: auto}",
            "engine: {device: 'cuda:1', weights: weights/vgg19.pth, precision: bf16, "
            "preprocess: caffe, batch_size: 8, download: false, style_cache_size: 4, "
            "cuda_graphs: false}",
        ),
    )
    engine = config.engine.engine
    assert engine.device == "cuda:1"
    assert engine.weights == tmp_path / "weights" / "vgg19.pth"
    assert (engine.precision, engine.preprocess, engine.download) == ("bf16", "caffe", False)
    assert engine.cuda_graphs is False
    assert engine.style_cache_size == 4
    assert config.engine.batch_size == 8


# --- errors: file, line, key, suggestion ----------------------------------------------------------


def test_unknown_style_names_file_line_key_and_suggests(tmp_path: Path) -> None:
    text = MINIMAL.replace("styles: [starry]", "styles: [stary]")
    path, error = problems(tmp_path, text)

    line = line_of(text, "[stary]")
    assert (
        str(error)
        == f"{path}:{line}: rules[1].styles: unknown style 'stary' (did you mean 'starry'?)"
    )
    assert error.problems == (
        Problem(path, line, "rules[1].styles", "unknown style 'stary' (did you mean 'starry'?)"),
    )


@pytest.mark.parametrize(
    ("old", "new", "key", "suggestion"),
    [
        ("rules:", "rulez:", "rulez", "rules"),
        ("settle_seconds: 1", "setle_seconds: 1", "watch.setle_seconds", "settle_seconds"),
        ("device: auto", "devise: auto", "engine.devise", "device"),
        ("steps: 300", "stepz: 300", "defaults.stepz", "steps"),
        (
            "{image: styles/starry_night.jpg}",
            "{imgae: styles/starry_night.jpg}",
            "styles.starry.imgae",
            "image",
        ),
        ('  - match: "**/*"', '  - mach: "**/*"', "rules[1].mach", "match"),
        ("{device: auto}", "{device: auto, precision: bf61}", "engine.precision", "bf16"),
    ],
)
def test_typos_get_a_suggestion(
    tmp_path: Path, old: str, new: str, key: str, suggestion: str
) -> None:
    text = MINIMAL.replace(old, new)
    assert text != MINIMAL
    path, error = problems(tmp_path, text)
    found = by_key(error)
    assert key in found, str(error)
    assert found[key].file == path
    assert found[key].line == line_of(text, new.strip().split(":")[0])
    assert f"(did you mean '{suggestion}'?)" in found[key].message


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    text = """\
    input: inbox
    output: outbox
    state: state
    watch: {settle_seconds: -1, mode: sometimes}
    engine: {batch_size: 0, cuda_graphs: sometimes}
    styles:
      starry: {image: styles/starry_night.jpg}
      lost: {image: styles/nowhere.jpg}
    defaults: {size: 10, steps: many}
    rules:
      - match: "**"
        styles: [starry, missing]
      - styles: [starry]
    """
    path, error = problems(tmp_path, text)
    found = by_key(error)
    expected = {
        "watch.settle_seconds": "settle_seconds",
        "watch.mode": "mode",
        "engine.batch_size": "batch_size",
        "engine.cuda_graphs": "cuda_graphs",
        "styles.lost.image": "nowhere",
        "defaults.size": "size: 10",
        "defaults.steps": "steps: many",
        "rules[0].styles": "missing]",
        "rules[1]": "- styles: [starry]",
    }
    assert set(expected) <= set(found), str(error)
    for key, needle in expected.items():
        assert found[key].line == line_of(text, needle), key
        assert found[key].file == path
    lines = str(error).splitlines()
    assert len(lines) == len(error.problems) >= len(expected)
    assert all(line.startswith(f"{path}:") for line in lines)
    assert "size must be between 16 and 16384" in found["defaults.size"].message
    assert "missing: match" in found["rules[1]"].message


def test_engine_refusals_name_the_setting_where_it_was_written(tmp_path: Path) -> None:
    text = """\
    input: inbox
    output: outbox
    state: state
    styles:
      tiny: {image: styles/starry_night.jpg, size: 8}
      ok: {image: styles/the_scream.jpg}
    rules:
      - match: "**"
        styles: [ok]
        content_layers: [relu9_9]
    """
    _, error = problems(tmp_path, text)
    found = by_key(error)
    assert found["styles.tiny.size"].line == line_of(text, "tiny:")
    # The engine's message names no key for an unknown layer: the value it quotes finds it.
    assert "relu9_9" in found["rules[0].content_layers"].message
    assert found["rules[0].content_layers"].line == line_of(text, "relu9_9")


def test_mismatched_layer_weights_are_blamed_on_the_weights(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "defaults: {size: 512, steps: 300}", "defaults: {style_layer_weights: [1, 2]}"
    )
    _, error = problems(tmp_path, text)
    found = by_key(error)
    assert list(found) == ["defaults.style_layer_weights"]
    assert "one weight per style layer" in found["defaults.style_layer_weights"].message


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("input: inbox\nrules: [\n", 3, "invalid YAML"),
        ("input: [inbox\noutput: x\n", 2, "invalid YAML"),
        ("", None, "the config is empty"),
        ("# only a comment\n", None, "the config is empty"),
        ("- just\n- a list\n", 1, "expected a mapping"),
    ],
)
def test_unusable_documents(tmp_path: Path, text: str, line: int | None, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.file == path
    assert problem.line == line
    assert message in problem.message


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_config(tmp_path / "nope.yaml")


def test_missing_required_keys(tmp_path: Path) -> None:
    _, error = problems(tmp_path, "watch: {recursive: false}\n")
    assert {"input", "output", "state", "styles", "rules"} <= set(by_key(error))


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace("state: state", "state: state\noutput: other")
    _, error = problems(tmp_path, text)
    assert by_key(error)["output"].line == line_of(text, "output: other")
    assert "duplicate" in by_key(error)["output"].message


def test_yaml_merge_keys_work(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """\
        input: inbox
        output: outbox
        state: state
        styles:
          starry: &base {image: styles/starry_night.jpg, size: 300}
          big: {<<: *base, size: 900}
        rules: [{match: "**", styles: [starry, big]}]
        """,
    )
    assert config.styles["big"].spec.images == config.styles["starry"].spec.images
    assert [t.settings.params.size for t in config.rules[0].outputs] == [300, 900]


def test_problem_without_line_renders_without_one() -> None:
    assert str(Problem(Path("c.yaml"), None, "", "boom")) == "c.yaml: boom"
    assert str(Problem(Path("c.yaml"), 3, "", "boom")) == "c.yaml:3: boom"
    assert str(Problem(Path("c.yaml"), 3, "a.b", "boom")) == "c.yaml:3: a.b: boom"


# --- watch ---------------------------------------------------------------------------------------


def test_watch_defaults_and_extension_normalisation(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, MINIMAL.replace("watch: {settle_seconds: 1, rescan_interval: 60}", "")
    )
    assert config.watch == WatchConfig(
        mode="auto",
        poll_interval=2.0,
        settle_seconds=2.0,
        rescan_interval=300.0,
        recursive=True,
        extensions=("jpg", "jpeg", "png", "webp", "avif", "heic", "heif", "hif", "tif", "tiff"),
        ignore=(),
    )
    config = load_text(
        tmp_path / "b",
        MINIMAL.replace(
            "watch: {settle_seconds: 1, rescan_interval: 60}",
            "watch: {extensions: [.JPG, Png, jpg], ignore: ['*.bak', archive/**], mode: polling,"
            " rescan_interval: 0, recursive: false, poll_interval: 0.5}",
        ),
    )
    assert config.watch.extensions == ("jpg", "png")
    assert config.watch.ignore == ("*.bak", "archive/**")
    assert (config.watch.mode, config.watch.rescan_interval) == ("polling", 0.0)
    assert (config.watch.recursive, config.watch.poll_interval) == (False, 0.5)


@pytest.mark.parametrize(
    ("watch", "key"),
    [
        ("{poll_interval: 0}", "watch.poll_interval"),
        ("{settle_seconds: -1}", "watch.settle_seconds"),
        ("{rescan_interval: soon}", "watch.rescan_interval"),
        ("{recursive: maybe}", "watch.recursive"),
        ("{extensions: []}", "watch.extensions"),
        ("{ignore: [../secret]}", "watch.ignore[0]"),
        ("[settle_seconds]", "watch"),
    ],
)
def test_bad_watch_values(tmp_path: Path, watch: str, key: str) -> None:
    text = MINIMAL.replace("{settle_seconds: 1, rescan_interval: 60}", watch)
    _, error = problems(tmp_path, text)
    assert list(by_key(error)) == [key]
    assert error.problems[0].line == line_of(text, "watch:")


def test_retry_section_defaults_and_settings(tmp_path: Path) -> None:
    assert load_text(tmp_path / "a", MINIMAL).retry == RetrySettings()
    assert RetrySettings().give_up_after >= 3600  # hours, not minutes
    text = MINIMAL + "retry: {give_up_after: 60, first_delay: 1, max_delay: 2, max_attempts: 3}\n"
    assert load_text(tmp_path / "b", text).retry == RetrySettings(60.0, 1.0, 2.0, 3)


@pytest.mark.parametrize(
    ("retry", "key"),
    [
        ("{give_up_after: -1}", "retry.give_up_after"),
        ("{first_delay: 0}", "retry.first_delay"),
        ("{max_delay: never}", "retry.max_delay"),
        ("{max_attempts: 0}", "retry.max_attempts"),
        ("{first_delay: 90, max_delay: 60}", "retry.first_delay"),
        ("{give_up: 60}", "retry.give_up"),
    ],
)
def test_bad_retry_values(tmp_path: Path, retry: str, key: str) -> None:
    text = MINIMAL + f"retry: {retry}\n"
    _, error = problems(tmp_path, text)
    assert list(by_key(error)) == [key]
    assert error.problems[0].line == line_of(text, "retry:")


# --- folders -------------------------------------------------------------------------------------


def test_input_must_exist(tmp_path: Path) -> None:
    text = MINIMAL.replace("input: inbox ", "input: nowhere ")
    path, error = problems(tmp_path, text)
    assert str(error) == f"{path}:1: input: {tmp_path / 'nowhere'} does not exist"


def test_input_must_be_a_folder(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    _, error = problems(tmp_path, MINIMAL.replace("input: inbox ", "input: afile "))
    assert "is not a folder" in by_key(error)["input"].message


def test_output_parent_must_exist(tmp_path: Path) -> None:
    _, error = problems(tmp_path, MINIMAL.replace("output: outbox", "output: no/such/outbox"))
    assert by_key(error)["output"].line == 2
    assert "does not exist" in by_key(error)["output"].message


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("output: outbox", "output: inbox", "output"),
        ("state: state", "state: ./inbox", "state"),
        ("state: state", "state: outbox", "state"),
    ],
)
def test_folders_must_differ(tmp_path: Path, old: str, new: str, key: str) -> None:
    _, error = problems(tmp_path, MINIMAL.replace(old, new))
    assert list(by_key(error)) == [key]


def test_input_inside_output_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outbox" / "inbox").mkdir(parents=True)
    text = MINIMAL.replace("input: inbox ", "input: outbox/inbox ")
    _, error = problems(tmp_path, text)
    problem = by_key(error)["input"]
    assert problem.line == 1
    assert "inside the output folder" in problem.message


def test_output_and_state_inside_input_are_allowed(tmp_path: Path) -> None:
    text = MINIMAL.replace("output: outbox", "output: inbox/outbox").replace(
        "state: state", "state: inbox/state"
    )
    config = load_text(tmp_path, text)
    assert config.output == tmp_path / "inbox" / "outbox"
    assert config.state == tmp_path / "inbox" / "state"


# --- styles --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a/b", "..", "star night", "x.y", "'../up'", "ünï"])
def test_style_names_are_restricted(tmp_path: Path, name: str) -> None:
    text = (
        MINIMAL.replace("  starry: {image:", f"  {name}: {{image:")
        .replace("[starry, blend]", "[blend]")
        .replace("styles: [starry]", "styles: [blend]")
    )
    _, error = problems(tmp_path, text)
    (problem,) = error.problems
    assert problem.line == line_of(text, "styles/starry_night.jpg")
    assert "letters, digits" in problem.message


@pytest.mark.parametrize(
    "style",
    [
        "{image: styles/nowhere.jpg}",
        "{images: []}",
        "{images: [styles/the_scream.jpg, {weight: 2}]}",
        "{images: [{path: styles/the_scream.jpg, weight: 0}]}",
        "{image: styles/the_scream.jpg, images: [styles/shipwreck.jpg]}",
        "{}",
        "styles/starry_night.jpg",
        "{image: styles}",
    ],
)
def test_bad_styles(tmp_path: Path, style: str) -> None:
    text = MINIMAL.replace("{image: styles/starry_night.jpg}", style)
    _, error = problems(tmp_path, text)
    assert all(problem.key.startswith("styles.starry") for problem in error.problems), str(error)
    assert all(problem.line == 7 for problem in error.problems), str(error)


def test_blend_of_plain_paths_has_equal_weights(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "{image: styles/starry_night.jpg}",
        "{images: [styles/the_scream.jpg, styles/shipwreck.jpg]}",
    )
    config = load_text(tmp_path, text)
    assert config.styles["starry"].spec.normalised_weights() == (0.5, 0.5)


# --- rules and output templates -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("../{stem}.{ext}", "'..'"),
        ("{dir}/../../{stem}.{ext}", "'..'"),
        ("/srv/www/{stem}.{ext}", "relative"),
        ("~/{stem}.{ext}", "relative"),
        ("C:/out/{stem}.{ext}", "relative"),
        ("{dir}\\\\{stem}.{ext}", "'\\'"),
        ("{name}.{ext}", "unknown placeholder {name}"),
        ("{stem.__class__}.{ext}", "unknown placeholder"),
        ("{stem!r}.{ext}", "plain format spec"),
        ("{}.{ext}", "unknown placeholder"),
        ("{stem.{ext}", "malformed"),
        ("{dir}/", "file name"),
        ("''", "empty"),
        ("{dir}", "empty path"),
        ("{stem}.jpg", "same file"),
    ],
)
def test_unsafe_or_broken_output_templates_are_refused(
    tmp_path: Path, template: str, message: str
) -> None:
    text = MINIMAL.replace(
        "styles: [starry, blend]", f'styles: [starry, blend]\n    output: "{template}"'
    )
    if template == "''":
        text = MINIMAL.replace("styles: [starry, blend]", "styles: [starry, blend]\n    output: ''")
    _, error = problems(tmp_path, text)
    (problem,) = error.problems
    assert problem.key == "rules[0].output"
    assert problem.line == line_of(text, "    output:")
    assert message in problem.message


def test_output_template_suggests_a_placeholder(tmp_path: Path) -> None:
    text = MINIMAL.replace("styles: [starry]", 'styles: [starry]\n    output: "{dir}/{stme}.{ext}"')
    _, error = problems(tmp_path, text)
    assert "unknown placeholder {stme} (did you mean 'stem'?)" in error.problems[0].message


@pytest.mark.parametrize(
    ("glob", "message"),
    [
        ("/photos/*.jpg", "relative to the input folder"),
        ("../other/*.jpg", "outside the input folder"),
        ("booth1/", "folders only"),
        ("", "empty"),
    ],
)
def test_bad_match_globs(tmp_path: Path, glob: str, message: str) -> None:
    text = MINIMAL.replace('"**/*"', f'"{glob}"')
    _, error = problems(tmp_path, text)
    (problem,) = error.problems
    assert problem.key == "rules[1].match"
    assert problem.line == line_of(text, f'"{glob}"')
    assert message in problem.message


@pytest.mark.parametrize(
    ("rule", "key"),
    [
        ("{match: '**', styles: []}", "rules[1].styles"),
        ("{match: '**', styles: [starry, starry]}", "rules[1].styles"),
        ("{match: '**', styles: [2]}", "rules[1].styles[0]"),
        ("{match: [], styles: [starry]}", "rules[1].match"),
        ("{match: '**'}", "rules[1]"),
        ("{match: '**', styles: [starry], color: red}", "rules[1].color"),
        ("{match: '**', styles: [starry], quality: 101}", "rules[1].quality"),
        ("{match: '**', styles: [starry], format: gif}", "rules[1].format"),
    ],
)
def test_bad_rules(tmp_path: Path, rule: str, key: str) -> None:
    text = MINIMAL.replace('- match: "**/*"\n    styles: [starry]', f"- {rule}")
    _, error = problems(tmp_path, text)
    assert list(by_key(error)) == [key], str(error)


def test_rules_must_be_a_non_empty_list(tmp_path: Path) -> None:
    text = MINIMAL.split("rules:", maxsplit=1)[0] + "rules: []\n"
    _, error = problems(tmp_path, text)
    assert list(by_key(error)) == ["rules"]


# --- filesystem type ------------------------------------------------------------------------------

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /srv/share rw,relatime shared:9 - cifs //nas/photos rw,vers=3.1.1
31 30 8:2 / /srv/share/local rw,relatime - xfs /dev/sdb1 rw
32 22 0:41 / /mnt/my\\040photos rw,nosuid shared:10 master:3 - fuse.sshfs me@host:/pics rw
33 22 0:42 / /mnt/nfs rw - nfs4 server:/export rw
34 22 0:43 / /mnt/over rw - ext4 /dev/sdc1 rw
35 22 0:44 / /mnt/over rw - nfs server:/over rw
36 22 0:45 / /mnt/host rw - 9p hostshare rw
"""


def test_mountinfo_parsing() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts[0] == (PurePosixPath("/"), "ext4")
    assert (PurePosixPath("/mnt/my photos"), "fuse.sshfs") in mounts  # \040 is a space
    assert len(mounts) == 8


@pytest.mark.parametrize(
    ("path", "fstype", "mode"),
    [
        ("/home/me/inbox", "ext4", "native"),
        ("/srv/share", "cifs", "polling"),
        ("/srv/share/booth1", "cifs", "polling"),
        ("/srv/share/local/inbox", "xfs", "native"),  # the longest mount point wins
        ("/srv/shared", "ext4", "native"),  # a prefix of the name is not a parent folder
        ("/mnt/my photos/inbox", "fuse.sshfs", "polling"),
        ("/mnt/nfs/x", "nfs4", "polling"),
        ("/mnt/over/x", "nfs", "polling"),  # the later mount hides the earlier one
        ("/mnt/host", "9p", "polling"),
    ],
)
def test_auto_mode_polls_on_network_filesystems(path: str, fstype: str, mode: str) -> None:
    assert filesystem_type(PurePosixPath(path), MOUNTINFO) == fstype
    assert WatchConfig().resolve_mode(Path(path), MOUNTINFO) == mode


def test_explicit_mode_wins_over_the_filesystem() -> None:
    assert WatchConfig(mode="native").resolve_mode(Path("/srv/share"), MOUNTINFO) == "native"
    assert WatchConfig(mode="polling").resolve_mode(Path("/home"), MOUNTINFO) == "polling"


def test_proc_mounts_format_is_understood() -> None:
    mounts = "/dev/sda1 / ext4 rw 0 0\n//nas/p /srv/p smb3 rw 0 0\nfuse /mnt/f fuse rw 0 0\n"
    assert filesystem_type(PurePosixPath("/srv/p/x"), mounts) == "smb3"
    assert WatchConfig().resolve_mode(Path("/mnt/f"), mounts) == "polling"
    assert filesystem_type(PurePosixPath("/home"), mounts) == "ext4"


def test_filesystem_type_of_a_real_folder(tmp_path: Path) -> None:
    # On Linux /proc is there and every path has a mount; elsewhere the answer is None.
    assert WatchConfig().resolve_mode(tmp_path) in ("native", "polling")
    if Path("/proc/self/mountinfo").exists():
        assert filesystem_type(tmp_path)


@pytest.mark.parametrize(
    ("text", "line", "words", "pointer"),
    [
        (
            "input: inbox\noutput: out: box\n",
            2,
            "put such a value in quotes",
            "    output: out: box\n               ^",
        ),
        ("input: inbox\nengine:\n\tdevice: cpu\n", 3, "YAML indents with spaces only", "    ^"),
        (
            "input: inbox\nengine:\n    device: cpu\n  precision: auto\n",
            4,
            "does not line up with the ones above it",
            "      precision: auto\n      ^",
        ),
        (
            "input: 'inbox\noutput: outbox\n",
            1,
            "this quote is never closed",
            "    input: 'inbox\n           ^",
        ),
        ("input: inbox\noutput\nstate: s\n", 2, "a colon is missing", "    output\n    ^"),
        ("input: [inbox\noutput: x\n", 2, "the '[' opened on line 1 is not closed", "^"),
        ("input: inbox\nrules: [\n", 3, "the file ends in the middle of a value", ""),
    ],
)
def test_yaml_syntax_errors_in_plain_words_with_a_pointer(
    tmp_path: Path, text: str, line: int, words: str, pointer: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.line == line
    shown = str(info.value)
    assert shown.startswith(f"{path}:{line}: invalid YAML: ")
    assert words in shown
    assert pointer in shown
    # PyYAML's own wording stays out of sight.
    for jargon in ("<block end>", "scanning", "simple key", "token", "flow node"):
        assert jargon not in shown


def test_logging_and_threads_are_read_and_checked(tmp_path: Path) -> None:
    base = "input: inbox\noutput: outbox\nstate: state\n"
    base += "styles: {s: {image: styles/starry_night.jpg}}\nrules: [{match: '**', styles: [s]}]\n"
    config = load_text(
        tmp_path / "ok", base + "logging: {level: debug, format: json}\nengine: {threads: 3}\n"
    )
    assert config.logging == LoggingSettings(level="debug", format="json")
    assert config.engine.threads == 3
    path, error = problems(
        tmp_path / "bad",
        base + "logging: {level: loud, format: jsno, colour: true}\nengine: {threads: 0}\n",
    )
    shown = str(error)
    assert f"{path}:6: logging.level: 'loud' is not one of debug, info" in shown
    assert (
        "logging.format: 'jsno' is not one of auto, console, json (did you mean 'json'?)" in shown
    )
    assert "logging.colour: unknown key" in shown
    assert f"{path}:7: engine.threads: must be between 1 and 1024, got 0" in shown


# --- engine.devices: one worker process per entry -----------------------------------------------


@pytest.mark.parametrize(
    ("value", "devices"),
    [
        ("auto", ("auto",)),
        ("all", ("all",)),
        ("[cpu, cpu]", ("cpu", "cpu")),
        ("['cuda:0', 'cuda:1']", ("cuda:0", "cuda:1")),
    ],
)
def test_engine_devices(tmp_path: Path, value: str, devices: tuple[str, ...]) -> None:
    config = load_text(
        tmp_path, MINIMAL.replace("engine: {device: auto}", f"engine: {{devices: {value}}}")
    )
    assert config.engine.devices == devices


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[gpu]", "unknown device 'gpu'"),
        ("['cuda:0', 'cuda:0']", "cuda:0 is listed twice: one worker per GPU"),
        ("[]", "name at least one device, or write auto"),
        ("some", "expected auto, all, or a list of devices"),
    ],
)
def test_bad_engine_devices(tmp_path: Path, value: str, message: str) -> None:
    text = MINIMAL.replace("engine: {device: auto}", f"engine: {{devices: {value}}}")
    _, error = problems(tmp_path, text)
    (problem,) = error.problems
    assert (problem.key, problem.line) == ("engine.devices", line_of(text, "devices"))
    assert message in problem.message


def test_device_and_devices_together_are_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace("engine: {device: auto}", "engine: {device: cpu, devices: [cpu, cpu]}")
    _, error = problems(tmp_path, text)
    assert [p.key for p in error.problems] == ["engine.device"]
    assert "not both" in error.problems[0].message


def test_broker_section(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, MINIMAL + "broker: {url: 'unix:///run/redis/redis.sock', lease_seconds: 30}\n"
    )
    assert config.broker.url == "unix:///run/redis/redis.sock"
    assert config.broker.lease_seconds == 30
    _, error = problems(tmp_path / "b", MINIMAL + "broker: {url: 'http://x'}\n")
    assert [p.key for p in error.problems] == ["broker.url"]
