"""Browser friendliness (issue 14, item 4): the loopback names of one machine are one host
for the feeds' Origin rule and for CORS; a refused upgrade names the origin and the
setting, in its JSON error and in one log line; `/pylight.js` does not retry what
retrying cannot mend (401/403/404) and tells `onError`."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_config
from tests.live_server import LiveServer, free_port
from tests.realtime_support import port_of
from tests.test_clients import browser  # noqa: F401 (the Chromium fixture)
from tests.test_origins import assert_forbidden, opens, upgrade

SETTING = "[realtime] allowed_origins"


def aliases(port: int) -> list[str]:
    """This server's own pages under its other loopback names (it listens on 127.0.0.1)."""
    return [f"http://localhost:{port}", f"http://LocalHost:{port}", f"http://[::1]:{port}",
            f"http://127.0.0.7:{port}", f"https://localhost:{port}"]


def strangers(port: int) -> list[tuple[str, str]]:
    """(Origin, Host) pairs that stay foreign: another port is another program, and a
    loopback page talking to a server reached by a public name is not its own."""
    here = f"127.0.0.1:{port}"
    return [(f"http://localhost:{port + 1}", here), ("http://localhost", here),
            (f"http://localhost.evil.example:{port}", here), (f"http://127.0.0.1:{port}x", here),
            (f"http://localhost:{port}", f"pylight.example.com:{port}"), ("null", here)]


@pytest.mark.gen_test(timeout=60)
async def test_loopback_names_are_one_host_for_feeds(server, caplog):
    port = port_of(server)
    for origin in aliases(port):
        # Chromium marks a request from localhost to 127.0.0.1 as cross-site.
        for site in ({}, {"Sec-Fetch-Site": "cross-site"}):
            assert await opens(server, {"Origin": origin, **site})
            assert await opens(server, {"Origin": origin, **site}, "/ws")
    # The server reached as localhost, the page at 127.0.0.1.
    assert await opens(server, {"Origin": f"http://127.0.0.1:{port}", "Host": f"localhost:{port}",
                                "Sec-Fetch-Site": "cross-site"})

    caplog.set_level(logging.WARNING, logger="pylight")
    for origin, host in strangers(port):
        caplog.clear()
        refused = await upgrade(server, {"Origin": origin, "Host": host}, "/ws/products?id=gt.1")
        assert_forbidden(refused)
        error = refused.body["error"]
        assert repr(origin) in error["message"] and SETTING in error["message"]
        assert error["details"] == {"origin": origin, "setting": SETTING}
        assert not await opens(server, {"Origin": origin, "Host": host}, "/ws")
        # One line per refused upgrade, naming the origin and the setting.
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                 and r.name == "pylight"]
        assert len(lines) == 2 and all(repr(origin) in line and SETTING in line for line in lines)
    assert server.app.connections.count() == 0


async def stream_headers(server: Any, path: str, origin: str) -> dict[str, str]:
    """The response headers of an event stream (which never ends by itself)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port_of(server)}\r\n"
                 f"Origin: {origin}\r\nAccept: text/event-stream\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    lines = head.decode().split("\r\n")[1:]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}


@pytest.mark.gen_test(timeout=60)
async def test_loopback_names_get_cors_on_rest_and_event_streams(server):
    port = port_of(server)
    for number, origin in enumerate(aliases(port)[:3]):
        mine = {"Origin": origin}
        listed = await server.get("/api/products?select=id,name", headers=mine)
        assert listed.status == 200
        assert listed.headers["Access-Control-Allow-Origin"] == origin
        assert "Origin" in listed.headers["Vary"]
        created = await server.post("/api/products", {"name": "c", "price": "1", "sku": f"L-{number}"},
                                    headers=mine)
        assert created.status == 201
        assert created.headers["Access-Control-Allow-Origin"] == origin
        assert "Location" in created.headers["Access-Control-Expose-Headers"]
        missing = await server.get("/api/nope", headers=mine)
        assert missing.status == 404 and missing.headers["Access-Control-Allow-Origin"] == origin
        preflight = await server.request("OPTIONS", "/api/products", headers={
            **mine, "Access-Control-Request-Method": "PATCH"})
        assert preflight.status == 204
        assert "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
        stream = await stream_headers(server, "/sse/products", origin)
        assert stream["access-control-allow-origin"] == origin
    for origin, _host in strangers(port)[:3]:
        foreign = await server.get("/api/products", headers={"Origin": origin})
        assert foreign.status == 200 and "Access-Control-Allow-Origin" not in foreign.headers
        assert "Origin" in foreign.headers["Vary"]
        assert "access-control-allow-origin" not in await stream_headers(
            server, "/sse/products", origin)
        preflight = await server.request("OPTIONS", "/api/products", headers={
            "Origin": origin, "Access-Control-Request-Method": "PATCH"})
        assert preflight.status == 405  # CORS is off ([api] cors_origins is empty)


# -- /pylight.js in Chromium ---------------------------------------------------------------

KEY = "k-3f6c1a0d9b77"


@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[LiveServer]:
    """`python -m pylight` on a SQLite demo with API keys on."""
    conf = write_config(tmp_path, f"sqlite:///{tmp_path}/browser.db", {
        "plugin:apikeys": {"reader.key": KEY, "reader.permissions": "*: *"}})
    port = free_port()
    with LiveServer(conf, port, tmp_path) as server:
        yield server


@pytest.fixture
def foreign_site() -> Iterator[str]:
    """Another program on this machine serving an empty page: another origin."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<!doctype html><title>another app</title>")

        def log_message(self, *args: Any) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{site.server_address[1]}"
    site.shutdown()
    site.server_close()


