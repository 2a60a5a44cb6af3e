"""The web console in a real headless Chromium (selenium; Debian's chromium + chromium-driver).

Every page visit reads the browser's console log: any error (a script error, a failed request,
a CSP violation) fails the test; and the browser's performance log must show no request leaving
127.0.0.1 (every host name but 127.0.0.1 resolves to nothing as well). Screenshots are saved in
the folder the run prints ("console screenshots: ...").
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import WorkerEnv
from tests.integration.console.conftest import KEY, PREFIX, Api, jpeg, two_faces

pytestmark = pytest.mark.integration


class Console:
    """The browser on the console, with the log checks every visit runs."""

    def __init__(self, driver: Any, api: Api, shots: Path) -> None:
        self.driver = driver
        self.api = api
        self.shots = shots
        self.visited: list[str] = []

    def wait(self, what: Callable[[], Any], timeout: float = 30.0,
             message: str | Callable[[], str] = "") -> Any:
        """``message``: text, or a function building it once the wait timed out (the page it
        describes may be mid-navigation now)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = what()
            except Exception:  # noqa: BLE001 - e.g. an element not there yet
                found = None
            if found:
                return found
            if time.monotonic() > deadline:
                said = message() if callable(message) else message
                raise AssertionError(f"timed out waiting for {said or what}")
            time.sleep(0.2)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def open(self, path: str, ready: str = "main") -> None:
        from selenium.webdriver.common.by import By

        self.driver.get(self.api.url + path)
        self.wait(lambda: self.js("return document.readyState") == "complete", message=path)
        self.wait(lambda: self.driver.find_elements(By.CSS_SELECTOR, ready), message=ready)
        self.visited.append(path)

    def check_logs(self, where: str) -> None:
        """No console error, and no request to anywhere but this API."""
        errors = [e for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not errors, f"browser errors on {where}: {errors}"
        base = self.api.url + "/"
        outside = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") != "Network.requestWillBeSent":
                continue
            url = message["params"]["request"]["url"]
            if url.startswith(("chrome://", "chrome-untrusted://", "devtools://")):
                continue  # the browser's own pages, not the network
            if not url.startswith((base, "data:", "blob:", "about:")):
                outside.append(url)
        assert not outside, f"requests leaving 127.0.0.1 on {where}: {outside}"

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def login(self) -> None:
        from selenium.webdriver.common.by import By

        self.open("/login", "#login-form")
        self.driver.find_element(By.ID, "key").send_keys(KEY)
        self.driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        self.wait(lambda: self.driver.find_elements(By.ID, "grid"),
                  message=lambda: f"the grid, after login (at {self.driver.current_url}: "
                  f"{self.driver.find_element(By.TAG_NAME, 'body').text[:500]})")
        self.check_logs("login")


@pytest.fixture(scope="module")
def console(browser: Any, api: Api, artefacts: Path) -> Console:
    c = Console(browser, api, artefacts)
    browser.get("about:blank")
    browser.get_log("browser")  # what the browser did before the console: not ours
    browser.get_log("performance")
    c.open("/", "#login-form")  # not logged in: the login page, the page asked for kept
    assert c.driver.current_url == f"{api.url}/login?next=%2F"
    c.check_logs("/ without a session")
    c.login()
    return c


def test_grid_shows_uploads_with_their_thumbnails(console: Console, api: Api) -> None:
    from selenium.webdriver.common.by import By

    folder = f"/grid-{uuid.uuid4().hex[:6]}"
    colours = [(220, 60, 40), (40, 160, 90), (50, 90, 210), (230, 190, 40)]
    ids = [api.upload(jpeg(480 + 40 * i, 320, c), name=f"pic-{i}.jpg", folder=folder,
                      tags="grid,colour" if i % 2 else "grid")
           for i, c in enumerate(colours)]
    for i in ids:
        got = api.wait(i)
        assert got["status"] == "complete" and "thumbnail" in got["info_urls"], got
    console.open(f"/?folder={folder}", "#grid")
    cards = console.driver.find_elements(By.CSS_SELECTOR, "#grid li.card")
    assert sorted(c.get_attribute("data-asset-id") for c in cards) == sorted(ids)

    def loaded() -> bool:
        return bool(console.js(
            "const imgs = [...document.querySelectorAll('#grid img.thumbnail')];"
            "return imgs.length === arguments[0] && imgs.every(i => i.complete && "
            "i.naturalWidth > 0 && i.classList.contains('loaded'));", len(ids)))

    console.wait(loaded, message="every thumbnail loaded")
    sizes = console.js("return [...document.querySelectorAll('#grid img.thumbnail')]"
                       ".map(i => [i.naturalWidth, i.naturalHeight]);")
    assert all(max(w, h) == 256 for w, h in sizes), sizes
    drawn = console.js("return document.querySelectorAll('#grid canvas.blurhash.drawn').length")
    assert drawn == len(ids)  # the BlurHash placeholder was decoded and painted first
    pixel = console.js(
        "const c = document.querySelector('#grid canvas.blurhash');"
        "return Array.from(c.getContext('2d').getImageData(16, 16, 1, 1).data);")
    assert pixel[3] == 255 and max(pixel[:3]) > 30
    console.check_logs("the grid")
    console.shot("grid")
    # the tag filter and keyset pages
    console.open(f"/?folder={folder}&tag=colour", "#grid")
    tagged = console.driver.find_elements(By.CSS_SELECTOR, "#grid li.card")
    assert sorted(c.get_attribute("data-asset-id") for c in tagged) == sorted(ids[1::2])
    console.open(f"/?folder={folder}&limit=3", "#grid")
    assert len(console.driver.find_elements(By.CSS_SELECTOR, "#grid li.card")) == 3
    console.driver.find_element(By.ID, "next-page").click()
    console.wait(lambda: "cursor=" in console.driver.current_url, message="page 2")
    assert len(console.driver.find_elements(By.CSS_SELECTOR, "#grid li.card")) == 1
    console.check_logs("grid pages")


def test_asset_page_boxes_two_faces_where_count_faces_found_them(
        console: Console, api: Api) -> None:
    from selenium.webdriver.common.by import By

    asset_id = api.upload(two_faces(), name="two-faces.jpg", folder="/people",
                          postprocess="count-faces,index-faces", tags="people")
    got = api.wait(asset_id)
    assert got["status"] == "complete", got
    faces = got["results"]["count-faces"]["data"]["faces"]
    assert len(faces) == 2
    console.open(f"/assets/{asset_id}", "#viewer")
    console.wait(lambda: console.js("const i = document.getElementById('original');"
                                    "return i.complete && i.naturalWidth > 0"),
                 message="the original loaded")
    layer = console.driver.find_element(
        By.CSS_SELECTOR, 'svg.overlay-faces[data-postprocess="count-faces"]')
    rects = layer.find_elements(By.CSS_SELECTOR, "rect.faces-shape")
    assert len(rects) == 2
    # where the boxes are drawn, in the picture's own pixels
    drawn = console.js("""
        const img = document.getElementById('original').getBoundingClientRect();
        const natural = document.getElementById('original').naturalWidth;
        const s = natural / img.width;
        return [...arguments[0].querySelectorAll('rect.faces-shape')].map(r => {
            const b = r.getBoundingClientRect();
            return [(b.left - img.left) * s, (b.top - img.top) * s, b.width * s, b.height * s,
                    +r.dataset.index];
        });""", layer)
    assert console.js("return document.getElementById('original').naturalWidth") == 1024
    for x, y, w, h, index in drawn:
        want = faces[int(index)]["box"]
        assert [x, y, w, h] == pytest.approx(want, abs=2.5), (want, [x, y, w, h])
    xs = sorted(f["box"][0] for f in faces)
    assert xs[0] < 512 < xs[1]  # one face on each half: astronaut left, cameraman right
    # the layer toggle hides the boxes
    toggle = console.driver.find_element(By.CSS_SELECTOR, "input.layer-toggle")
    toggle.click()
    assert "hidden" in (console.driver.find_element(By.ID, toggle.get_attribute("data-layer"))
                        .get_attribute("class") or "")
    toggle.click()
    # the other results are drawn too
    text = console.driver.find_element(By.CSS_SELECTOR, "section.results").text
    assert "2 face(s)" in text
    swatches = console.driver.find_elements(By.CSS_SELECTOR, ".swatches .swatch")
    assert swatches, "dominant colours as swatches"
    assert console.driver.find_elements(By.CSS_SELECTOR, "img.derived-picture")
    console.check_logs("the asset page")
    console.js("window.scrollTo(0, 0)")
    console.shot("asset-faces")


def test_dead_letter_requeue_from_the_page(console: Console, api: Api,
                                           console_worker: WorkerEnv) -> None:
    from selenium.webdriver.common.by import By

    from agents.kafka.producer import OutputProducer
    from schemas.records import UploadEvent, now_ms
    from sinks.objects.local import LocalStorage

    missing = console_worker.inbox / f"later-{uuid.uuid4().hex[:6]}.png"
    ev = UploadEvent(asset_id=f"dl-{uuid.uuid4().hex[:8]}", uri=LocalStorage.uri_for(missing),
                     filename=missing.name, content_type="image/png", width=120, height=80,
                     format="PNG", size_bytes=100, uploaded_at=now_ms())
    producer = OutputProducer(console_worker.bootstrap)
    producer.send(f"{PREFIX}.uploads", ev.asset_id, ev.to_bytes())
    producer.flush_sync()
    broken = api.wait(ev.asset_id)
    assert broken["status"] == "failed", broken
    failed = sorted(n for n, r in broken["results"].items() if r["status"] == "error")
    assert {"dominant-colors", "thumbnail"} <= set(failed), broken["results"]
    Image.new("RGB", (120, 80), (5, 90, 5)).save(missing)  # the cause is fixed
    for task in failed:
        console.open(f"/dead-letters/{task}", "#dead-letters")
        row = console.wait(lambda: [r for r in console.driver.find_elements(
            By.CSS_SELECTOR, "tr.dead-letter") if ev.asset_id in r.text], message=task)[0]
        assert row.find_element(By.CSS_SELECTOR, ".mark").text == "dead"
        row.find_element(By.CSS_SELECTOR, "button.requeue").click()
        console.wait(lambda r=row: r.find_element(By.CSS_SELECTOR, ".mark").text == "requeued",
                     timeout=60, message=f"{task} requeued")
        assert "1 requeued" in console.driver.find_element(By.ID, "requeue-message").text
        if task == "thumbnail":
            console.shot("dead-letters")
        console.check_logs(f"dead letters of {task}")
    fixed = api.wait(ev.asset_id, done=lambda a: a.get("status") == "complete")
    assert all(fixed["results"][t]["status"] == "ok" for t in failed), fixed["results"]
    # requeued ones are hidden unless asked for, like `darkroom dlq list`
    console.open("/dead-letters/thumbnail", "#dead-letters")
    assert ev.asset_id not in console.driver.find_element(By.ID, "dead-letters").text
    console.open("/dead-letters/thumbnail?all=true", "#dead-letters")
    assert ev.asset_id in console.driver.find_element(By.ID, "dead-letters").text
    console.check_logs("dead letters, all")


def test_moderation_queue_approve_by_button_reject_by_keyboard(console: Console,
                                                               api: Api) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    folder = f"/review-{uuid.uuid4().hex[:6]}"
    ids = [api.upload(jpeg(400, 300, c), name=f"review-{i}.jpg", folder=folder,
                      moderation="manual")
           for i, c in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)])]
    for i in ids:
        api.wait(i, done=lambda a: a.get("status") == "complete"
                 and (a.get("moderation") or {}).get("status") == "pending")
    console.open(f"/moderation?folder={folder}", "#moderation-queue")
    cards = console.driver.find_elements(By.CSS_SELECTOR, "#moderation-queue li.review")
    assert [c.get_attribute("data-asset-id") for c in cards] == ids  # oldest first
    console.shot("moderation")
    first = cards[0]
    first.find_element(By.CSS_SELECTOR, "input.note").send_keys("fine")
    first.find_element(By.CSS_SELECTOR, "button.approve").click()
    console.wait(lambda: "decided" in (first.get_attribute("class") or ""),
                 message="the first card decided")
    # the focus moved to the next card: "r" rejects it, "j" would move on
    console.wait(lambda: console.js("return document.activeElement.getAttribute("
                                    "'data-asset-id')") == ids[1], message="focus on card 2")
    ActionChains(console.driver).send_keys("r").perform()
    console.wait(lambda: "decided" in (cards[1].get_attribute("class") or ""),
                 message="the second card decided")
    approved = api.wait(ids[0], done=lambda a: a["moderation"]["status"] == "approved")
    assert approved["moderation"]["note"] == "fine"
    rejected = api.wait(ids[1], done=lambda a: a["moderation"]["status"] == "rejected")
    assert rejected["uri"] == ""  # its objects were deleted
    assert api.wait(ids[2], done=lambda a: True)["moderation"]["status"] == "pending"
    console.check_logs("the moderation queue")
    console.open(f"/moderation?folder={folder}", "#moderation-queue")
    left = console.driver.find_elements(By.CSS_SELECTOR, "#moderation-queue li.review")
    assert [c.get_attribute("data-asset-id") for c in left] == ids[2:]
    console.open(f"/moderation?folder={folder}&status=approved", "#moderation-queue")
    assert ids[0] in console.driver.find_element(By.ID, "moderation-queue").get_attribute(
        "innerHTML")
    console.check_logs("the moderation queue, approved")
    console.open(f"/assets/{ids[0]}", "#moderation-detail")
    detail = console.driver.find_element(By.ID, "moderation-detail").text
    assert "fine" in detail and "decided by" in detail, detail
    console.check_logs("an approved asset's page")


