"""The booth page and the dashboard in a real browser: Debian's Chromium, headless, driven by
Selenium through Debian's chromedriver (nothing is downloaded; .ci/run installs both)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Fleet, photo
from PIL import Image
from webharness import Web, add_config

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

DEADLINE = 120.0
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def screenshot(browser: WebDriver, folder: Path, name: str) -> None:
    """Into the test's folder; also into $STYLEWATCH_SCREENSHOTS when set (for the README)."""
    browser.save_screenshot(str(folder / name))
    extra = os.environ.get("STYLEWATCH_SCREENSHOTS")
    if extra:
        shutil.copyfile(folder / name, Path(extra) / name)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip(
            "no chromium/chromedriver installed (apt-get install chromium chromium-driver; "
            ".ci/run does)"
        )
    # Selenium Manager must never fetch a browser or a driver: both are given, and it is offline.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = Options()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1920,1080",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    chrome.set_window_size(1920, 1080)
    yield chrome
    chrome.quit()


def wait(browser: WebDriver, condition: object, what: str) -> object:
    return WebDriverWait(browser, DEADLINE, poll_frequency=0.05).until(
        condition, message=f"timed out waiting for {what}"
    )


def test_the_booth_shows_progress_then_the_artwork_without_a_reload(
    fleet: Fleet, webs: list[Web], browser: WebDriver, tmp_path: Path
) -> None:
    # Two hundred steps on a small photo: progress stays visible for several polls.
    daemon = fleet.daemon(steps=200)
    daemon.config.write_text(daemon.config.read_text().replace("size: 32", "size: 64"))
    add_config(daemon, "web: {show_sources: true}\n")
    daemon.start()
    web = Web(fleet.root, daemon.config).start()
    webs.append(web)

    browser.get(web.url + "/booth")
    wait(browser, lambda b: b.find_element(By.ID, "empty").is_displayed(), "the empty booth")
    browser.execute_script("window.stylewatchNoReload = true;")

    with Image.open(SAMPLES / "chelsea.png") as sample:  # a real photo, made small
        guest = sample.convert("RGB")
    guest.thumbnail((96, 96))
    (fleet.inbox / "booth2").mkdir()
    guest.save(fleet.inbox / "booth2" / "guest.jpg", quality=90)
    card = wait(
        browser,
        lambda b: [
            c
            for c in b.find_elements(By.CSS_SELECTOR, ".placeholder")
            if float(c.get_attribute("data-percent") or 0) > 0
        ],
        "a placeholder with progress",
    )
    detail = card[0].find_element(By.CSS_SELECTOR, ".detail").text  # type: ignore[index]
    assert re.fullmatch(r"scale 1 of 1 · \d+% · \d+ s", detail), detail
    screenshot(browser, tmp_path, "booth-progress.png")

    def artwork_shown(b: WebDriver) -> bool:
        img = b.find_element(By.ID, "artwork")
        loaded = b.execute_script("return arguments[0].naturalWidth", img)
        return bool(
            img.is_displayed() and loaded and not b.find_elements(By.CSS_SELECTOR, ".placeholder")
        )

    wait(browser, artwork_shown, "the artwork")
    first_job = browser.find_element(By.ID, "hero").get_attribute("data-job")
    assert browser.execute_script("return window.stylewatchNoReload") is True
    assert (fleet.outbox / "booth2" / "guest.jpg").is_file()
    assert browser.find_element(By.ID, "photo").is_displayed()  # web.show_sources
    assert len(browser.find_elements(By.CSS_SELECTOR, "#strip img")) == 1
    screenshot(browser, tmp_path, "booth.png")

    # A portrait tablet: the artwork still fits the screen.
    browser.set_window_size(800, 1280)
    fits = browser.execute_script(
        "const r = document.getElementById('artwork').getBoundingClientRect();"
        "return r.bottom <= window.innerHeight && r.right <= window.innerWidth && r.height > 100;"
    )
    assert fits
    screenshot(browser, tmp_path, "booth-portrait.png")

    # The service restarts: the page says so, keeps its artwork, and carries on by itself.
    assert daemon.stop() == 0
    wait(browser, lambda b: b.find_element(By.ID, "offline").is_displayed(), "the notice")
    assert browser.find_element(By.ID, "artwork").is_displayed()
    again = fleet.again(daemon).start()
    wait(browser, lambda b: not b.find_element(By.ID, "offline").is_displayed(), "it back")
    photo(fleet.inbox / "booth2" / "second.jpg", (30, 60, 200), size=(48, 32))
    wait(
        browser,
        lambda b: len(b.find_elements(By.CSS_SELECTOR, "#strip img")) == 2,
        "the second artwork after the restart",
    )
    assert browser.find_element(By.ID, "hero").get_attribute("data-job") != str(first_job)
    assert browser.execute_script("return window.stylewatchNoReload") is True
    assert again.stop() == 0


def test_the_dashboard_shows_a_failure_and_retries_it(
    fleet: Fleet, webs: list[Web], browser: WebDriver, tmp_path: Path
) -> None:
    daemon = fleet.daemon()
    daemon.start()
    web = Web(fleet.root, daemon.config).start()
    webs.append(web)
    photo(fleet.inbox / "fine.jpg", (40, 160, 90))
    (fleet.inbox / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a photo")
    daemon.wait(
        lambda: daemon.status()["counts"] == {"done": 1, "failed": 1}, "one done, one failed"
    )

    browser.get(web.url + "/")
    row = wait(
        browser,
        lambda b: b.find_elements(By.CSS_SELECTOR, "#failures tbody tr"),
        "the failure on the dashboard",
    )[0]  # type: ignore[index]
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == "broken.jpg"
    assert cells[2].startswith("bad_image"), cells
    assert cells[3], "the failure's reason is shown"
    assert browser.find_element(By.ID, "count-done").text.startswith("1")
    assert browser.find_element(By.ID, "ready").text == "ready"
    screenshot(browser, tmp_path, "dashboard.png")

    button = row.find_element(By.CSS_SELECTOR, "button.retry")
    button.click()
    answer = wait(
        browser,
        lambda b: button.text if button.text not in ("retry", "queuing…") else None,
        "the retry's answer",
    )
    assert answer == "queued"
    # The service takes it again, and it fails again (still not a photo): a second attempt.
    daemon.wait(
        lambda: (
            sum(
                e.get("event") == "job_failed" and e.get("source") == "broken.jpg"
                for e in daemon.events()
            )
            == 2
        ),
        "the retried job to run again",
    )
    assert daemon.stop() == 0
    assert (tmp_path / "dashboard.png").stat().st_size > 0
