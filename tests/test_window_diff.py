"""The steps a live window sends turn the rows a client holds into the rows read, always
(pylight/window.py: diff), whatever rows left, entered or moved."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pylight.window import diff


def apply(rows: list[Any], ops: list[tuple[dict[str, Any], Any]]) -> list[Any]:
    """What a client does with the messages (API.md 6.3)."""
    held = list(rows)
    for fields, record in ops:
        op = fields["op"]
        if op == "leave":
            assert held[fields["from"]]["id"] == fields["pk"]
            del held[fields["from"]]
        elif op == "enter":
            held.insert(fields["at"], record)
        elif op == "move":
            del held[fields["from"]]
            held.insert(fields["to"], record)
        elif op == "update":
            held[fields["at"]] = record
    return held


def rows_of(keys: list[int], version: int) -> list[dict[str, Any]]:
    return [{"id": key, "v": version} for key in keys]


lists = st.lists(st.integers(0, 30), unique=True, max_size=15)


@given(old=lists, new=lists, changed=st.sets(st.integers(0, 30)))
def test_applying_the_steps_gives_the_rows_read(old: list[int], new: list[int],
                                                changed: set[int]) -> None:
    before = rows_of(old, 0)
    # A changed row comes back with new values; the others as they were.
    after = [{"id": key, "v": 1 if key in changed else 0} for key in new]
    ops = diff(old, {r["id"]: r for r in before}, new, {r["id"]: r for r in after},
               {key: "updated" for key in changed}, lambda row: row["id"])
    assert apply(before, ops) == after
    # Leaves first, then moves, then enters, then updates (positions stay valid).
    order = [fields["op"] for fields, _ in ops]
    rank = {"leave": 0, "move": 1, "enter": 2, "update": 3}
    assert order == sorted(order, key=rank.__getitem__)


def test_a_row_that_moved_is_one_move_of_that_row() -> None:
    old = [1, 2, 3, 4]
    new = [3, 1, 2, 4]
    rows = {key: {"id": key, "v": 0} for key in old}
    changed = {**rows, 3: {"id": 3, "v": 1}}
    ops = diff(old, rows, new, changed, {3: "updated"}, lambda row: row["id"])
    assert ops == [({"op": "move", "event": "updated", "from": 2, "to": 0}, {"id": 3, "v": 1})]


def test_a_row_pushed_out_by_a_new_one_leaves_with_no_event() -> None:
    old = [1, 2, 3]
    new = [9, 1, 2]
    rows = {key: {"id": key} for key in old}
    ops = diff(old, rows, new, {**rows, 9: {"id": 9}}, {9: "created"}, lambda row: row["id"])
    assert ops == [({"op": "leave", "event": None, "from": 2, "pk": 3}, None),
                   ({"op": "enter", "event": "created", "at": 0}, {"id": 9})]