def test_status_dead_letter_topics_faces_and_cluster_naming(console: Console,
                                                            api: Api) -> None:
    from selenium.webdriver.common.by import By

    console.open("/status", "#task-status")
    rows = {r.get_attribute("data-task"): r.text
            for r in console.driver.find_elements(By.CSS_SELECTOR, "#task-status tbody tr")}
    assert "thumbnail" in rows and "count-faces" in rows
    console.check_logs("status")
    console.shot("status")
    console.open("/dead-letters", "#dlq-topics")
    assert console.driver.find_elements(By.CSS_SELECTOR, '#dlq-topics tr[data-name="uploads"]')
    console.check_logs("dead-letter topics")
    # face clusters: the two faces of the composite picture (uploaded above with index-faces)
    console.open("/faces", "#clusters")
    clusters = console.wait(lambda: console.driver.find_elements(By.CSS_SELECTOR,
                                                                 "#clusters li.cluster"))
    assert len(clusters) >= 2
    console.wait(lambda: console.js(
        "return [...document.querySelectorAll('svg.face-crop image')].length > 0"))
    first = clusters[0]
    cid = first.get_attribute("data-cluster-id")
    field = first.find_element(By.CSS_SELECTOR, "input[name=name]")
    field.clear()
    field.send_keys("Eileen <script>alert(1)</script>")
    first.find_element(By.CSS_SELECTOR, "button").click()
    console.wait(lambda: first.find_element(By.CSS_SELECTOR, ".saved").text == "saved")
    console.check_logs("faces")
    console.shot("faces")
    console.open(f"/faces/{cid}", "h1")
    assert console.driver.find_element(By.TAG_NAME, "h1").text.startswith(
        "Eileen <script>alert(1)</script>")  # shown as text: escaped, never run
    assert not console.driver.find_elements(By.XPATH, "//main//script")
    console.check_logs("a face cluster")


