"""A feed connection apart from its transport: who is connected, what they
subscribed to, and the messages they send.

The transports (the WebSockets of :mod:`pylight.realtime`, the event streams
of :mod:`pylight.sse`) carry bytes; a :class:`FeedSession` authenticates the
caller before the upgrade, starts its subscriptions (a change feed or a live
window, one per table feed, many on ``/ws``), answers its messages (``ping``,
``auth``, and on ``/ws`` ``subscribe`` and ``unsubscribe``), limits their
rate and closes the connection when the caller's credential expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs

from tornado.httputil import HTTPServerRequest
from tornado.ioloop import IOLoop

from pylight import messages, values
from pylight.auth import Auth, Identity
from pylight.config import ApiSettings, RealtimeSettings
from pylight.connections import Connections, RateLimit
from pylight.errors import ApiError, bad_request, not_found, unauthorized, unavailable
from pylight.hub import Hub
from pylight.schema import TableInfo
from pylight.subscription import FeedRequest, Sink, Subscription, feed_table, parse_request
from pylight.window import Windows, WindowSubscription

log = logging.getLogger("pylight")

MAX_ID_LENGTH = 64  # characters of a /ws subscription id


@dataclass(frozen=True)
class FeedContext:
    """What every feed transport is handed when it is routed (its collaborators)."""

    tables: dict[str, TableInfo]
    hub: Hub
    auth: Auth
    connections: Connections
    windows: Windows
    settings: RealtimeSettings
    api: ApiSettings  # the prefix, and the limits a window's query is held to

    @property
    def cors_origins(self) -> list[str]:  # for the JSON errors refusing an upgrade
        return self.api.cors_origins


class Transport(Protocol):
    def send_text(self, text: str) -> None: ...

    def tagged(self, sub: str) -> Sink:
        """The sink of one ``/ws`` subscription: its messages carry ``"sub"``."""

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class FeedSession:

    __slots__ = (
        "context", "request", "transport", "identity", "subscriptions", "expiry", "rate", "ended",
        "_turn",
    )
    def __init__(self, context: FeedContext, request: HTTPServerRequest,
                 transport: Transport) -> None:
        self.context = context
        self.request = request
        self.transport = transport
        self.identity: Identity | None = None
        # By the client's id on /ws; the one subscription of a table feed is None's.
        self.subscriptions: dict[str | None, Any] = {}
        self.expiry: Any = None
        self.rate = RateLimit(context.settings.max_messages_per_second)
        self.ended = False
        self._turn: asyncio.Future[None] | None = None  # the /ws message being handled

    # -- before the upgrade -----------------------------------------------------------------
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

    async def authenticate(self, table: str | None) -> None:
        """401 without a valid credential; with a ``table``, 403 without its read permission."""
        auth = self.context.auth
        if auth.enabled:
            self.identity = await auth.authenticate(self.request)
            if table is not None:
                await auth.authorize(self.identity, "read", table)

    def table_request(self, name: str, arguments: dict[str, list[Any]],
                      since: Any = None) -> tuple[TableInfo, FeedRequest]:
        """The table a feed URL names and what its parameters ask (404/400)."""
        table = feed_table(self.context.tables, name, self.context.api.prefix)
        return table, parse_request(table, arguments, self.context.api, since)

    # -- subscriptions ------------------------------------------------------------------------
    def subscribe(self, table: TableInfo, request: FeedRequest, sink: Sink,
                  sub: str | None = None) -> None:
        """Start a change feed or a live window on ``table``."""
        context = self.context
        feed = context.hub.feed(table.name)
        if request.window is not None:
            subscription: Any = WindowSubscription(context.windows, table, request.window,
                                                   context.auth, feed, sink, self.identity)
        else:
            subscription = Subscription(table, request.where, context.auth, sink, self.identity,
                                        request.select)
            subscription.start(feed, request.since)
        self.subscriptions[sub] = subscription
        self._schedule_expiry()

    async def _subscribe_message(self, data: dict[str, Any]) -> None:
        sub = data.get("id")
        if not isinstance(sub, str) or not 0 < len(sub) <= MAX_ID_LENGTH:
            raise bad_request(f"id: a string of 1 to {MAX_ID_LENGTH} characters naming the "
                              "subscription")
        if sub in self.subscriptions:
            raise bad_request(f"id {sub!r} is already subscribed on this connection")
        limit = self.context.settings.max_subscriptions
        if limit and len(self.subscriptions) >= limit:
            raise bad_request(f"this connection has its maximum of {limit} subscriptions")
        name, text = data.get("table"), data.get("filter") or ""
        if not isinstance(name, str) or not isinstance(text, str):
            raise bad_request("table: a table name; filter: a query string")
        arguments = parse_qs(text, keep_blank_values=True)
        table, request = self.table_request(name, arguments, data.get("since"))
        auth = self.context.auth
        if auth.enabled:
            await auth.authorize(self.identity, "read", table.name)
        sink = self.transport.tagged(sub)
        sink.send_text(messages.subscribed(table.name, self.context.hub.feed(table.name).seq))
        self.subscribe(table, request, sink, sub)

    def _unsubscribe_message(self, data: dict[str, Any]) -> None:
        sub = data.get("id")
        subscription = self.subscriptions.pop(sub, None) if isinstance(sub, str) else None
        if subscription is None:
            raise not_found(f"no subscription with id {str(sub)[:MAX_ID_LENGTH]!r}")
        subscription.stop()
        self.transport.tagged(sub).send_text(messages.UNSUBSCRIBED)

    # -- the client's messages ---------------------------------------------------------
    def receive(self, message: str | bytes, table: str, channel: bool = False) -> None:
        """A message from the client; ``channel``: on ``/ws``, where it may subscribe."""
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
            self._in_turn(self.refresh(data["token"]))
        elif channel and kind in ("subscribe", "unsubscribe"):
            self._in_turn(self._channel_message(kind, data))
        elif channel:
            self.transport.send_text(messages.channel_error(bad_request(
                'unknown message; send {"type": "subscribe", ...}, "unsubscribe", "auth" '
                'or "ping"')))
        else:
            self.transport.send_text(messages.UNKNOWN)

    def _in_turn(self, work: Any) -> None:
        """Handle one message after the ones before it (their checks may wait on hooks)."""
        previous = self._turn

        async def after() -> None:
            if previous is not None:
                await previous
            if not self.ended:
                await work
            else:
                work.close()

        self._turn = asyncio.ensure_future(after())

    async def _channel_message(self, kind: str, data: dict[str, Any]) -> None:
        try:
            if kind == "subscribe":
                await self._subscribe_message(data)
            else:
                self._unsubscribe_message(data)
        except ApiError as error:
            sub = data.get("id")
            text = messages.channel_error(error)
            sink = self.transport.tagged(sub) if isinstance(sub, str) and sub else None
            (sink or self.transport).send_text(text)

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
            for subscription in self.subscriptions.values():
                await auth.authorize(identity, "read", subscription.table.name)
        except ApiError as exc:
            self.transport.send_text(messages.error(exc.message, exc.code))
            return
        self.identity = identity
        for subscription in self.subscriptions.values():
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
        for subscription in self.subscriptions.values():
            subscription.stop()
        self.subscriptions.clear()
