"""Origins on every backend: the WebSocket Origin allow-list (`[realtime] allowed_origins`,
refused with a JSON 403 before the upgrade) and CORS for REST (`[api] cors_origins`)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from pylight import hookimpl
from pylight.auth import unauthorized
from tests.realtime_support import TIMEOUT, ws_url

UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
APP = "https://app.example.com"
EVIL = "https://evil.example"


def settings(section: str, key: str, value: str | None) -> Any:
    """Run the test on a server with ``[section] key = value`` (None: the defaults)."""
    config = None if value is None else {section: {key: value}}
    return pytest.mark.parametrize("configured", [config], indirect=True,
                                   ids=["defaults" if value is None else f"{key}={value}"])


@pytest.fixture
def configured(request: pytest.FixtureRequest, make_server: Any) -> Any:
    return make_server(request.param)


def host_of(server: Any) -> str:
    return server.base_url.split("//", 1)[1]


async def upgrade(server: Any, headers: dict[str, str], path: str = "/ws/products") -> Any:
    """The answer to an upgrade request over plain HTTP: a refusal is readable as such."""
    return await server.get(path, headers={**UPGRADE, **headers})


async def opens(server: Any, headers: dict[str, str], path: str = "/ws/products") -> bool:
    """Whether a real WebSocket client with ``headers`` gets its hello (False: HTTP 403)."""
    request = HTTPRequest(ws_url(server, path), headers=headers, connect_timeout=TIMEOUT)
    try:
        conn = await websocket_connect(request)
    except HTTPClientError as exc:
        assert exc.code == 403, exc
        return False
    hello = json.loads(await asyncio.wait_for(conn.read_message(), TIMEOUT))
    assert hello["type"] == "hello"
    conn.close()
    return True


def assert_forbidden(response: Any) -> None:
    assert response.status == 403
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.body["error"]["status"] == 403
    assert response.body["error"]["code"] == "forbidden"
    assert "Access-Control-Allow-Origin" not in response.headers


# -- WebSocket Origin ---------------------------------------------------------------------------

@settings("realtime", "allowed_origins", None)
@pytest.mark.gen_test(timeout=30)
async def test_ws_default_same_host_only(configured):
    server = configured
    host = host_of(server)
    for origin in (EVIL, "null", f"http://{host}.evil.example", f"https://evil.example:{host}"):
        assert_forbidden(await upgrade(server, {"Origin": origin}))
        assert not await opens(server, {"Origin": origin})
    # a browser that says the request is cross-site is refused whatever its Origin
    assert_forbidden(await upgrade(server, {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}))
    assert_forbidden(await upgrade(server, {"Origin": EVIL, "Sec-Fetch-Site": "same-site"}))
    assert server.app.connections.count() == 0
    # the same host, and non-browser clients without an Origin, are accepted
    assert await opens(server, {"Origin": f"http://{host}"})
    assert await opens(server, {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"})
    assert await opens(server, {})


@settings("realtime", "allowed_origins", f"{APP}/, HTTPS://Other.Example.com")
@pytest.mark.gen_test(timeout=30)
async def test_ws_allow_list(configured):
    server = configured
    assert await opens(server, {"Origin": APP})
    assert await opens(server, {"Origin": APP, "Sec-Fetch-Site": "cross-site"})
    assert await opens(server, {"Origin": "https://other.example.com"}, "/ws/users")
    # listed origins add to the same host; they do not replace it
    assert await opens(server, {"Origin": f"http://{host_of(server)}"})
    assert await opens(server, {})
    for origin in (EVIL, "http://app.example.com", "https://app.example.com.evil.example",
                   "https://app.example.com:8443", "null"):
        assert_forbidden(await upgrade(server, {"Origin": origin}))
        assert not await opens(server, {"Origin": origin})
    # the refusal comes before the upgrade: nothing was registered
    assert server.app.connections.count() == 0


@settings("realtime", "allowed_origins", "*")
@pytest.mark.gen_test(timeout=30)
async def test_ws_any_origin(configured):
    server = configured
    for origin in (EVIL, "null", APP):
        assert await opens(server, {"Origin": origin, "Sec-Fetch-Site": "cross-site"})


@settings("realtime", "allowed_origins", APP)
@pytest.mark.gen_test(timeout=30)
async def test_ws_other_refusals_come_first_and_are_json(configured):
    server = configured
    unknown = await upgrade(server, {"Origin": EVIL}, "/ws/nope")
    assert unknown.status == 404 and unknown.body["error"]["code"] == "not_found"
    refused = await upgrade(server, {"Origin": EVIL}, "/ws/products?price=gt.10")
    assert_forbidden(refused)
    assert "origin" in refused.body["error"]["message"].lower()


# -- CORS for REST ---------------------------------------------------------------------------------

def assert_cors(response: Any, origin: str) -> None:
    assert response.headers.get("Access-Control-Allow-Origin") == origin, response.headers
    assert "Location" in response.headers["Access-Control-Expose-Headers"]


def assert_no_cors(response: Any) -> None:
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers


def preflight(method: str = "POST", origin: str = APP) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type, authorization"}


@settings("api", "cors_origins", APP)
@pytest.mark.gen_test(timeout=30)
async def test_cors_allowed_origin(configured):
    server = configured
    mine = {"Origin": APP}
    listed = await server.get("/api/products", headers=mine)
    assert listed.status == 200
    assert_cors(listed, APP)
    assert "Origin" in listed.headers["Vary"]
    created = await server.post("/api/products", {"name": "c", "price": 1, "sku": "C-1"},
                                headers=mine)
    assert created.status == 201
    assert_cors(created, APP)
    pk = created.body["id"]
    assert_cors(await server.patch(f"/api/products/{pk}", {"name": "d"}, headers=mine), APP)
    deleted = await server.delete(f"/api/products/{pk}", headers=mine)
    assert deleted.status == 204
    assert_cors(deleted, APP)
    # errors too, so the browser can read them
    for response in (await server.get(f"/api/products/{pk}", headers=mine),
                     await server.get("/api/nope", headers=mine),
                     await server.get("/nowhere", headers=mine),
                     await server.post("/api/products", {"nope": 1}, headers=mine)):
        assert response.status in (404, 422)
        assert_cors(response, APP)
    assert_cors(await server.get("/api/", headers=mine), APP)
    assert_cors(await server.get("/api/openapi.json", headers=mine), APP)

    answer = await server.request("OPTIONS", "/api/products", headers=preflight())
    assert answer.status == 204
    assert answer.raw == b""
    assert answer.headers["Access-Control-Allow-Origin"] == APP
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert "authorization" in answer.headers["Access-Control-Allow-Headers"].lower()
    assert "Origin" in answer.headers["Vary"]
    item = await server.request("OPTIONS", "/api/products/1", headers=preflight("DELETE"))
    assert item.status == 204
    assert "DELETE" in item.headers["Access-Control-Allow-Methods"]


@settings("api", "cors_origins", APP)
@pytest.mark.gen_test(timeout=30)
async def test_cors_foreign_origin_is_refused(configured):
    server = configured
    foreign = {"Origin": EVIL}
    listed = await server.get("/api/products", headers=foreign)
    assert listed.status == 200  # the browser, not the server, withholds the body
    assert_no_cors(listed)
    assert "Origin" in listed.headers["Vary"]  # a cache must not serve it to APP
    for response in (await server.get("/api/nope", headers=foreign),
                     await server.post("/api/products", {"name": "e", "price": 1, "sku": "E-1"},
                                       headers=foreign)):
        assert_no_cors(response)
    for origin in (EVIL, "http://app.example.com", "https://app.example.com.evil.example", "null"):
        answer = await server.request("OPTIONS", "/api/products",
                                      headers=preflight(origin=origin))
        assert_forbidden(answer)
        assert_no_cors(answer)
    # no Origin: not a CORS request, no CORS headers
    assert_no_cors(await server.get("/api/products"))


@settings("api", "cors_origins", None)
@pytest.mark.gen_test(timeout=30)
async def test_cors_off_by_default(configured):
    server = configured
    for origin in (APP, EVIL):
        response = await server.get("/api/products", headers={"Origin": origin})
        assert response.status == 200
        assert_no_cors(response)
        answer = await server.request("OPTIONS", "/api/products", headers=preflight(origin=origin))
        assert answer.status in (403, 405)
        assert answer.body["error"]["status"] == answer.status
        assert_no_cors(answer)


@settings("api", "cors_origins", "*")
@pytest.mark.gen_test(timeout=30)
async def test_cors_any_origin(configured):
    server = configured
    for origin in (APP, EVIL):
        assert_cors(await server.get("/api/products", headers={"Origin": origin}), "*")
        answer = await server.request("OPTIONS", "/api/orders", headers=preflight(origin=origin))
        assert answer.status == 204
        assert answer.headers["Access-Control-Allow-Origin"] == "*"


class RequireToken:
    """An auth plugin that refuses every request without the token "let-me-in"."""

    @hookimpl
    def pylight_authenticate(self, request: Any, token: str | None, app: Any) -> Any:
        from pylight.auth import Identity

        if token != "let-me-in":
            raise unauthorized("a token is required")
        return Identity("tester", "test")


@pytest.fixture
def guarded(make_server: Any) -> Any:
    return make_server({"api": {"cors_origins": APP}}, plugins=[RequireToken()])


@pytest.mark.gen_test(timeout=30)
async def test_preflight_needs_no_credentials(guarded):
    server = guarded
    # a browser sends the preflight without the Authorization header it asks about
    answer = await server.request("OPTIONS", "/api/products", headers=preflight("GET"))
    assert answer.status == 204
    assert answer.headers["Access-Control-Allow-Origin"] == APP
    assert_forbidden(await server.request("OPTIONS", "/api/products",
                                          headers=preflight(origin=EVIL)))
    # the request itself still needs the token, and its 401 is readable cross-origin
    refused = await server.get("/api/products", headers={"Origin": APP})
    assert refused.status == 401
    assert_cors(refused, APP)
    allowed = await server.get("/api/products",
                               headers={"Origin": APP, "Authorization": "Bearer let-me-in"})
    assert allowed.status == 200
    assert_cors(allowed, APP)
