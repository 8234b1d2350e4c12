"""End to end: `soundsmith app` serves the app headless on 127.0.0.1; Playwright drives Debian's chromium (the
system executable, no Playwright browser download) to type a prompt, press Generate, wait for the audio element
and check its duration; a second run is interrupted mid-sampling. Screenshots go to the test's temporary folder
and, when $SOUNDSMITH_SCREENSHOT_DIR is set, are copied there.

Skips when chromium or playwright is missing (`make test` installs chromium with apt where it can).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make test installs Debian's chromium)")
playwright_api = pytest.importorskip("playwright.sync_api")

from app_helpers import app_env, tiny_model_dir, wait_until_serving  # noqa: E402

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
START_TIMEOUT_S = float(os.environ.get("SOUNDSMITH_APP_START_TIMEOUT", "300"))
STEP_TIMEOUT_MS = int(float(os.environ.get("SOUNDSMITH_APP_STEP_TIMEOUT", "300")) * 1000)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`soundsmith app` in its own process group; yields its URL; stopped (the group we started) afterwards."""
    tmp = tmp_path_factory.mktemp("app-server")
    port = free_port()
    log_path = tmp / "server.log"
    env = {**os.environ, **app_env(tmp)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "soundsmith.cli", "app", "--port", str(port),
                                 "--model-dir", str(tiny_model_dir())], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(proc, port, log_path, START_TIMEOUT_S)
        assert f"open {url}" in log_path.read_text()  # the printed URL is the one that serves
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@pytest.fixture
def page(server):
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 1000})
            tab.set_default_timeout(STEP_TIMEOUT_MS)
            tab.goto(server, wait_until="domcontentloaded")
            tab.get_by_label("Prompt", exact=True).wait_for()
            yield tab
        finally:
            browser.close()


def screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    copy_to = os.environ.get("SOUNDSMITH_SCREENSHOT_DIR")
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(copy_to) / name)
    return path


def test_type_generate_listen(page, tmp_path):
    page.get_by_label("Prompt", exact=True).fill("rain on a tin roof")
    page.get_by_role("button", name=re.compile(r"\bGenerate$")).click()
    # the audio element's duration, once the browser has read the WAV header
    duration = page.wait_for_function(
        "() => { const a = document.querySelector('audio');"
        " return a && a.readyState >= 1 && isFinite(a.duration) ? a.duration : null; }").json_value()
    assert abs(duration - 0.5) < 0.02  # the tiny model's default duration
    page.get_by_text(re.compile(r"CLAP score -?\d\.\d{3}")).first.wait_for()
    # button names end with their label (a Material icon's ligature text may come first)
    assert page.get_by_role("button", name=re.compile(r"\bWAV$")).count() == 1
    assert page.get_by_role("button", name=re.compile(r"\bFLAC$")).count() == 1
    page.set_viewport_size({"width": 1280, "height": 1900})  # Streamlit scrolls inside the page: show the card
    page.get_by_role("img").last.wait_for()
    page.wait_for_timeout(1000)  # let the spectrogram image finish loading
    shot = screenshot(page, tmp_path, "app-generate.png")
    assert shot.stat().st_size > 10_000


def test_interrupt_stops_sampling(page, tmp_path):
    page.get_by_label("Prompt", exact=True).fill("a long drone")
    page.get_by_text("Advanced", exact=True).click()
    steps = page.get_by_label("Steps", exact=True)
    steps.fill("1000")
    steps.press("Tab")
    page.get_by_role("button", name=re.compile(r"\bGenerate$")).click()
    page.get_by_text(re.compile(r"step \d+ of 1000")).first.wait_for()
    page.get_by_role("button", name=re.compile(r"\bInterrupt$")).click()
    page.get_by_text(re.compile(r"Interrupted at step \d+ of 1000; nothing was kept\.")).wait_for()
    page.get_by_role("button", name=re.compile(r"\bGenerate$")).wait_for()
    page.get_by_text("Generating…").wait_for(state="detached")
    assert page.locator("audio").count() == 0
    screenshot(page, tmp_path, "app-interrupted.png")
    # Streamlit stops the old run while the new one starts: the model is freed when the pipeline unwinds, so
    # the next generation runs (possibly after a moment in the queue)
    steps = page.get_by_label("Steps", exact=True)
    if not steps.is_visible():
        page.get_by_text("Advanced", exact=True).click()
    steps.fill("3")
    steps.press("Tab")
    page.get_by_role("button", name=re.compile(r"\bGenerate$")).click()
    page.locator("audio").first.wait_for()
    assert page.get_by_text(re.compile("Interrupted at step")).count() == 0
