"""A feed connection apart from its transport: who is connected, what they
subscribed to, and the messages they send.

The transport (today the WebSocket of :mod:`pylight.realtime`) carries bytes;
a :class:`FeedSession` authenticates the caller before the upgrade, starts
its subscriptions, answers its messages (``ping``, ``auth``), limits their
rate and closes the connection when the caller's credential expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from tornado.httputil import HTTPServerRequest
from tornado.ioloop import IOLoop

from pylight import messages, values
from pylight.auth import Auth, Identity
from pylight.config import RealtimeSettings
from pylight.connections import Connections, RateLimit
from pylight.errors import ApiError, unauthorized, unavailable
from pylight.hub import Hub
from pylight.query import Group
from pylight.schema import TableInfo
from pylight.subscription import Sink, Subscription

log = logging.getLogger("pylight")


@dataclass(frozen=True)
class FeedContext:
    """What every feed transport is handed when it is routed (its collaborators)."""

    tables: dict[str, TableInfo]
    hub: Hub
    auth: Auth
    connections: Connections
    settings: RealtimeSettings
    api_prefix: str
    cors_origins: list[str]  # for the JSON errors refusing an upgrade


class Transport(Protocol):
    def send_text(self, text: str) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class FeedSession:
    def __init__(self, context: FeedContext, request: HTTPServerRequest,
                 transport: Transport) -> None:
        self.context = context
        self.request = request
        self.transport = transport
        self.identity: Identity | None = None
        self.subscriptions: list[Subscription] = []
        self.expiry: Any = None
        self.rate = RateLimit(context.settings.max_messages_per_second)
        self.ended = False

    def over_limit(self, client: str) -> str | None:
        """Why this connection is one too many (None: it is not); counted as refused."""
        settings = self.context.settings
        reason = self.context.connections.over_limit(
            client, settings.max_connections, settings.max_connections_per_client)
        if reason is not None:
            self.context.connections.refused_by_limit += 1
        return reason

    def check_limits(self, client: str) -> None:
        """503 before the upgrade once the connection limits are reached."""
        reason = self.over_limit(client)
        if reason is not None:
            raise unavailable(f"{reason}; retry later", retry_after=5)

    async def authenticate(self, table: str) -> None:
        """Before the upgrade: 401 without a valid credential, 403 without the read permission."""
        auth = self.context.auth
        if auth.enabled:
            self.identity = await auth.authenticate(self.request)
            await auth.authorize(self.identity, "read", table)

    def subscribe(self, table: TableInfo, where: Group, since: int | None,
                  sink: Sink) -> Subscription:
        context = self.context
        subscription = Subscription(table, where, context.auth, sink, self.identity)
        self.subscriptions.append(subscription)
        subscription.start(context.hub.feed(table.name), since)
        self._schedule_expiry()
        return subscription

    # -- the client's messages ---------------------------------------------------------
    def receive(self, message: str | bytes, table: str) -> None:
        if self.ended:
            return
        if not self.rate.take():
            self.context.connections.closed_by_rate += 1
            log.info("closing a %s feed: its client sends more than %d messages a second",
                     table, self.rate.rate)
            self.transport.close(1008, "too many messages; slow down")
            return
        try:
            # values.loads: a message nested too deeply is malformed, not a
            # RecursionError that aborts the connection without a close frame.
            data = values.loads(message)
        except (ValueError, UnicodeDecodeError):
            data = None
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "ping":
            self.transport.send_text(messages.PONG)
        elif kind == "auth" and isinstance(data.get("token"), str):
            asyncio.ensure_future(self.refresh(data["token"]))
        else:
            self.transport.send_text(messages.UNKNOWN)

    async def refresh(self, token: str) -> None:
        """Replace the identity with the one ``token`` proves, before the old one expires."""
        auth = self.context.auth
        if not auth.authenticates:
            self.transport.send_text(messages.error("no auth plugin is enabled", "unsupported"))
            return
        try:
            identity = await auth.authenticate(self.request, token=token)
            if identity is None:
                raise unauthorized("the token was not accepted")
            for subscription in self.subscriptions:
                await auth.authorize(identity, "read", subscription.table.name)
        except ApiError as exc:
            self.transport.send_text(messages.error(exc.message, exc.code))
            return
        self.identity = identity
        for subscription in self.subscriptions:
            subscription.set_identity(identity)
        self._schedule_expiry()
        self.transport.send_text(messages.authenticated(identity))

    # -- expiry and the end --------------------------------------------------------------
    def _schedule_expiry(self) -> None:
        self._cancel_expiry()
        expires_at = self.identity.expires_at if self.identity is not None else None
        if expires_at is not None and not self.ended:
            self.expiry = IOLoop.current().call_later(max(expires_at - time.time(), 0),
                                                      self._expired)

    def _cancel_expiry(self) -> None:
        if self.expiry is not None:
            IOLoop.current().remove_timeout(self.expiry)
            self.expiry = None

    def _expired(self) -> None:
        self.expiry = None
        if not self.ended:
            self.transport.close(4401, "token expired; reconnect or send a fresh token first")

    def end(self) -> None:
        """The connection is gone: leave every feed, cancel the expiry timer."""
        self.ended = True
        self._cancel_expiry()
        for subscription in self.subscriptions:
            subscription.stop()
