"""The compiled row decoder answers exactly what the general per-value step answers.

The decoder (pylight/decoding.py) takes a short path for values whose exact type
the driver already gives; this states that for any column names, field classes,
encoders and values, of the expected type or not, the record is the one the
general step (python_value, then the column's JSON encoder) makes.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from types import SimpleNamespace
from typing import Any

import peewee
from hypothesis import given, settings
from hypothesis import strategies as st

from pylight import values
from pylight.decoding import compile_decoder

# (field class, value kind): the kinds values.encoder knows, on the field classes
# reflection gives them, plus a subclass that converts (FixedCharField strips).
FIELDS = [
    (peewee.IntegerField, "integer"), (peewee.BigIntegerField, "integer"),
    (peewee.SmallIntegerField, "integer"), (peewee.CharField, "text"),
    (peewee.TextField, "text"), (peewee.FixedCharField, "text"),
    (peewee.FloatField, "float"), (peewee.DoubleField, "float"),
    (peewee.DecimalField, "decimal"), (peewee.BooleanField, "boolean"),
    (peewee.DateTimeField, "datetime"), (peewee.DateField, "date"),
    (peewee.TimeField, "time"), (peewee.UUIDField, "uuid"),
    (peewee.BlobField, "binary"), (peewee.BareField, "any"),
]

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=8), st.binary(max_size=8),
    st.decimals(allow_nan=True, places=4), st.datetimes(), st.dates(), st.times(),
    st.datetimes(timezones=st.just(datetime.timezone.utc)), st.uuids(),
    st.sampled_from(["", " padded ", "2024-02-29 10:00:00", "12.5", "1", "x"]),
)


def general(column: Any, value: Any) -> Any:
    """The per-value step as the decoder's general path defines it."""
    if value is None:
        return None
    try:
        value = column.field.python_value(value)
        if column.encode is not None and value is not None:
            value = column.encode(value)
    except (ValueError, TypeError, ArithmeticError, AttributeError):
        pass
    return value


@st.composite
def tables(draw: Any) -> tuple[Any, list[tuple[Any, ...]]]:
    names = draw(st.lists(st.text(min_size=1, max_size=6) | st.sampled_from(
        ["select", "Order", "a'b", 'q"t', "x\\y", "ünï", "row", "v0", "None"]),
        min_size=1, max_size=6, unique=True))
    columns = {}
    for name in names:
        cls, kind = draw(st.sampled_from(FIELDS))
        scale = draw(st.none() | st.integers(0, 4)) if kind == "decimal" else None
        columns[name] = SimpleNamespace(field=cls(), encode=values.encoder(kind, scale))
    rows = draw(st.lists(st.tuples(*[VALUES for _ in names]), max_size=5))
    return SimpleNamespace(name="t", columns=columns), rows


def same(a: Any, b: Any) -> bool:
    # NaN is not equal to itself; compare its text instead.
    if isinstance(a, float) and isinstance(b, float):
        return repr(a) == repr(b)
    if isinstance(a, decimal.Decimal) and isinstance(b, decimal.Decimal):
        return str(a) == str(b)
    return type(a) is type(b) and a == b


@settings(max_examples=300, deadline=None)
@given(tables())
def test_the_compiled_decoder_agrees_with_the_general_step(case: Any) -> None:
    table, rows = case
    names = tuple(table.columns)
    decode = compile_decoder(table, names)
    for row in rows:
        record = decode(row)
        assert list(record) == list(names)
        for name, value in zip(names, row, strict=True):
            expected = general(table.columns[name], value)
            assert same(record[name], expected), (name, value, record[name], expected)


def test_short_paths_give_the_api_values() -> None:
    columns = {
        "id": SimpleNamespace(field=peewee.IntegerField(), encode=values.encoder("integer")),
        "at": SimpleNamespace(field=peewee.DateTimeField(), encode=values.encoder("datetime")),
        "price": SimpleNamespace(field=peewee.DecimalField(), encode=values.encoder("decimal", 2)),
        "ok": SimpleNamespace(field=peewee.BooleanField(), encode=values.encoder("boolean")),
        "u": SimpleNamespace(field=peewee.UUIDField(), encode=values.encoder("uuid")),
    }
    table = SimpleNamespace(name="t", columns=columns)
    decode = compile_decoder(table, tuple(columns))
    at = datetime.datetime(2024, 2, 29, 10, 0, 0, 5)
    key = uuid.UUID(int=7)
    assert decode((1, at, decimal.Decimal("12.5"), True, key)) == {
        "id": 1, "at": "2024-02-29T10:00:00.000005", "price": "12.50", "ok": True,
        "u": str(key)}
    # Stored as text (SQLite): the general path parses it.
    assert decode(("2", "2024-02-29 10:00:00", "3", 1, str(key)))["at"] == "2024-02-29T10:00:00"
    assert decode((None,) * 5) == dict.fromkeys(columns)


def test_a_number_in_a_binary_column_is_served_as_stored() -> None:
    """SQLite keeps an integer in a BLOB column; it was once turned into that many
    zero bytes (10**12 of them here) before being encoded."""
    columns = {"data": SimpleNamespace(field=peewee.BlobField(), encode=values.encoder("binary"))}
    decode = compile_decoder(SimpleNamespace(name="t", columns=columns), ("data",))
    assert decode((10**12,)) == {"data": 10**12}
    assert decode((2.5,)) == {"data": 2.5}
    assert decode((b"\x00\xff",)) == {"data": "AP8="}
