"""The inspector in a real headless browser: the system's Chromium, driven by Playwright, against
a real gunicorn, a real SQLite store and a real local downstream.

Log in, find an event by filter, open it, see its attempts, replay a dead letter and watch it
delivered, replay every dead letter of a filter after the confirmation page, try a payload, watch
the list refresh itself, and see a hostile payload stay text. A screenshot of each page is saved
under $ROUTER_TEST_ARTIFACTS/inspector (when set) or this module's tmp folder.

Chromium comes from the system packages (`apt-get install -y chromium`); Playwright is told where
it is and never downloads one. Without it the tests are skipped, except under CI (CI=true), where
a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import HttpServer, Recorded, Reply, RouterServer, sign_panjaya, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
INSTALL_HINT = "install it with `apt-get install -y chromium` (Debian/Ubuntu), then run the tests again"
PASSWORD = "inspector-browser-pw-93f1"
UI_TIMEOUT_MS = 20_000  # what a page or element may take on a busy machine before the test fails


def _browser_or_skip() -> Any:
    in_ci = os.environ.get("CI", "").lower() == "true"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if in_ci:
            pytest.fail("playwright is not installed (it is in the `test` extra)")
        pytest.skip("browser tests need playwright: pip install -e '.[test]'")
    if not os.access(CHROMIUM, os.X_OK):
        if in_ci:
            pytest.fail(f"no Chromium at {CHROMIUM} under CI; .ci/run installs it")
        pytest.skip(f"browser tests need Chromium at {CHROMIUM}: {INSTALL_HINT}")
    return sync_playwright


class Site(HttpServer):
    """The downstream: answers each path as set in `replies` (200 by default)."""

    def __init__(self) -> None:
        super().__init__()
        self.replies: dict[str, Reply] = {}

    def respond(self, rec: Recorded) -> Reply:
        return self.replies.get(rec.path.split("?")[0], Reply())

    def answer(self, path: str, reply: Reply) -> None:
        with self._cond:
            self.replies[path] = reply


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with Site() as server:
        server.answer("/ops", Reply(400, b"no such channel"))
        yield server


@pytest.fixture(scope="module")
def router(start_router, site: Site, panjaya_public_pem: str) -> RouterServer:
    rules = f"""\
version: 1
settings:
  retry: {{schedule: [200ms], jitter: 0}}
  inspector:
    password: "${{INSPECTOR_PASSWORD}}"
providers:
  dubbing:
    type: panjaya
    public_key: {json.dumps(panjaya_public_pem)}
  plain: {{type: none}}
actions:
  media: {{type: forward, url: "{site.url}/media", timeout: 2s}}
  ops: {{type: forward, url: "{site.url}/ops", timeout: 2s}}
rules:
  - name: dub-generated
    provider: dubbing
    when: {{event: version_generated}}
    actions: [media]
  - name: dub-failures
    provider: dubbing
    when: {{event: {{in: [asset_failed, version_failed]}}}}
    actions: [ops]
  - name: plain-all
    provider: plain
    actions: [media]
