"""A client's interest in one table's changes, apart from whatever carries them.

A :class:`Subscription` holds the table, the client's filter ANDed with the
rows its identity may see, and the replay cursor of a resuming client. It
decides which change reaches the client and in which message variant (see
:mod:`pylight.messages`), and hands that to its :class:`Sink`: the transport
(a WebSocket, later Server-Sent Events) that encodes and queues it. It knows
nothing of sockets.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pylight import messages
from pylight import query as ql
from pylight.auth import Auth, Identity
from pylight.config import ApiSettings
from pylight.errors import bad_request, not_found
from pylight.hub import Feed, Notice
from pylight.schema import TableInfo

#: Query parameters of a feed URL that are not column filters.
FEED_PARAMS = ("since", "token")


def has_feed(table: TableInfo) -> bool:
    """Whether ``table`` has a change feed: every table; a view only with a change source.

    Nothing writes to a view through Pylight and capture triggers cannot be
    put on one, so its feed would stay silent. A plugin that publishes a
    view's changes itself (``app.hub.publish``) marks its table info, e.g. in
    ``pylight_startup``: ``app.tables["my_view"].change_source = "my_plugin"``.
    """
    return not table.is_view or bool(getattr(table, "change_source", None))


def feed_table(tables: dict[str, TableInfo], name: str, api_prefix: str) -> TableInfo:
    """The table named in a feed's URL; 404 when there is none or it has no feed."""
    table = tables.get(name)
    if table is None:
        raise not_found(f"no table named {name[:100]!r}", table=name[:100])
    if not has_feed(table):
        raise not_found(
            f"{table.name!r} is a view; views cannot be captured, so it has no change "
            f"feed (read it over REST: {api_prefix}/{table.name})", table=table.name)
    return table


@dataclass
class FeedRequest:
    """What a client asked a feed for: its filter, where to resume, and a live window."""

    where: ql.Group
    since: int | None = None
    #: With ``order`` and ``limit``: the query of a live window (API.md 6.3).
    window: ql.ListQuery | None = None
    #: ``select``: the columns of ``record`` and ``old`` (empty: all).
    select: list[str] = field(default_factory=list)


def parse_request(table: TableInfo, arguments: Mapping[str, list[Any]], api: ApiSettings,
                  since: Any = None) -> FeedRequest:
    """A feed's query parameters (a URL's, or a /ws subscribe message's ``filter``);
    ``since``: given apart from them (a message's field, ``Last-Event-ID``)."""
    # Parsed as a list query: the filters, and select, order and limit checked alike.
    query = ql.parse_list_query(table, arguments, api.default_limit, api.max_limit, FEED_PARAMS)
    if query.embeds:
        # A change carries its own row only: related rows are read over REST.
        raise bad_request(f"select: a feed cannot embed related rows ({query.embeds[0].key}(...)); "
                          f"read them over REST with the same select", parameter="select")
    _, params = ql.split_arguments(table, arguments, [*FEED_PARAMS, *ql.LIST_PARAMS])
    if since is None and "since" in params:
        since = params["since"][-1]
    request = FeedRequest(query.where, _since(since), select=query.select)
    if "order" in params and "limit" in params:
        if query.offset or query.after is not None:
            raise bad_request("a live window starts at the first row: no offset or after",
                              parameter="offset" if query.offset else "after")
        request.window = query
    return request


