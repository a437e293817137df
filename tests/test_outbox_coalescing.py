"""The outbox coalesces a large fan-out's writes: after a flush pass over many
sockets, the changes that arrive while the next pass waits share one write per
socket; with few sockets, or after a quiet spell, nothing waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pylight import outbox as ob


class Recorder:
    """An outbox's socket: every write, as the list of frames it carried."""

    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []

    def write(self, data: bytes, pieces: list[bytes] | None) -> Any:
        self.writes.append(list(pieces) if pieces is not None else [data])
        return None  # all of it went to the socket at once


def outboxes(count: int) -> tuple[list[ob.Outbox], list[Recorder]]:
    sockets = [Recorder() for _ in range(count)]
    boxes = [ob.Outbox(1000, s.write, lambda: True, lambda: None) for s in sockets]
    return boxes, sockets


async def settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)


@pytest.fixture(autouse=True)
def fresh_pass_record() -> Iterator[None]:
    ob._last_pass[:] = (0, 0.0, 0.0)
    yield
    ob._last_pass[:] = (0, 0.0, 0.0)


@pytest.mark.gen_test
async def test_a_large_fan_out_shares_writes_between_changes() -> None:
    boxes, sockets = outboxes(ob.COALESCE_SOCKETS)
    for box in boxes:
        box.send(b"first")
    await settle()
    assert all(s.writes == [[b"first"]] for s in sockets)
    ob._last_pass[1] = ob.COALESCE_MAX_S  # as if that pass had been slow
    ob._last_pass[2] = time.monotonic()
    for frame in (b"second", b"third"):
        for box in boxes:
            box.send(frame)
        await asyncio.sleep(0)  # other work of the loop runs between the two changes
    assert all(s.writes == [[b"first"]] for s in sockets), "the next pass waits"
    await settle()
    assert all(s.writes == [[b"first"], [b"second", b"third"]] for s in sockets)


@pytest.mark.gen_test
async def test_few_sockets_never_wait() -> None:
    boxes, sockets = outboxes(ob.COALESCE_SOCKETS - 1)
    for box in boxes:
        box.send(b"first")
    await settle()
    ob._last_pass[1] = ob.COALESCE_MAX_S
    ob._last_pass[2] = time.monotonic()
    for box in boxes:
        box.send(b"second")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert all(s.writes == [[b"first"], [b"second"]] for s in sockets)


@pytest.mark.gen_test
async def test_after_a_quiet_spell_a_change_goes_out_at_once() -> None:
    boxes, sockets = outboxes(ob.COALESCE_SOCKETS)
    for box in boxes:
        box.send(b"first")
    await settle()
    ob._last_pass[1] = ob.COALESCE_MAX_S
    ob._last_pass[2] = time.monotonic() - 2 * ob.COALESCE_MAX_S
    for box in boxes:
        box.send(b"second")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert all(s.writes == [[b"first"], [b"second"]] for s in sockets)


@pytest.mark.gen_test
async def test_a_burst_past_flush_at_is_written_without_waiting() -> None:
    boxes, sockets = outboxes(ob.COALESCE_SOCKETS)
    ob._last_pass[:] = (ob.COALESCE_SOCKETS, ob.COALESCE_MAX_S, time.monotonic())
    frames = [f"m{i}".encode() for i in range(ob.FLUSH_AT)]
    for frame in frames:
        for box in boxes:
            box.send(frame)
    assert all(s.writes == [frames] for s in sockets)


def test_a_loop_that_stops_before_its_flush_does_not_hold_back_the_next() -> None:
    """A server (or a test) whose loop stopped with a flush still scheduled: the
    next loop's changes are written all the same."""
    stale, _ = outboxes(3)

    async def leave_unflushed() -> None:
        for box in stale:
            box.send(b"never written")

    old = asyncio.new_event_loop()
    old.run_until_complete(leave_unflushed())  # the flush is scheduled, never run
    old.close()

    boxes, sockets = outboxes(2)

    async def deliver() -> None:
        for box in boxes:
            box.send(b"next")
        await settle()

    fresh = asyncio.new_event_loop()
    try:
        fresh.run_until_complete(deliver())
    finally:
        fresh.close()
    assert all(s.writes == [[b"next"]] for s in sockets)