"""
    return start_router(rules, env={"INSPECTOR_PASSWORD": PASSWORD}, name="inspector-ui")


@pytest.fixture(scope="module")
def post_dubbing(router: RouterServer, panjaya_key: Any) -> Any:
    def post(payload: dict) -> str:
        body = json.dumps(payload).encode()
        r = router.post("/hooks/dubbing", body, headers={"Content-Type": "application/json",
                                                         "X-Signature": sign_panjaya(body, panjaya_key)})
        assert r.status_code == 200, r.text
        return r.json()["event_id"]

    return post


def _job_states(router: RouterServer, event_id: str) -> list[str]:
    return [j.state for j in router.store().jobs(event_id=event_id)]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("ROUTER_TEST_ARTIFACTS")
    folder = Path(root) / "inspector" if root else tmp_path_factory.mktemp("inspector-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, router: RouterServer) -> Iterator[Any]:
    """A logged-in tab; `page.csp_errors` collects any Content-Security-Policy refusal."""
    context = browser.new_context(http_credentials={"username": "admin", "password": PASSWORD},
                                  base_url=router.url, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    tab = context.new_page()
    tab.csp_errors = []
    tab.on("console", lambda msg: tab.csp_errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    yield tab
    context.close()


def shot(page: Any, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def test_log_in(browser: Any, router: RouterServer, page: Any, artifacts: Path) -> None:
    # headless Chromium cannot show the login prompt: it fails a navigation that gets 401, so the
    # refusals are asked through each context's own HTTP client (same cookies and credentials)
    for credentials in (None, {"username": "admin", "password": "nope"}):
        outsider = browser.new_context(base_url=router.url, http_credentials=credentials)
        try:
            assert outsider.request.get("/ui/").status == 401
        finally:
            outsider.close()
    response = page.goto("/ui/")
    assert response.status == 200
    assert page.locator("h1").inner_text() == "Events"
    shot(page, artifacts, "01-events")
    assert page.csp_errors == []


def test_find_an_event_by_filter_open_it_and_see_its_attempts(router: RouterServer, site: Site, post_dubbing: Any,
                                                              page: Any, artifacts: Path) -> None:
    for n in range(3):
        router.post("/hooks/plain", {"kind": "noise", "n": n})
    post_dubbing({"event": "version_generated", "asset_id": "asset-gen-1", "version_id": "v1"})
    failed = post_dubbing({"event": "asset_failed", "asset_id": "asset-fail-1"})
    wait_until(lambda: _job_states(router, failed) == ["dead"], what="the failing delivery dead-lettered")

    page.goto("/ui/")
    page.select_option("select[name=provider]", "dubbing")
    page.fill("input[name=path]", "asset_id")
    page.fill("input[name=value]", "asset-fail-1")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r"[?&]path=asset_id"))
    rows = page.locator("#events tbody tr")
    assert rows.count() == 1
    row = rows.first.inner_text()
    assert "dubbing" in row and "asset_failed" in row and "dub-failures" in row and "1 dead" in row
    assert "400" in row  # the last outcome
    shot(page, artifacts, "02-events-filtered")

    rows.first.locator("a").click()
    page.wait_for_url(f"**/ui/events/{failed}")
    assert failed in page.locator("h1").inner_text()
    delivery = page.locator("section.delivery")
    assert "ops" in delivery.inner_text() and "dead" in delivery.locator(".state").inner_text()
    attempts = delivery.locator("table.attempts tbody tr")
    assert attempts.count() == 1
    cells = attempts.first.locator("td").all_inner_texts()
    assert cells[0] == "1" and cells[1].startswith("20") and cells[2].endswith(" ms") and "400" in cells[3]
    assert "asset-fail-1" in page.locator("#payload").inner_text()
    assert "x-signature" not in page.locator("table.kv").inner_text().lower()  # a credential, never stored
    assert "dub-failures" in page.locator("#rules").inner_text()
    shot(page, artifacts, "03-event-dead")
    assert page.csp_errors == []


def test_replay_a_dead_letter_and_watch_it_delivered(router: RouterServer, site: Site, post_dubbing: Any,
                                                     page: Any, artifacts: Path) -> None:
    failed = post_dubbing({"event": "version_failed", "asset_id": "asset-replay-1", "version_id": "v9"})
    wait_until(lambda: _job_states(router, failed) == ["dead"], what="dead-lettered")
    before = len(site.to("/ops"))
    page.goto(f"/ui/events/{failed}")
    site.answer("/ops", Reply(200, b"ok"))  # the destination is fixed
    try:
        page.get_by_role("button", name="Replay this delivery").click()
        page.wait_for_url(re.compile(rf"/ui/events/{failed}\?done="))
        assert "re-queued delivery" in page.locator(".notice").inner_text()

        def delivered() -> bool:
            page.reload()
            return page.locator("section.delivery .state").inner_text() == "delivered"

        wait_until(delivered, timeout=30, interval=0.5, what="the replayed delivery shown as delivered")
    finally:
        site.answer("/ops", Reply(400, b"no such channel"))
    assert len(site.to("/ops")) == before + 1  # the replay, once
    attempts = page.locator("section.delivery table.attempts tbody tr")
    assert attempts.count() == 2 and "200" in attempts.nth(1).inner_text()
    shot(page, artifacts, "04-event-replayed")


def test_replay_every_dead_letter_of_a_filter_after_a_confirmation(router: RouterServer, site: Site,
                                                                   post_dubbing: Any, page: Any,
                                                                   artifacts: Path) -> None:
    first = len(router.store().jobs(state="dead"))
    ids = [post_dubbing({"event": "asset_failed", "asset_id": f"asset-bulk-{n}"}) for n in range(2)]
    wait_until(lambda: all(_job_states(router, i) == ["dead"] for i in ids), what="two more dead letters")
    dead = first + 2

    page.goto("/ui/dead")
    page.select_option("select[name=action]", "ops")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r"[?&]action=ops"))
    assert f"{dead} dead letter(s) match" in page.locator("main").inner_text()
    assert page.locator("#dead tbody tr").count() == dead
    shot(page, artifacts, "05-dead-letters")

    page.get_by_role("link", name=f"Replay all {dead}").click()
    page.wait_for_url(re.compile(r"/ui/dead/replay\?"))
    assert f"re-queue {dead} dead letter(s)" in page.locator("#replay-count").inner_text()
    shot(page, artifacts, "06-replay-confirm")
    before = len(site.to("/ops"))
    site.answer("/ops", Reply(200, b"ok"))
    try:
        page.get_by_role("button", name=f"Re-queue {dead}").click()
        page.wait_for_url(re.compile(r"/ui/dead\?.*done="))
        assert f"re-queued {dead} dead letter(s)" in page.locator(".notice").inner_text()
        site.wait_for(before + dead, path="/ops", timeout=30)
        wait_until(lambda: all(_job_states(router, i) == ["delivered"] for i in ids), what="bulk replay delivered")
    finally:
        site.answer("/ops", Reply(400, b"no such channel"))
    page.reload()
    assert "0 dead letter(s) match" in page.locator("main").inner_text()
    shot(page, artifacts, "07-dead-letters-replayed")


def test_try_a_payload(router: RouterServer, site: Site, page: Any, artifacts: Path) -> None:
    sent_before = len(site.requests)
    events_before = router.event_count()
    page.goto("/ui/try")
    page.select_option("select[name=provider]", "dubbing")
    page.fill("textarea[name=payload]", json.dumps({"event": "version_generated", "asset_id": "asset-try-1"}))
    page.fill("textarea[name=headers]", "X-Request-Id: try-1")
    page.click("form.try button[type=submit]")
    result = page.locator("#result")
    result.wait_for()
    text = result.inner_text()
    assert "Would match: dub-generated" in text
    assert f"{site.url}/media" in text and "asset-try-1" in text and "X-Router-Rule" in text
    shot(page, artifacts, "08-try")

    page.fill("textarea[name=payload]", json.dumps({"event": "not-an-event", "asset_id": "a"}))
    page.click("form.try button[type=submit]")
    page.locator("#result.invalid").wait_for()
    assert "event" in page.locator("#result").inner_text()
    shot(page, artifacts, "09-try-invalid")
    assert len(site.requests) == sent_before and router.event_count() == events_before  # sent and stored nothing
    assert page.csp_errors == []


def test_the_event_list_refreshes_itself(router: RouterServer, page: Any, artifacts: Path) -> None:
    page.goto("/ui/")
    page.locator("#events[data-refresh]").wait_for()
    r = router.post("/hooks/plain", {"kind": "arrived-while-watching"})
    event_id = r.json()["event_id"]
    page.locator(f'#events a[href$="{event_id}"]').wait_for(timeout=UI_TIMEOUT_MS + 10_000)  # no reload
    shot(page, artifacts, "10-events-refreshed")
    assert page.csp_errors == []


def test_a_hostile_payload_stays_text(router: RouterServer, page: Any, artifacts: Path) -> None:
    hostile = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
    r = router.post("/hooks/plain", {"kind": hostile}, headers={"X-Note": hostile, "Content-Type": "application/json"})
    event_id = r.json()["event_id"]
    page.goto(f"/ui/events/{event_id}")
    assert json.dumps(hostile) in page.locator("#payload").inner_text()  # as JSON writes it: shown, not run
    assert hostile in page.locator("table.kv").inner_text()
    assert page.evaluate("window.__xss") is None
    assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    page.goto(f"/ui/?q={hostile[:20]}")
    assert page.evaluate("window.__xss") is None
    shot(page, artifacts, "11-hostile-event")
