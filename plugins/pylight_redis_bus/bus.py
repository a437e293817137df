"""A bus between Pylight processes through Redis: one seq per table for all, replay from streams.

Active only with ``[bus] url = redis://...``. Every change a process commits
is handed to Redis by one Lua script that, atomically, increments the
table's seq key, appends the change to the table's stream (trimmed to about
``[realtime] replay_buffer`` entries) and publishes it. Redis runs scripts
one at a time, so the order of publications is the order of seqs, whichever
process wrote. Every process, the writer included, subscribes and hands each
published change to ``hub.deliver(change, seq)``: ``seq`` means the same on
every process, and at start-up each process fills its replay rings from the
streams, so a client may resume with ``since=`` on any of them.

If Redis cannot be reached (at start-up or later) the process logs one
warning, delivers its own changes locally (numbered on from its last seq),
retries in the background with backoff and, once Redis answers again, moves
every table's seq past anything any process numbered meanwhile, forgets its
replay rings (a ``since=`` from before the outage gets ``resync``) and logs
that cross-process delivery resumed.

Redis layout, with ``P`` the ``[bus] prefix``: ``P:seq:<table>`` (a counter),
``P:log:<table>`` (a stream of ``seq``, ``origin``, ``change`` entries) and
the channel ``P:changes`` (``<seq>\\n<origin>\\n<change JSON>`` messages).
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from pylight import values
from pylight.backend import redact_url
from pylight.hub import Change

if TYPE_CHECKING:
    from pylight.app import Pylight

log = logging.getLogger("pylight.bus")

# Reconnection backoff: first retry after MIN_DELAY seconds, doubling up to MAX_DELAY.
MIN_DELAY, MAX_DELAY = 0.25, 5.0
# An idle subscription is pinged this often; no answer at all for DEAD_AFTER seconds
# means the connection is gone even if the socket did not say so.
PING_EVERY, DEAD_AFTER = 5.0, 15.0
SEND_BATCH = 256  # changes sent in one pipelined round trip
SHUTDOWN_FLUSH = 5.0  # seconds shutdown waits for this process's changes to reach Redis
ERRORS = (RedisError, OSError, asyncio.TimeoutError)

# Number, keep and publish one change. KEYS: seq key, stream key. ARGV: channel,
# floor (the sender's own last seq for the table: after Redis lost its data the
# counter restarts above it), stream length, origin, change JSON, and a "seen" key
# for changes every process observes (change capture), or '' for none: the first
# process to relay such a change numbers it, the others' copies are dropped (0).
RELAY = """
if ARGV[6] ~= '' and not redis.call('SET', ARGV[6], '1', 'NX', 'EX', 3600) then
  return 0
end
local floor = tonumber(ARGV[2])
if tonumber(redis.call('GET', KEYS[1]) or '0') < floor then
  redis.call('SET', KEYS[1], floor)
end
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'seq', seq, 'origin', ARGV[4],
           'change', ARGV[5])
redis.call('PUBLISH', ARGV[1], seq .. '\\n' .. ARGV[4] .. '\\n' .. ARGV[5])
return seq
"""

# After an outage: move each seq key past the caller's own last seq and past
# every number handed out so far. KEYS: seq keys; ARGV: the caller's floors.
BUMP = """
local out = {}
for i, key in ipairs(KEYS) do
  local floor = tonumber(ARGV[i])
  if tonumber(redis.call('GET', key) or '0') < floor then
    redis.call('SET', key, floor)
  end
  out[i] = redis.call('INCR', key)