SUBSCRIBE = """([url, token]) => {
  window.sockets = 0;
  const Native = window.WebSocket;
  window.WebSocket = function (target) { window.sockets += 1; return new Native(target); };
  window.seen = {statuses: [], changes: [], errors: [], clientErrors: []};
  const client = new Pylight.Client({url, token, minDelay: 100, maxDelay: 200,
                                     onError: (e) => window.seen.clientErrors.push(e)});
  client.subscribe("products", {
    onStatus: (s) => window.seen.statuses.push(s),
    onChange: (m) => window.seen.changes.push(m.record.name),
    onError: (e) => window.seen.errors.push(e),
  });
}"""


def run_client(page: Any, page_url: str, server: LiveServer, token: str) -> None:
    page.goto(page_url)
    page.add_script_tag(url=server.base_url + "/pylight.js")
    page.evaluate(SUBSCRIBE, [server.base_url, token])


def test_pylight_js_on_another_loopback_name_and_its_permanent_failures(
        keyed_server, foreign_site, browser):  # noqa: F811 (the fixture imported above)
    server = keyed_server
    page = browser.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))

    # The page under one loopback name, the client given the other: one host.
    run_client(page, f"http://localhost:{server.port}/pylight.js", server, KEY)
    page.wait_for_function("window.seen.statuses.includes('open')", timeout=10000)
    status, _ = server_write(server, "From localhost")
    assert status == 201
    page.wait_for_function("window.seen.changes.includes('From localhost')", timeout=10000)

    # A bad token: 401, told once, not retried.
    run_client(page, f"http://localhost:{server.port}/pylight.js", server, "not-a-key")
    page.wait_for_function("window.seen.errors.length === 1", timeout=10000)
    unauthorized = page.evaluate("window.seen")
    assert unauthorized["errors"][0]["status"] == 401
    assert unauthorized["clientErrors"] == unauthorized["errors"]
    assert unauthorized["statuses"][-1] == "closed"

    # Another program's page: the server refuses its origin; onError says which setting.
    run_client(page, foreign_site + "/", server, KEY)
    page.wait_for_function("window.seen.errors.length === 1", timeout=10000)
    refused = page.evaluate("window.seen")["errors"][0]
    assert refused["status"] == 403 and SETTING in refused["message"]
    assert foreign_site in refused["message"]
    # Nothing retries: still the one socket after several backoff periods.
    page.wait_for_timeout(1000)
    assert page.evaluate("[window.sockets, window.seen.statuses.at(-1)]") == [1, "closed"]
    assert page_errors == []
    assert f"WebSocket refused for a page at origin '{foreign_site}'" in server.log()


def server_write(server: LiveServer, name: str) -> tuple[int, Any]:
    """POST a product with the API key: the status and the stored row."""
    request = urllib.request.Request(
        server.base_url + "/api/products", method="POST",
        data=json.dumps({"name": name, "price": "2.50", "sku": name}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())
