"""A small Python client for Pylight's live feeds, on ``websocket-client``.

::

    from pylight.client import Client

    client = Client("http://127.0.0.1:8000")             # token="..." with auth on
    client.subscribe("products", filter="price=gt.10")
    client.subscribe("orders", filter="order=total.desc&limit=5")   # a live window
    for message in client:                                  # blocks; Ctrl-C to stop
        if message["type"] == "change":
            print(message["event"], message["record"])
        elif message["type"] == "resync":
            ...  # changes were missed: read the table again over REST

All subscriptions share one socket to ``/ws``. When the connection drops (the
server restarts, the network fails, the server stops answering pings), the
client reconnects with exponential backoff and resubscribes each subscription
with ``since`` = the last seq it saw, so the loop continues with the changes
that were made meanwhile, or with a ``resync`` when the server no longer has
them. A refusal that will not change by retrying (a bad token, a table that
does not exist) ends the loop with :class:`ClientError`.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import websocket

#: The messages that concern one subscription (they carry its ``sub``).
SUBSCRIPTION_MESSAGES = ("subscribed", "change", "window", "resync", "error", "unsubscribed")


class ClientError(Exception):
    """The server refused in a way retrying will not change (HTTP ``status``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


@dataclass
class Subscription:
    id: str
    table: str
    filter: str = ""
    seq: int | None = None  # the last seq seen: where a reconnection resumes
    active: bool = True

    def request(self) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "subscribe", "id": self.id, "table": self.table,
                                   "filter": self.filter}
        window = "order=" in self.filter and "limit=" in self.filter
        if self.seq is not None and not window:  # a window starts afresh: a new snapshot
            message["since"] = self.seq
        return message


class Client:
    def __init__(self, url: str, token: str | None = None, *, ws_prefix: str = "/ws",
                 min_delay: float = 0.5, max_delay: float = 10.0,
                 connect_timeout: float = 10.0) -> None:
        """``url``: the server (``http://host:port``); ``token``: a bearer token or API key."""
        base = url.rstrip("/")
        self.url = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + ws_prefix
        self.token = token
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.connect_timeout = connect_timeout
        self.subscriptions: dict[str, Subscription] = {}
        self.socket: websocket.WebSocket | None = None
        self.heartbeat = 20.0
        self.attempt = 0
        self.closed = False
        self._count = 0

    # -- what to follow --------------------------------------------------------------
    def subscribe(self, table: str, filter: str = "", id: str | None = None) -> Subscription:
        """Follow ``table``'s changes matching ``filter`` (the REST query language); with
        ``order`` and ``limit`` in it, a live window."""
        if id is None:
            self._count += 1
            id = f"s{self._count}"
        subscription = Subscription(id, table, filter)
        self.subscriptions[id] = subscription
        if self.socket is not None:
            self._send(subscription.request())
        return subscription

    def unsubscribe(self, subscription: Subscription | str) -> None:
        key = subscription if isinstance(subscription, str) else subscription.id
        found = self.subscriptions.pop(key, None)
        if found is not None and self.socket is not None:
            self._send({"type": "unsubscribe", "id": key})

    def close(self) -> None:
        self.closed = True
        if self.socket is not None:
            try:
                self.socket.close()
            except (OSError, websocket.WebSocketException):
                pass
            self.socket = None

    # -- the loop ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.messages()

    def messages(self) -> Iterator[dict[str, Any]]:
        """Every message of every subscription, reconnecting as needed, until :meth:`close`."""
        while not self.closed:
            if self.socket is None and not self._connect():
                continue
            message = self._receive()
            if message is None:
                continue
            if self._track(message):
                yield message

    def _connect(self) -> bool:
        """Open the socket and (re)subscribe; False after a failure (it waited its backoff)."""
        headers = [f"Authorization: Bearer {self.token}"] if self.token else []
        url = self.url + (f"?token={quote(self.token)}" if self.token else "")
        try:
            socket = websocket.create_connection(url, timeout=self.connect_timeout,
                                                 header=headers)
            hello = json.loads(socket.recv())
        except websocket.WebSocketBadStatusException as exc:
            if exc.status_code in (400, 401, 403, 404):
                raise ClientError(exc.status_code, _reason(exc)) from None
            self._wait()
            return False
        except (OSError, websocket.WebSocketException, ValueError):
            self._wait()
            return False
        self.heartbeat = float(hello.get("heartbeat") or 20)
        # Silence past two heartbeat intervals (the server pings every interval) is a dead link.
        socket.settimeout(self.heartbeat * 2 + 5)
        self.socket = socket
        self.attempt = 0
        for subscription in list(self.subscriptions.values()):
            self._send(subscription.request())
        return True

    def _receive(self) -> dict[str, Any] | None:
        assert self.socket is not None
        try:
            text = self.socket.recv()  # answers the server's pings by itself
        except (OSError, websocket.WebSocketException):
            self._lost()
            return None
        try:
            message = json.loads(text)
        except ValueError:
            return None
        return message if isinstance(message, dict) else None

    def _track(self, message: dict[str, Any]) -> bool:
        """Keep each subscription's seq; False for messages that are the connection's own."""
        kind = message.get("type")
        if kind not in SUBSCRIPTION_MESSAGES:
            return kind == "error"  # an error about the connection itself
        subscription = self.subscriptions.get(message.get("sub", ""))
        if subscription is None:
            # Unsubscribed: only the server's confirmation; what it had queued is dropped.
            return kind == "unsubscribed"
        if kind in ("subscribed", "change", "resync") and isinstance(message.get("seq"), int):
            if kind != "subscribed" or subscription.seq is None:
                subscription.seq = message["seq"]
        elif kind == "error":
            # Refused (no such table, bad filter, no permission): it would be again.
            subscription.active = False
            self.subscriptions.pop(subscription.id, None)
        return True

    def _send(self, message: dict[str, Any]) -> None:
        try:
            assert self.socket is not None
            self.socket.send(json.dumps(message))
        except (OSError, websocket.WebSocketException):
            self._lost()

    def _lost(self) -> None:
        if self.socket is not None:
            try:
                self.socket.close()
            except (OSError, websocket.WebSocketException):
                pass
        self.socket = None
        if not self.closed:
            self._wait()

    def _wait(self) -> None:
        """Exponential backoff with jitter, so many clients do not reconnect in step."""
        delay = min(self.max_delay, self.min_delay * 2 ** self.attempt)
        self.attempt += 1
        time.sleep(delay / 2 + random.random() * delay / 2)


def _reason(exc: websocket.WebSocketBadStatusException) -> str:
    body = getattr(exc, "resp_body", None)
    try:
        return json.loads(body)["error"]["message"] if body else str(exc)
    except (ValueError, KeyError, TypeError):
        return str(exc)