def _since(raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        text = str(raw)
    else:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    # isascii(): str.isdigit() also accepts digits like "²" that int() refuses (a 500).
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise bad_request("since: expected the seq of the last change seen", parameter="since")
    return int(text)


class Sink(Protocol):
    """Where a subscription's messages go: one client connection's queue."""

    def send_notice(self, notice: Notice, variant: str, key: Any = None) -> None: ...

    def send_text(self, text: str) -> None: ...

    def has_room(self) -> bool:
        """Whether a replay may queue more now (the client reads)."""

    def replaying(self, catch_up: Callable[[], None], on: bool) -> None:
        """Call ``catch_up`` whenever the queue drains (``on``), or no longer."""

    def drop_slow(self) -> None:
        """Give up on a client that does not read (it may resume with ``since``)."""


class Subscription:

    __slots__ = (
        "table", "where", "auth", "sink", "columns", "feed", "cursor", "pending_verdict", "identity",
        "row_matcher", "matcher", "simple",
    )
    def __init__(self, table: TableInfo, where: ql.Group, auth: Auth, sink: Sink,
                 identity: Identity | None = None, select: list[str] = ()) -> None:
        self.table = table
        self.where = where
        self.auth = auth
        self.sink = sink
        # Variant names name the selected columns too (see Notice.variant): messages
        # with the same columns are encoded once, whoever asked.
        self.columns = "|" + ",".join(select) if select else ""
        self.feed: Feed | None = None
        # While a resuming client catches up, the seq of the last replayed
        # notice; None once it is live.
        self.cursor: int | None = None
        self.pending_verdict: asyncio.Future[None] | None = None
        self.set_identity(identity)

    def set_identity(self, identity: Identity | None) -> None:
        """The subscriber's own filter ANDed with the rows ``identity`` may see."""
        self.identity = identity
        auth = self.auth
        rows = auth.row_filter(identity, self.table) if auth.enabled else None
        self.row_matcher = auth.matcher_of(self.table, rows)
        self.matcher = auth.matcher_of(self.table, self.where if rows is None
                                       else ql.Group((self.where, rows)))
        # Every change goes out as formatted: the fan-out's fast path.
        self.simple = self.matcher is None and not auth.authorizes

    # -- joining the feed --------------------------------------------------------------
    def start(self, feed: Feed, since: int | None) -> None:
        """Decide on the replay and subscribe in one step on the event loop: no
        change can be published in between, so there is no gap and no duplicate
        at the seam."""
        self.feed = feed
        if since is not None:
            if feed.since(since) is None:
                self.sink.send_text(messages.resync(feed.table, feed.seq, since))
            else:
                # Replayed from the ring a batch at a time as the client reads
                # (queueing a whole replay at once would overflow the queue, so a
                # client dropped for being slow could never resume).
                self.cursor = since
                self.sink.replaying(self.catch_up, True)
        feed.subscribers.add(self)
        self.catch_up()

    def stop(self) -> None:
        if self.feed is not None:
            self.feed.subscribers.discard(self)
        if self.cursor is not None:
            self.cursor = None
            self.sink.replaying(self.catch_up, False)

    # -- delivery ---------------------------------------------------------------------
    def deliver(self, notice: Notice) -> None:
        """A change was published (the hub calls this for every subscriber)."""
        if self.simple and self.cursor is None:
            self.sink.send_notice(notice, "plain" + self.columns)
            return
        if self.cursor is not None:
            # Still catching up: this notice is in the ring and is read from
            # there in order. Once the ring let go of what this client has yet
            # to read, it can never catch up: drop it now, as a slow client.
            ring = self.feed.ring if self.feed is not None else None
            if ring and ring[0].seq > self.cursor + 1:
                self._give_up()
            return
        self._offer(notice)

    def catch_up(self) -> None:
        """Move replayed notices from the ring to the sink while it has room."""
        feed, sink = self.feed, self.sink
        while self.cursor is not None and feed is not None and sink.has_room():
            notices = feed.after(self.cursor, 500)
            if notices is None:
                # The ring moved on faster than this client read: the same as a
                # client that stops reading. It can resume (and will be told to resync).
                self._give_up()
                return
            if not notices:
                self.cursor = None  # caught up; from now on changes are delivered live
                sink.replaying(self.catch_up, False)
                return
            for notice in notices:
                if not sink.has_room() or self.cursor is None:
                    break
                self.cursor = notice.seq
                self._offer(notice)

    def _give_up(self) -> None:
        self.cursor = None
        self.sink.replaying(self.catch_up, False)
        self.sink.drop_slow()

    def _offer(self, notice: Notice) -> None:
        """Send ``notice`` in the variant this subscriber may see, if any.

        Every row a message shows must be one this subscriber may read:
        ``record`` (its filter includes the auth row filter) and ``old`` too.
        """
        matcher, change = self.matcher, notice.change
        if matcher is None or matcher(change.record):
            old = change.old
            if old is not None and self.row_matcher is not None and not self.row_matcher(old):
                old = None  # the row moved into this identity's rows from rows it may not see
            variant = ("plain" if old is change.old else "without_old") + self.columns
            if self.auth.authorizes:
                self._send_if_allowed(notice, change.record, variant, old,
                                      "without_old" + self.columns)
            else:
                self.sink.send_notice(notice, variant)
        elif change.event == "updated" and matcher(change.old):
            if self.row_matcher is not None and not self.row_matcher(change.record):
                # The row left the rows this identity may see: say so without
                # showing what it became.
                self._send_if_allowed(notice, change.old, "left")
            elif self.auth.authorizes:
                self._send_if_allowed(notice, change.record, "unmatched" + self.columns,
                                      change.old, None)
            else:
                self.sink.send_notice(notice, "unmatched" + self.columns)

    def _send_if_allowed(self, notice: Notice, record: dict[str, Any] | None, variant: str,
                         old: dict[str, Any] | None = None,
                         without_old: str | None = None) -> None:
        """Send ``variant`` if the authorisation hooks let this subscriber read ``record``;
        if they do not let it read ``old`` (the row before an update, which ``variant``
        shows), send ``without_old`` instead, or nothing when that is None.

        A hook may be async; later notices then wait for earlier verdicts, so
        the client still receives its changes in seq order.
        """
        table = notice.change.table
        verdict = self.auth.may_read(self.identity, table, record)
        old_verdict = True if old is None else self.auth.may_read(self.identity, table, old)

        def send(allowed: Any, old_allowed: Any) -> None:
            chosen = (variant if old_allowed else without_old) if allowed else None
            if chosen is not None:
                key = self.table.key_of(notice.change.old) if chosen == "left" else None
                self.sink.send_notice(notice, chosen, key)

        if self.pending_verdict is None and not inspect.isawaitable(verdict) \
                and not inspect.isawaitable(old_verdict):
            send(verdict, old_verdict)
            return
        previous = self.pending_verdict

        async def in_order() -> None:
            if previous is not None:
                await previous
            allowed = await verdict if inspect.isawaitable(verdict) else verdict
            old_allowed = await old_verdict if inspect.isawaitable(old_verdict) else old_verdict
            send(allowed, old_allowed)

        task = asyncio.ensure_future(in_order())
        self.pending_verdict = task

        def settled(done: Any) -> None:
            if self.pending_verdict is done:
                self.pending_verdict = None
        task.add_done_callback(settled)