end
return out
"""


def encode_change(change: Change) -> str:
    data = {"table": change.table, "event": change.event, "pk": change.pk,
            "record": change.record, "old": change.old, "at": change.at.isoformat(),
            "source": change.source}
    if change.by_shown:
        data["by"] = change.by
    return values.dumps(data)


def decode_change(text: str) -> Change:
    # Plain json (not values.loads): the record already holds JSON values, and
    # values.loads would turn a float column's 1.5 into a Decimal, sent as "1.5".
    data = json.loads(text)
    return Change(data["table"], data["event"], data["pk"], data["record"], data.get("old"),
                  datetime.datetime.fromisoformat(data["at"]), source=data.get("source", "api"),
                  by=data.get("by"), by_shown="by" in data)


class RedisBus:
    """The relay of one Pylight process: its Redis connections, state and tasks."""

    def __init__(self, app: Pylight) -> None:
        self.app = app
        self.hub = app.hub
        settings = app.config.bus
        self.url = settings.url
        self.shown_url = redact_url(settings.url)
        prefix = settings.prefix
        self.channel = f"{prefix}:changes"
        self.seq_prefix = f"{prefix}:seq:"
        self.log_prefix = f"{prefix}:log:"
        self.seen_prefix = f"{prefix}:seen:"
        self.replay = app.config.realtime.replay_buffer
        self.origin_prefix = f"{uuid.uuid4().hex[:12]}.{os.getpid()}."
        self.ids = itertools.count(1)
        # "connected": local changes go to Redis; "recovering": held while the
        # connection is being re-established; "degraded": delivered locally.
        self.state = "degraded"
        self.pending: dict[str, Change] = {}  # relayed, not yet back from Redis, in order
        self.queue: asyncio.Queue[tuple[str, Change]] = asyncio.Queue()
        self.held: list[Change] = []
        self.client: aioredis.Redis | None = None
        self.pubsub: Any = None
        self.relay_sha = ""
        self.supervisor: asyncio.Task[None] | None = None
        self.closing = False
        self.sent_idle = asyncio.Event()
        self.sent_idle.set()
        self.outages = 0
        self.relayed = self.delivered = self.local = 0

    # -- the hub's relay ---------------------------------------------------------
    def relay(self, change: Change) -> None:
        """Called on the event loop, in commit order, for each change of this process."""
        if self.state == "connected":
            origin = self.origin_prefix + str(next(self.ids))
            self.pending[origin] = change
            self.sent_idle.clear()
            self.queue.put_nowait((origin, change))
        elif self.state == "recovering":
            self.held.append(change)
        else:
            self.local += 1
            self.hub.deliver(change)

    # -- start and stop ------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._connect(recovering=False)
        except ERRORS as exc:
            await self._drop_connections()
            self._degrade(exc, "cannot reach")
            self.supervisor = asyncio.ensure_future(self._supervise(connected=False))
        else:
            log.info("bus: relaying changes through Redis at %s (channel %s)", self.shown_url,
                     self.channel)
            self.supervisor = asyncio.ensure_future(self._supervise(connected=True))

    async def stop(self) -> None:
        """Let this process's last changes reach Redis, then close the connections."""
        if self.state == "connected" and self.pending:
            try:
                await asyncio.wait_for(self._wait_sent(), SHUTDOWN_FLUSH)
            except asyncio.TimeoutError:
                log.warning("bus: %d changes were not confirmed by Redis before shutdown",
                            len(self.pending))
        self.closing = True
        self.state = "degraded"  # what is published from now on stays in this process
        if self.supervisor is not None:
            self.supervisor.cancel()
            try:
                await self.supervisor
            except (asyncio.CancelledError, Exception):
                pass
        await self._drop_connections()

    async def _wait_sent(self) -> None:
        while self.pending and self.state == "connected":
            self.sent_idle.clear()
            await self.sent_idle.wait()

    # -- connecting ------------------------------------------------------------------
    def _client(self) -> aioredis.Redis:
        # No silent retries inside redis-py: a lost connection must surface
        # here, where it switches the process to local delivery.
        return aioredis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 0),
                                       socket_connect_timeout=3, socket_timeout=10,
                                       socket_keepalive=True, decode_responses=True)

    def _tables(self) -> list[str]:
        return sorted(set(self.app.tables) | set(self.hub.feeds))

    async def _connect(self, recovering: bool) -> None:
        """Open both connections, subscribe, and bring the rings and seqs in line with Redis.

        Subscribing comes before reading the streams, so every change is
        either in what was read or among the messages that follow (those
        already read are skipped by their seq).
        """
        client = self.client = self._client()
        await client.ping()
        # Loaded on every (re)connection: a restarted Redis has an empty script cache.
        self.relay_sha = await client.script_load(RELAY)
        tables = self._tables()
        bumped: dict[str, int] = {}
        if recovering:
            self.state = "recovering"  # hold this process's changes until the seqs are known
            floors = [self.hub.feed(table).seq for table in tables]
            if tables:
                result = await client.register_script(BUMP)(
                    keys=[self.seq_prefix + table for table in tables], args=floors)
                bumped = dict(zip(tables, (int(n) for n in result), strict=True))
        self.pubsub = client.pubsub()
        await self.pubsub.subscribe(self.channel)
        confirmed = await self.pubsub.get_message(timeout=5)
        if not confirmed or confirmed.get("type") != "subscribe":
            raise RedisError(f"no subscription confirmation from Redis (got {confirmed!r})")
        pipe = client.pipeline(transaction=True)
        for table in tables:
            pipe.get(self.seq_prefix + table)
            pipe.xrevrange(self.log_prefix + table, count=max(self.replay, 1))
        results = await pipe.execute() if tables else []
        for index, table in enumerate(tables):
            seq_text, entries = results[2 * index], results[2 * index + 1]
            if recovering:
                self._catch_up(table, bumped[table], reversed(entries))
            else:
                self._preload(table, int(seq_text or 0), reversed(entries))
        self.state = "connected"
        held, self.held = self.held, []
        for change in held:
            self.relay(change)

    def _preload(self, table: str, seq: int, entries: Iterable[tuple[str, dict[str, str]]]) -> None:
        """Fill a table's ring from its stream at start-up (no subscriber exists yet)."""
        feed = self.hub.feed(table)
        for _, fields in entries:
            number = int(fields["seq"])
            if number <= feed.seq or self.replay <= 0:
                continue
            change = decode_change(fields["change"])
            feed.ring.append(self.hub.notice(change, number))
            feed.seq = number
        feed.seq = max(feed.seq, seq)

    def _catch_up(self, table: str, bumped: int, entries: Iterable[tuple[str, dict[str, str]]]) -> None:
        """After an outage: what was numbered while we were away cannot be replayed
        reliably, so the ring starts afresh at the bumped seq; changes other
        processes published since the bump are delivered."""
        feed = self.hub.feed(table)
        feed.ring.clear()
        feed.seq = max(feed.seq, bumped)
        for _, fields in entries:
            number = int(fields["seq"])
            if number > feed.seq:
                self.hub.deliver(decode_change(fields["change"]), number)

    async def _drop_connections(self) -> None:
        pubsub, client = self.pubsub, self.client
        self.pubsub = self.client = None
        for closing in (pubsub, client):
            if closing is None:
                continue
            try:
                await asyncio.wait_for(closing.aclose(), 2)
            except (Exception, asyncio.CancelledError):
                log.debug("bus: closing a Redis connection failed", exc_info=True)

    # -- running -----------------------------------------------------------------------
    async def _supervise(self, connected: bool) -> None:
        delay = MIN_DELAY
        while not self.closing:
            if not connected:
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
                try:
                    await self._connect(recovering=True)
                except Exception as exc:  # whatever failed, keep serving locally and retry
                    log.debug("bus: Redis at %s still unreachable: %s", self.shown_url, exc)
                    self._deliver_held()
                    await self._drop_connections()
                    continue
                connected = True
                delay = MIN_DELAY
                log.info("bus: Redis at %s is back; cross-process delivery resumed "
                         "(seqs moved past the outage, replay starts afresh)", self.shown_url)
            tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._send())]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                failure = next((t.exception() for t in done if t.exception()), None)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            if self.closing:
                return
            self._degrade(failure or RedisError("connection closed"), "lost the connection to")
            await self._drop_connections()
            connected = False

    def _degrade(self, exc: BaseException, what: str) -> None:
        """Switch to local delivery; what was relayed but not seen back is delivered here."""
        self.state = "degraded"
        self.outages += 1
        unconfirmed = list(self.pending.values())
        self.pending.clear()
        while not self.queue.empty():
            self.queue.get_nowait()
        self.sent_idle.set()
        log.warning("bus: %s Redis at %s (%s); delivering this process's changes to its own "
                    "clients only, retrying in the background", what, self.shown_url,
                    " ".join(str(exc).split())[:200] or type(exc).__name__)
        for change in unconfirmed:
            self.local += 1
            self.hub.deliver(change)
        self._deliver_held()

    def _deliver_held(self) -> None:
        self.state = "degraded"
        held, self.held = self.held, []
        for change in held:
            self.local += 1
            self.hub.deliver(change)

    async def _send(self) -> None:
        """Relay queued changes in order, pipelined on the one command connection."""
        assert self.client is not None
        while True:
            batch = [await self.queue.get()]
            while len(batch) < SEND_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            pipe = self.client.pipeline(transaction=False)
            for origin, change in batch:
                table = change.table
                pipe.evalsha(self.relay_sha, 2, self.seq_prefix + table, self.log_prefix + table,
                             self.channel, self.hub.feed(table).seq, max(self.replay, 1), origin,
                             encode_change(change),
                             self.seen_prefix + change.origin if change.origin else "")
            results = await pipe.execute()
            for (origin, _), seq in zip(batch, results, strict=True):
                if seq == 0:  # another process relayed this database change first
                    self.pending.pop(origin, None)
            if not self.pending:
                self.sent_idle.set()
            self.relayed += len(batch)

    async def _read(self) -> None:
        """Deliver every published change, this process's own included, with its seq."""
        pubsub = self.pubsub
        assert pubsub is not None
        heard = pinged = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = time.monotonic()
            if message is None:
                if now - heard > DEAD_AFTER:
                    raise RedisError(f"no answer from Redis for {DEAD_AFTER:.0f}s")
                if now - heard > PING_EVERY and now - pinged > PING_EVERY:
                    pinged = now
                    await pubsub.ping()
                continue
            heard = now
            if message.get("type") == "message":
                self._on_message(message["data"])

    def _on_message(self, data: str) -> None:
        try:
            seq_text, origin, text = data.split("\n", 2)
            seq = int(seq_text)
            change = decode_change(text)
        except (ValueError, KeyError, TypeError):
            log.warning("bus: ignoring a malformed message on %s: %.200r", self.channel, data)
            return
        self.pending.pop(origin, None)
        if not self.pending:
            self.sent_idle.set()
        feed = self.hub.feed(change.table)
        if seq <= feed.seq:
            return  # already read from the stream while (re)connecting
        self.delivered += 1
        self.hub.deliver(change, seq)
