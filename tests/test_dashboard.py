"""The live dashboard at /dashboard, in a real headless Chromium (Debian's, driven by Playwright)."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.client import RegistryClient

from .conftest import ADMIN_KEY, READ_KEY, TEST_API_KEYS, gpu, provider_body
from .gunicorn_server import GunicornServer
from .redis_server import RedisServer

CHROMIUM = "/usr/bin/chromium"
# docs/DASHBOARD.md shows this screenshot; UPDATE_SCREENSHOT=1 pytest tests/test_dashboard.py
# writes it again (otherwise it goes to the test's temporary directory, keeping the tree clean).
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield launched
        launched.close()


@pytest.fixture
def server(redis_server: RedisServer, redis_db: Any) -> Iterator[GunicornServer]:
    served = GunicornServer(
        redis_server.url, auth_enabled="true", api_keys=json.dumps(TEST_API_KEYS),
        heartbeat_ttl_s=2.0, heartbeat_interval_s=0.5, sweep_interval_s=0.1,
    )
    served.start()
    yield served
    served.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    context.close()
    assert errors == []


def open_dashboard(page: Page, server: GunicornServer, key: str = READ_KEY) -> None:
    page.goto(f"{server.url}/dashboard")
    page.fill("#key", key)
    page.click("#key-form button[type=submit]")


FLEET = [
    ("rig-a100-1", "eu-west", [gpu("NVIDIA A100", 81920)] * 4),
    ("rig-a100-2", "eu-west", [gpu("NVIDIA A100", 81920)] * 2),
    ("rig-h100-1", "us-east", [gpu("NVIDIA H100", 81920)] * 8),
    ("rig-4090-1", "ap-south", [gpu("NVIDIA RTX 4090", 24576)]),
]


def test_the_dashboard_shows_the_fleet_and_updates_when_a_provider_goes_offline(
    page: Page, server: GunicornServer, tmp_path: Path
) -> None:
    admin = RegistryClient(server.url, ADMIN_KEY)
    ids = {name: admin.register(provider_body(name=name, location=loc, gpus=gpus))["id"] for name, loc, gpus in FLEET}
    admin.set_status(ids["rig-h100-1"], "busy")
    # Every provider but one keeps heartbeating; rig-4090-1's lease lapses after 2 s.
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.4):
            for name, pid in ids.items():
                if name != "rig-4090-1":
                    admin.heartbeat(pid)

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    try:
        open_dashboard(page, server)
        rows = page.locator("#providers tbody tr")
        expect(rows).to_have_count(4)
        expect(page.locator("#providers")).to_contain_text("rig-h100-1")
        expect(page.locator(".card.idle b")).to_have_text("3")
        expect(page.locator(".card.busy b")).to_have_text("1")
        expect(page.locator("#by-model")).to_contain_text("nvidia a100")
        expect(page.locator("#by-location")).to_contain_text("us-east")

        lapsing = page.locator(f"#providers tbody tr[data-id='{ids['rig-4090-1']}']")
        expect(lapsing).to_have_attribute("data-status", "idle")
        # The change feed's long poll brings the lapse; the table and the cards follow.
        expect(page.locator("#feed li[data-type=offline]")).to_have_count(1, timeout=15_000)
        expect(lapsing).to_have_attribute("data-status", "offline", timeout=5_000)
        expect(page.locator(".card.offline b")).to_have_text("1")
        expect(page.locator("#live")).to_have_text("live")

        lapsing.click()
        expect(page.locator("#detail")).to_contain_text("NVIDIA RTX 4090")
        shot = DOCS_SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
    finally:
        stop.set()
        beating.join(timeout=5)


def test_the_key_is_kept_for_the_tab_and_a_search_uses_the_apis_filters(page: Page, server: GunicornServer) -> None:
    admin = RegistryClient(server.url, ADMIN_KEY)
    for name, loc, gpus in FLEET:
        admin.register(provider_body(name=name, location=loc, gpus=gpus))
    open_dashboard(page, server)
    expect(page.locator("#providers tbody tr")).to_have_count(4)
    page.reload()  # no key asked again: sessionStorage kept it
    expect(page.locator("#providers tbody tr")).to_have_count(4)
    page.fill("#filters input[name=gpu_model]", "a100")
    page.click("#filters button[type=submit]")
    expect(page.locator("#providers tbody tr")).to_have_count(2)
    expect(page.locator("#total")).to_have_text("2 matching")


def test_a_key_without_the_read_role_is_told_so(page: Page, server: GunicornServer) -> None:
    from .conftest import REGISTER_KEY

    open_dashboard(page, server, REGISTER_KEY)
    expect(page.locator("#error")).to_contain_text("lacks the read or admin role")
