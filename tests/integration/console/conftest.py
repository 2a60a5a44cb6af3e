"""The console's test stack: one worker on the default post-process configuration (so the
thumbnail task runs on every image) and one API process, on their own topic prefix; and a
headless Chromium driven by selenium (Debian's ``chromium`` + ``chromium-driver``; the browser
tests are skipped, saying why, when they are missing)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import WorkerEnv, start_worker, stop_worker
from tests.integration.api.test_api import Api as ApiProcess

PREFIX = "consoletest"
KEY = "console-test-key-0123456789"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def jpeg(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", (width, height), color)
    for x in range(0, width, 40):  # some structure, so the placeholder is not one colour
        img.paste((255 - color[0], color[1], 255 - color[2]), (x, 0, x + 20, height // 3))
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def two_faces() -> bytes:
    """scikit-image's astronaut (one face) and cameraman (one face) side by side, 1024x512."""
    from skimage import data

    img = Image.new("RGB", (1024, 512))
    img.paste(Image.fromarray(data.astronaut()), (0, 0))
    img.paste(Image.fromarray(np.stack([data.camera()] * 3, -1)), (512, 0))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


class Api(ApiProcess):
    """``darkroom api`` in a child process, on the worker's settings (the API tests' launcher),
    with helpers that answer asset ids and wait for assets."""

    def __init__(self, wenv: WorkerEnv, name: str) -> None:
        super().__init__(wenv, name, key=KEY, ready="/readyz", start_s=60)

    def upload(self, data: bytes, name: str = "x.jpg", **form: Any) -> str:  # type: ignore[override]
        r = self.client.post("/v1/assets", files={"file": (name, data)}, data=form)
        assert r.status_code in (201, 202), r.text
        return str(r.json()["asset_id"])

    def wait(self, asset_id: str, timeout: float = 120.0,
             done: Any = lambda a: a.get("status", "pending") != "pending") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            got: dict[str, Any] = self.client.get(f"/v1/assets/{asset_id}").json()
            if done(got):
                return got
            assert time.monotonic() < deadline, got
            time.sleep(0.3)

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="package")
def console_worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[WorkerEnv]:
    env = {"DARKROOM_TOPIC_PREFIX": PREFIX, "DARKROOM_WORKER_ID": f"darkroom-{PREFIX}"}
    wenv = start_worker(kafka_bootstrap, tmp_path_factory.mktemp("console"), extra_env=env)
    yield wenv
    stop_worker(wenv)


@pytest.fixture(scope="package")
def api(console_worker: WorkerEnv) -> Iterator[Api]:
    a = Api(console_worker, "console-api")
    yield a
    a.stop()


@pytest.fixture(scope="package")
def artefacts(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser tests save their screenshots (``DARKROOM_TEST_ARTEFACTS`` or a
    pytest temp folder); the folder is printed."""
    given = os.environ.get("DARKROOM_TEST_ARTEFACTS")
    folder = Path(given) if given else tmp_path_factory.mktemp("console-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"console screenshots: {folder}")
    return folder


def browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return (f"{path} is missing: the browser tests need Debian's chromium and "
                    "chromium-driver (apt-get install -y chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (uv sync installs the dev group)"
    return None


@pytest.fixture(scope="package")
def browser(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Any]:
    """Headless Chromium at /usr/bin/chromium through /usr/bin/chromedriver. Nothing is
    downloaded: both paths are explicit, selenium-manager is pointed at a path that does not
    exist (it would fail loudly if anything called it), and every host name but 127.0.0.1
    resolves to nothing."""
    reason = browser_missing()
    if reason is not None:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"SKIPPED browser tests: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_MANAGER_PATH"] = "/nonexistent/selenium-manager"
    os.environ["SE_OFFLINE"] = "true"
    os.environ["SE_AVOID_STATS"] = "true"
    profile = tmp_path_factory.mktemp("chromium-profile")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--no-default-browser-check", "--disable-dev-shm-usage",
                "--disable-sync", "--metrics-recording-only", "--mute-audio",
                "--window-size=1360,1000", f"--user-data-dir={profile}",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    log = profile.parent / "chromedriver.log"
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(log))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
