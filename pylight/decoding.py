"""Raw database rows to the API's JSON records, by a function compiled per column list.

Every row a list answers goes through here, so this is the REST API's hottest
loop. The general step for a value is the column's peewee ``python_value``
followed by its JSON encoder (:func:`pylight.values.encoder`). Most values
arrive from the driver already as the type that step would produce (an ``int``
for an integer column, a ``str`` for text), and for those the step is a no-op
or a single method call. The decoder tests the value's exact type and takes the
short path when it can, the general one otherwise, and it is generated as one
flat function per column list, so a row costs one call rather than a loop of
calls per value.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Callable
from typing import Any

import peewee

from pylight import values

Decoder = Callable[[tuple[Any, ...]], dict[str, Any]]

# Exact peewee field classes whose python_value returns a value of these exact
# types unchanged (read off their adapt/python_value). A subclass may convert
# differently (FixedCharField strips), so only these classes qualify.
_UNCHANGED: dict[type[peewee.Field], type] = {
    peewee.IntegerField: int,
    peewee.BigIntegerField: int,
    peewee.SmallIntegerField: int,
    peewee.CharField: str,
    peewee.TextField: str,
    peewee.FloatField: float,
    peewee.DoubleField: float,
    peewee.DecimalField: decimal.Decimal,
    peewee.BooleanField: bool,
    peewee.DateTimeField: datetime.datetime,
    peewee.DateField: datetime.date,
    peewee.TimeField: datetime.time,
    peewee.UUIDField: uuid.UUID,
}


def _general(convert: Callable[[Any], Any], encode: Callable[[Any], Any] | None
             ) -> Callable[[Any], Any]:
    def step(value: Any) -> Any:
        try:
            value = convert(value)
            if encode is not None and value is not None:
                value = encode(value)
        except (ValueError, TypeError, ArithmeticError, AttributeError):
            # A value of another type than the column declares (SQLite keeps ''
            # in a REAL column, any text in a column declared UUID): served as it is
            # stored, never a 500.
            pass
        return value
    return step


def _short(native: type, encode: Callable[[Any], Any] | None) -> tuple[bool, Any]:
    """What a value of exactly ``native`` needs: (False, None) nothing, (True, fn) ``fn(value)``."""
    if encode is None:
        return False, None
    if encode is values._encode_temporal:
        return True, native.isoformat
    if encode is values._encode_boolean and native is bool:
        return False, None
    return True, encode


def compile_decoder(table: Any, names: tuple[str, ...]) -> Decoder:
    """A function from a row of ``names`` (as the driver returns it) to the JSON record."""
    if not names:
        return lambda row: {}
    env: dict[str, Any] = {}
    entries = []
    for i, name in enumerate(names):
        column = table.columns[name]
        value = f"v{i}"
        env[f"general{i}"] = _general(column.field.python_value, column.encode)
        general = f"general{i}({value})"
        native = _UNCHANGED.get(type(column.field))
        if native is None:
            expr = f"None if {value} is None else {general}"
        else:
            env[f"native{i}"] = native
            call, short = _short(native, column.encode)
            if call:
                env[f"short{i}"] = short
                expr = (f"None if {value} is None else short{i}({value}) "
                        f"if type({value}) is native{i} else {general}")
            else:
                expr = f"{value} if {value} is None or type({value}) is native{i} else {general}"
        # repr() of a str is always a valid, exact Python literal of it.
        entries.append(f"{name!r}: {expr}")
    unpack = ", ".join(f"v{i}" for i in range(len(names)))
    source = (f"def decode(row):\n"
              f"    {unpack}, = row\n"
              f"    return {{{', '.join(entries)}}}\n")
    exec(compile(source, f"<decoder of {table.name}>", "exec"), env)  # noqa: S102
    return env["decode"]


def row_decoder(table: Any, names: tuple[str, ...]) -> Decoder:
    """The decoder of ``names`` in ``table``, compiled once and kept with the table's statements."""
    key = ("decoder", names)
    decoder = table.statements.get(key)
    if decoder is None:
        decoder = table.statements[key] = compile_decoder(table, names)
    return decoder
