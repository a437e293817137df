"""Helpers for the auth plugin tests: tokens, keys, WebSocket clients with credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from pylight import hookimpl
from pylight.auth import Identity
from tests.realtime_support import TIMEOUT, FeedClient, ws_url

UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
HS_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
AUDIENCE = "https://api.pylight.test"
ISSUER = "https://auth.pylight.test"

_KEYS: dict[str, Any] = {}


class CallerByHeader:
    """The half of a test auth plugin that names the caller: ``X-User: <name>`` is
    the subject ``<name>``; no header is an anonymous caller."""

    @hookimpl
    def pylight_authenticate(self, request: Any, token: Any, app: Any) -> Identity | None:
        who = request.headers.get("X-User")
        return Identity(subject=who, provider="gate") if who else None


def private_key(kind: str) -> Any:
    """A private key made once per test session (``rsa``, ``ec`` or ``other-rsa``)."""
    if kind not in _KEYS:
        if kind == "ec":
            _KEYS[kind] = ec.generate_private_key(ec.SECP256R1())
        else:
            _KEYS[kind] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEYS[kind]


def public_pem(kind: str) -> bytes:
    return private_key(kind).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_public_key(tmp_path: Any, kind: str) -> str:
    path = tmp_path / f"{kind}-public.pem"
    path.write_bytes(public_pem(kind))
    return str(path)


def claims(sub: str = "alice", exp_in: float | None = 60, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"sub": sub, "iat": now, "aud": AUDIENCE, "iss": ISSUER}
    if exp_in is not None:
        out["exp"] = now + exp_in
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def token(payload: dict[str, Any] | None = None, key: Any = HS_SECRET, alg: str = "HS256",
          headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(payload if payload is not None else claims(), key, algorithm=alg,
                      headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(payload: dict[str, Any]) -> str:
    """An ``alg: none`` token: header and payload, empty signature."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(payload).encode())}."


def hmac_token(payload: dict[str, Any], secret: bytes, alg: str = "HS256") -> str:
    """An HS256 token signed with any bytes as secret (PyJWT refuses a PEM key as one)."""
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = _b64(json.dumps(payload).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def jwt_section(**overrides: Any) -> dict[str, dict[str, Any]]:
    """``[plugin:jwt]`` for HS256 with audience and issuer; ``None`` drops a setting."""
    section: dict[str, Any] = {"algorithm": "HS256", "secret": HS_SECRET, "audience": AUDIENCE,
                               "issuer": ISSUER, "leeway": "0",
                               "permissions_claim": "permissions"}
    section.update(overrides)
    return {"plugin:jwt": {k: v for k, v in section.items() if v is not None}}


def assert_error(response: Any, status: int, *words: str) -> dict[str, Any]:
    """The JSON error body of ``response``, checked for its status and message words."""
    assert response.status == status, (response.status, response.body)
    body = response.body
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), response.raw
    error = body["error"]
    assert error["status"] == status
    assert error["code"] == {401: "unauthorized", 403: "forbidden", 404: "not_found",
                             405: "method_not_allowed"}.get(status, error["code"])
    for word in words:
        assert word in error["message"], (word, error["message"])
    if status == 401:
        assert response.headers.get("WWW-Authenticate") == "Bearer"
    return error


def assert_denied(response: Any, permission: str, table: str) -> None:
    """A 403 whose message and details name the missing permission."""
    error = assert_error(response, 403, repr(permission), repr(table))
    assert error["details"]["permission"] == permission
    assert error["details"]["table"] == table


async def open_feed(server: Any, path: str, headers: dict[str, str] | None = None) -> FeedClient:
    """A feed client sending ``headers`` with the upgrade; waits for the hello."""
    request = HTTPRequest(ws_url(server, path), headers=headers or {}, connect_timeout=TIMEOUT)
    conn = await websocket_connect(request)
    client = FeedClient(conn, None)
    client.hello = await client.recv()
    assert client.hello is not None and client.hello["type"] == "hello", client.hello
    return client


async def send_auth(client: FeedClient, credential: str) -> dict[str, Any]:
    """Send ``{"type": "auth"}`` and return the server's answer to it."""
    client.conn.write_message(json.dumps({"type": "auth", "token": credential}))
    while True:
        message = await client.recv()
        assert message is not None, "closed while waiting for the auth answer"
        if message.get("type") in ("auth", "error"):
            return message


class LogCapture(logging.Handler):
    """Every record of the given loggers, formatted, while installed."""

    def __init__(self, *names: str) -> None:
        super().__init__(logging.DEBUG)
        self.names = names or ("",)
        self.lines: list[str] = []
        self._levels: list[tuple[logging.Logger, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.args!r}")

    def __enter__(self) -> LogCapture:
        for name in self.names:
            logger = logging.getLogger(name)
            self._levels.append((logger, logger.level))
            logger.setLevel(logging.DEBUG)
            logger.addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        for logger, level in self._levels:
            logger.removeHandler(self)
            logger.setLevel(level)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)