def test_docs_render_offline_with_an_authorize_button(console: Console, api: Api) -> None:
    from selenium.webdriver.common.by import By

    console.open("/docs", "#swagger-ui")
    try:
        console.wait(lambda: console.driver.find_elements(By.CSS_SELECTOR,
                                                          ".swagger-ui .info .title"),
                     message="Swagger UI rendered")
    except AssertionError:
        console.shot("docs-failed")
        raise AssertionError(f"{console.driver.get_log('browser')} "
                             f"{console.driver.find_element(By.TAG_NAME, 'body').text[:800]}"
                             ) from None
    title = console.driver.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    assert "Darkroom upload API" in title
    assert console.driver.find_elements(By.CSS_SELECTOR, "button.authorize")
    ops = console.driver.find_elements(By.CSS_SELECTOR, ".opblock")
    assert len(ops) >= 10
    csp = api.client.get("/docs").headers["content-security-policy"]
    assert csp.startswith("default-src 'self'") and "http" not in csp
    console.check_logs("/docs")
    console.shot("docs")


def test_hostile_asset_data_is_shown_as_text(console: Console, api: Api) -> None:
    from selenium.webdriver.common.by import By

    evil = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
    name = "<img src=x onerror=alert(3)>'.jpg"  # no '/' (the base name is kept), no '"'
    asset_id = api.upload(jpeg(200, 150), name=name, folder="/hostile",
                          tags=evil, context=json.dumps({"k": evil}))
    api.wait(asset_id)
    for path in (f"/assets/{asset_id}", "/?folder=/hostile", f"/?tag={evil}"):
        console.open(path, "main")
        assert not console.driver.find_elements(By.CSS_SELECTOR, 'img[src="x"]')
        assert not console.driver.find_elements(By.XPATH, "//main//script")
        console.check_logs(path)
    console.open(f"/assets/{asset_id}", "h1")
    assert console.driver.find_element(By.TAG_NAME, "h1").text == name


def test_logout_ends_the_session(console: Console, api: Api) -> None:
    from selenium.webdriver.common.by import By

    console.open("/", "#grid")
    console.driver.find_element(By.CSS_SELECTOR, "form.logout button").click()
    console.wait(lambda: console.driver.find_elements(By.ID, "login-form"), message="login")
    console.open("/status", "#login-form")
    assert "/login?next=%2Fstatus" in console.driver.current_url
    console.check_logs("after logout")
    console.login()  # for whatever runs next
