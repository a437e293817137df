"""pylight.client: subscribe, iterate, survive a restart (the Python half of the seed's
Step 4, "connection should attempt to reconnect"), and stop on refusals."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from pylight.client import Client, ClientError


def take(messages: Any, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The next ``count`` messages of a client's loop, or fail after ``timeout``."""
    found: list[dict[str, Any]] = []

    def read() -> None:
        for message in messages:
            found.append(message)
            if len(found) == count:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert len(found) == count, f"got {found}"
    return found


def test_changes_arrive_in_a_for_loop(live_server: Any) -> None:
    client = Client(live_server.base_url, min_delay=0.05, max_delay=0.2)
    cheap = client.subscribe("products", filter="price=lt.10")
    client.subscribe("orders")
    loop = iter(client)
    subscribed = take(loop, 2)
    assert {m["type"] for m in subscribed} == {"subscribed"}
    assert live_server.post("/api/products", {"name": "pin", "price": "1.00", "sku": "PIN"})[0] == 201
    (change,) = take(loop, 1)
    assert change["type"] == "change" and change["sub"] == cheap.id
    assert change["record"]["name"] == "pin" and change["source"] == "api"
    assert cheap.seq == change["seq"]
    client.close()


def test_a_restart_is_survived_and_told_as_resync(live_server: Any) -> None:
    client = Client(live_server.base_url, min_delay=0.05, max_delay=0.2)
    feed = client.subscribe("products")
    loop = iter(client)
    take(loop, 1)
    live_server.post("/api/products", {"name": "a", "price": "2.00", "sku": "A1"})
    (first,) = take(loop, 1)
    assert first["seq"] == 1
    live_server.kill()
    live_server.start()
    # The restarted server numbers from 0 again: since=1 is ahead of it, so the
    # client is told to read the table again, then follows new changes.
    resumed = take(loop, 2, timeout=20)
    assert [m["type"] for m in resumed] == ["subscribed", "resync"]
    assert "ahead" in resumed[1]["reason"]
    live_server.post("/api/products", {"name": "b", "price": "3.00", "sku": "B1"})
    (after,) = take(loop, 1)
    assert after["type"] == "change" and after["record"]["name"] == "b"
    assert feed.seq == after["seq"]
    client.close()


def test_a_refused_subscription_is_an_error_message_and_is_not_retried(live_server: Any) -> None:
    client = Client(live_server.base_url)
    client.subscribe("no_such_table")
    client.subscribe("products")
    loop = iter(client)
    messages = take(loop, 2)
    error = next(m for m in messages if m["type"] == "error")
    assert error["error"]["status"] == 404 and error["sub"] == "s1"
    assert list(client.subscriptions) == ["s2"]
    client.close()


def test_a_server_that_is_not_there_is_retried_with_backoff() -> None:
    client = Client("http://127.0.0.1:9", min_delay=0.05, max_delay=0.1)
    client.subscribe("products")
    started = time.monotonic()
    thread = threading.Thread(target=lambda: next(iter(client), None), daemon=True)
    thread.start()
    thread.join(0.6)
    assert thread.is_alive(), "the client gave up instead of retrying"
    assert client.attempt >= 3
    client.close()
    thread.join(2)
    assert time.monotonic() - started < 5


def test_a_refused_upgrade_ends_the_loop(live_server: Any) -> None:
    client = Client(live_server.base_url, ws_prefix="/nothing-here")
    client.subscribe("products")
    with pytest.raises(ClientError) as caught:
        next(iter(client))
    assert caught.value.status == 404
