"""The live status page in a real browser: Debian's headless Chromium driven by Playwright (the
system browser; nothing is downloaded). The page is loaded once; a backend killed under an
active health check turns its row down, a click on "drain" turns another's to draining, all
without the page reloading. Screenshots go to the test's temporary directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from adminhelp import admin_address, status_json
from support import Backend, connect, wait_until
from tlshelp import module_gateway

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("needs Debian's chromium (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402  (after the skip)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    a, b = Backend("identify", name="A"), Backend("identify", name="B")
    gw = module_gateway(tmp_path_factory.mktemp("page"), f"""
worker_processes: 2
error_log: stderr info
admin: {{listen: 127.0.0.1:0}}
upstreams:
  chat:
    servers: ["{a.address}", "{b.address}"]
servers:
  - listen: 127.0.0.1:0
    proxy_pass: chat
    health_check: interval=200ms fails=1 passes=1
    health_check_timeout: 1s
""", workers=2)
    gw.a, gw.b = a, b
    gw.admin = admin_address(gw)
    yield gw
    gw.stop()
    a.close()
    b.close()


def row(page, server: str):
    return page.locator(f'div[data-upstream="chat"] tr[data-server="{server}"]')


def test_the_page_shows_a_killed_backend_down_and_a_drained_one_draining(env, browser,
                                                                          tmp_path):
    a, b = env.a.address, env.b.address
    env.wait_log("start health check helper process")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"http://{env.admin}/")
    page.evaluate("window.loadedOnce = true")  # gone if the page ever reloads
    expect(row(page, a).locator(".state")).to_have_text("up", timeout=10_000)
    expect(row(page, b).locator(".state")).to_have_text("up")
    expect(page.locator("#listeners tbody tr")).to_have_count(1)
    expect(page.locator("#generation")).to_contain_text("generation 0 of")
    for _ in range(3):  # the live figures: the listener's sessions, counted by the workers
        with connect(env.port(), timeout=5) as s:
            assert s.recv(2) in (b"A\n", b"B\n")
    expect(page.locator("#listeners tbody tr td").nth(6)).to_have_text("3", timeout=5_000)

    def peer_sessions() -> int:  # the servers' "sessions" cells (round robin in each worker)
        cells = [row(page, x).locator("td").nth(6).inner_text() for x in (a, b)]
        return sum(int(c.replace(",", "")) for c in cells if c.strip().isdigit())

    wait_until(lambda: peer_sessions() == 3, what="the servers' sessions on the page")
    page.screenshot(path=str(tmp_path / "status-up.png"), full_page=True)

    env.b.close()  # the backend dies: the health check takes it down
    env.wait_log(f'upstream server {b} of "chat" is down')
    expect(row(page, b).locator(".state")).to_have_text("down", timeout=5_000)
    expect(row(page, b)).to_contain_text("health check")
    expect(row(page, a).locator(".state")).to_have_text("up")

    row(page, a).locator('button[data-action="drain"]').click()  # through the page
    expect(row(page, a).locator(".state")).to_have_text("draining", timeout=5_000)
    expect(page.locator("#banner")).to_contain_text("is draining")
    env.wait_log(f'upstream server {a} of "chat" is draining (admin)')
    expect(row(page, a).locator('button[data-action="drain"]')).to_be_disabled()
    page.screenshot(path=str(tmp_path / "status-down-draining.png"), full_page=True)
    assert (tmp_path / "status-down-draining.png").stat().st_size > 0

    row(page, a).locator('button[data-action="enable"]').click()
    expect(row(page, a).locator(".state")).to_have_text("up", timeout=5_000)
    assert page.evaluate("window.loadedOnce") is True  # updated in place, never reloaded
    assert int(page.evaluate("document.body.dataset.polls")) >= 3
    assert errors == []
    peers = {p["server"]: p for u in status_json(env.admin)["upstreams"] for p in u["peers"]}
    assert (peers[a]["state"], peers[b]["state"]) == ("up", "down"), json.dumps(peers)
    page.close()


def test_with_a_token_the_page_asks_for_it_and_keeps_it_in_the_tab_only(browser, tmp_path):
    token = "page-token-0123456789abcdef"
    (tmp_path / "admin.token").write_text(token + "\n")
    gw = module_gateway(tmp_path / "gw", f"""
error_log: stderr info
admin: {{listen: 127.0.0.1:0, token_file: {tmp_path / "admin.token"}}}
upstreams:
  chat:
    servers: [127.0.0.1:1, 127.0.0.1:2]
servers:
  - listen: 127.0.0.1:0
    proxy_pass: chat
""")
    try:
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"http://{admin_address(gw)}/")
        expect(page.locator("#login")).to_be_visible(timeout=10_000)
        expect(page.locator("#banner")).to_contain_text("needs a token")
        page.fill("#token", "wrong-token-0123456789")
        page.click("#login button")
        expect(page.locator("#login")).to_be_visible()  # asked again
        page.fill("#token", token)
        page.click("#login button")
        expect(page.locator("#login")).to_be_hidden()
        expect(row(page, "127.0.0.1:1").locator(".state")).to_have_text("up", timeout=10_000)
        row(page, "127.0.0.1:1").locator('button[data-action="disable"]').click()
        expect(row(page, "127.0.0.1:1").locator(".state")).to_have_text("disabled",
                                                                        timeout=5_000)
        gw.wait_log('upstream server 127.0.0.1:1 of "chat" is disabled (admin)')
        assert page.evaluate("sessionStorage.getItem('tlsgw-admin-token')") == token
        assert context.cookies() == []  # a header sent by the page, never a cookie
        page.screenshot(path=str(tmp_path / "status-token.png"), full_page=True)
        context.close()
    finally:
        gw.stop()
