"""Every open feed connection, whatever its transport: limits, heartbeats, shutdown, counts."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Protocol

from tornado.ioloop import PeriodicCallback


class Connection(Protocol):
    client: str  # the client's address
    table_name: str
    outbox: Any  # its pylight.outbox.Outbox

    def heartbeat(self, now: float) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Connections:
    """One timer drives all heartbeats; shutdown closes all; metrics read the counts."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.open: set[Connection] = set()
        # Open connections per client address, kept with `open` by add()/discard().
        self.per_client: Counter[str] = Counter()
        self.dropped_by_heartbeat = 0
        self.dropped_by_backpressure = 0
        self.refused_by_limit = 0
        self.closed_by_rate = 0
        # Messages written by connections since closed; open ones count their own
        # (outbox.sent), summed only when metrics are scraped.
        self.messages_sent = 0
        period = max(min(1.0, interval / 2, timeout / 2), 0.05)
        self._timer = PeriodicCallback(self._beat, period * 1000)

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def add(self, conn: Connection) -> None:
        if conn not in self.open:
            self.open.add(conn)
            self.per_client[conn.client] += 1

    def discard(self, conn: Connection) -> None:
        if conn in self.open:
            self.open.discard(conn)
            self.messages_sent += conn.outbox.sent
            left = self.per_client[conn.client] - 1
            if left > 0:
                self.per_client[conn.client] = left
            else:
                del self.per_client[conn.client]

    def over_limit(self, client: str, total: int, per_client: int) -> str | None:
        """Why one more connection from ``client`` is too many (None: it is not); 0 is no limit."""
        if total and len(self.open) >= total:
            return f"the server has its maximum of {total} WebSocket connections"
        if per_client and self.per_client[client] >= per_client:
            return f"this client has its maximum of {per_client} WebSocket connections"
        return None

    def count(self, table: str | None = None) -> int:
        if table is None:
            return len(self.open)
        return sum(1 for conn in self.open if conn.table_name == table)

    def sent_total(self) -> int:
        """Messages written to feed connections so far, closed ones included."""
        return self.messages_sent + sum(conn.outbox.sent for conn in self.open)

    def _beat(self) -> None:
        now = time.monotonic()
        for conn in list(self.open):
            conn.heartbeat(now)

    def close_all(self, code: int, reason: str) -> None:
        for conn in list(self.open):
            conn.close(code, reason)


class RateLimit:
    """A token bucket holding two seconds' worth of ``rate`` messages a second (0: no limit)."""

    __slots__ = ("rate", "tokens", "refilled")

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = 2.0 * rate
        self.refilled = time.monotonic()

    def take(self) -> bool:
        """Take a token; False when the bucket is empty."""
        rate = self.rate
        if not rate:
            return True
        now = time.monotonic()
        self.tokens = min(2.0 * rate, self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Liveness:
    """Ping and pong of one connection, driven by :class:`Connections`' timer."""

    __slots__ = ("interval", "timeout", "last_ping", "awaiting_pong")

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.last_ping = time.monotonic()
        self.awaiting_pong = False

    def beat(self, now: float, ping: Any) -> bool:
        """Call ``ping()`` when one is due; False once a ping went unanswered too long."""
        if self.awaiting_pong:
            return now - self.last_ping <= self.timeout
        if now - self.last_ping >= self.interval:
            self.last_ping, self.awaiting_pong = now, True
            ping()
        return True

    def answered(self) -> None:
        self.awaiting_pong = False
