"""Column value types: JSON in and out, query-string text in, one set of rules for all."""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import re
import uuid
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any

import peewee

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Longer integer literals cannot be a column value, and Python refuses to parse
# numbers past 4,300 digits anyway: keep them as text and reject them later.
_MAX_INT_DIGITS = 40


class BadValue(ValueError):
    """A value does not fit its column; the message says what was expected."""


class BigNumber(str):
    """An integer literal too long to be a column value, kept as its text."""


class _Invalid:
    """Marker for NaN/Infinity in a request body."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_int(text: str) -> Any:
    return int(text) if len(text) <= _MAX_INT_DIGITS else BigNumber(text)


def loads(data: bytes | str) -> Any:
    """Parse JSON a client sent: decimals stay exact, NaN/Infinity and huge ints are
    refused, and so is nesting deep enough to exhaust the parser's recursion."""
    try:
        return json.loads(
            data, parse_float=Decimal, parse_int=_parse_int, parse_constant=_reject_constant
        )
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _default(value: Any) -> Any:
    # Column encoders give JSON values; this catches what slips past them (a
    # SQLite column holding another storage class than it declares, a driver
    # type no encoder expected), so encoding an answer can never fail.
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _encode_binary(value)
    if isinstance(value, datetime.timedelta):
        return iso_duration(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
    return str(value)


_encoder = json.JSONEncoder(
    allow_nan=False, separators=(",", ":"), ensure_ascii=False, default=_default
)


def dumps(value: Any) -> str:
    try:
        return _encoder.encode(value)
    except ValueError:  # NaN or Infinity nested where no encoder looked (a float array)
        return _encoder.encode(_finite(value))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def iso_duration(value: datetime.timedelta) -> str:
    """A timedelta as an ISO 8601 duration (days and seconds, as a driver gives them)."""
    sign = "-" if value < datetime.timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, whole = divmod(rest, 60)
    fraction = f".{value.microseconds:06d}".rstrip("0") if value.microseconds else ""
    return f"{sign}P{value.days}DT{hours}H{minutes}M{whole}{fraction}S"


# -- kinds -------------------------------------------------------------------

def kind_of(field: peewee.Field) -> str:
    """The value kind of a reflected peewee field."""
    checks: list[tuple[type, str]] = [
        (peewee.BooleanField, "boolean"),
        (peewee.IntegerField, "integer"),  # also Auto/BigInteger/SmallInteger
        (peewee.FloatField, "float"),  # also DoubleField
        (peewee.DecimalField, "decimal"),
        (peewee.DateTimeField, "datetime"),
        (peewee.DateField, "date"),
        (peewee.TimeField, "time"),
        (peewee.UUIDField, "uuid"),
        (peewee.BlobField, "binary"),
        (peewee.CharField, "text"),
        (peewee.TextField, "text"),
    ]
    for cls, kind in checks:
        if isinstance(field, cls):
            return kind
    if "JSON" in type(field).__name__:
        return "json"
    return "any"


# -- JSON body -> Python value -----------------------------------------------

def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, BigNumber):
        return "a number too large"
    if isinstance(value, (int, Decimal, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _int_in(low: int, high: int) -> Callable[[Any], int]:
    def coerce(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or isinstance(
            value, BigNumber
        ):
            raise BadValue(f"expected an integer, got {_describe(value)}")
        if isinstance(value, Decimal):
            if value != value.to_integral_value():
                raise BadValue("expected an integer, got a fraction")
            value = int(value)
        if not low <= value <= high:
            raise BadValue(f"integer out of range ({low} to {high})")
        return value
    return coerce


_int = _int_in(INT64_MIN, INT64_MAX)


def _float(value: Any) -> float:
    if isinstance(value, (bool, BigNumber)) or not isinstance(
        value, (int, float, Decimal)
    ):
        raise BadValue(f"expected a number, got {_describe(value)}")
    result = float(value)
    if not math.isfinite(result):
        raise BadValue("number out of range")
    return result


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadValue(f"expected true or false, got {_describe(value)}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise BadValue(f"expected a string, got {_describe(value)}")
    if "\x00" in value:
        raise BadValue("text may not contain NUL characters")
    _check_encodable(value)
    return value


def _check_encodable(value: str) -> None:
    # JSON may spell lone surrogates ("\ud800"); no database driver can encode
    # them, and they would fail as a 500 deep in the driver.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadValue("text is not valid Unicode (a lone surrogate)") from None


def _iso(parser: Callable[[str], Any], what: str) -> Callable[[Any], Any]:
    def coerce(value: Any) -> Any:
        if not isinstance(value, str):
            raise BadValue(f"expected an ISO 8601 {what} string, got {_describe(value)}")
        try:
            return parser(value)
        except ValueError:
            raise BadValue(f"expected an ISO 8601 {what}, got {value[:40]!r}") from None
    return coerce


def _binary(value: Any) -> bytes:
    if not isinstance(value, str):
        raise BadValue(f"expected base64 text, got {_describe(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadValue("expected base64 text") from None


def _uuid(value: Any) -> str:
    if not isinstance(value, str):
        raise BadValue(f"expected a UUID string, got {_describe(value)}")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadValue(f"expected a UUID, got {value[:40]!r}") from None


_DURATION = re.compile(
    r"-?P(?!$)(-?[0-9]+Y)?(-?[0-9]+M)?(-?[0-9]+W)?(-?[0-9]+D)?"
    r"(T(?=-?[0-9])(-?[0-9]+H)?(-?[0-9]+M)?(-?[0-9]+(\.[0-9]+)?S)?)?")


def _duration(value: Any) -> str:
    if not isinstance(value, str):
        raise BadValue(f"expected an ISO 8601 duration string, got {_describe(value)}")
    if not _DURATION.fullmatch(value) or len(value) > 100:
        raise BadValue(f"expected an ISO 8601 duration such as P1DT2H30M, got {value[:40]!r}")
    return value


def _json_value(value: Any) -> Any:
    # Bodies are parsed with Decimal floats (exact decimals for DECIMAL
    # columns), but the drivers' JSON encoders cannot serialise a Decimal:
    # turn the numbers nested in a JSON document back into floats.
    try:
        return _plain_json(value)
    except RecursionError:
        raise BadValue("JSON document nested too deeply") from None


def _plain_json(value: Any) -> Any:
    if isinstance(value, BigNumber):
        raise BadValue("number too large")
    if isinstance(value, Decimal):
        number = float(value)
        if not math.isfinite(number):
            raise BadValue("number out of range")
        return number
    if isinstance(value, str):
        _check_encodable(value)
        return value
    if isinstance(value, dict):
        for key in value:
            _check_encodable(key)
        return {key: _plain_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain_json(item) for item in value]
    return value


def _any(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        raise BadValue(f"expected a scalar, got {_describe(value)}")
    if isinstance(value, BigNumber):
        raise BadValue("number too large")
    if isinstance(value, Decimal):
        # A number, stored as a number (a Decimal would be bound as text).
        return _float(value)
    if isinstance(value, str):
        return _text(value)
    return value


# Wide enough to quantize any accepted decimal (at most 1000 digits either side of
# the point) to any column scale; rounding half away from zero, as PostgreSQL
# and MySQL do when they store a value with more places than the column has.
_WIDE = Context(prec=3000, rounding=ROUND_HALF_UP)


def decimal_coercer(precision: int | None, scale: int | None) -> Callable[[Any], Decimal]:
    quantum = Decimal(1).scaleb(-scale) if scale is not None else None

    def coerce(value: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (int, str, Decimal, float)):
            raise BadValue(f"expected a decimal number or string, got {_describe(value)}")
        try:
            number = Decimal(value.strip() if isinstance(value, str) else value)
        except (InvalidOperation, ValueError):
            raise BadValue(f"expected a decimal number, got {str(value)[:40]!r}") from None
        if not number.is_finite():
            raise BadValue("expected a finite decimal number")
        if abs(number.adjusted()) > 1000:
            raise BadValue("decimal out of range")
        if quantum is not None:
            # The default context (28 digits) cannot quantize a large number
            # (1e400 to 2 places raises InvalidOperation): use a wide one.
            try:
                number = number.quantize(quantum, context=_WIDE)
            except InvalidOperation:
                raise BadValue("decimal out of range") from None
        if precision is not None:
            integer_digits = precision - (scale or 0)
            if number.adjusted() >= integer_digits and number != 0:
                raise BadValue(
                    f"decimal out of range: at most {integer_digits} digits before the point"
                )
        return number
    return coerce


_COERCERS: dict[str, Callable[[Any], Any]] = {
    "integer": _int,
    "float": _float,
    "boolean": _bool,
    "text": _text,
    "date": _iso(datetime.date.fromisoformat, "date"),
    "time": _iso(datetime.time.fromisoformat, "time"),
    "datetime": _iso(datetime.datetime.fromisoformat, "date-time"),
    "binary": _binary,
    "uuid": _uuid,
    "json": _json_value,
    "any": _any,
    "duration": _duration,
}


def _member(members: tuple[str, ...]) -> Callable[[Any], str]:
    allowed = frozenset(members)
    shown = ", ".join(members[:20]) + (", ..." if len(members) > 20 else "")

    def coerce(value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise BadValue(f"expected one of {shown}, got {str(value)[:40]!r}")
        return value
    return coerce


def _array(element: Callable[[Any], Any]) -> Callable[[Any], list[Any]]:
    def coerce(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise BadValue(f"expected an array, got {_describe(value)}")
        # Nested lists are the dimensions of a multi-dimensional array.
        return [None if item is None else coerce(item) if isinstance(item, list)
                else element(item) for item in value]
    return coerce


def coercer(kind: str, precision: int | None = None, scale: int | None = None,
            zoned: bool = False, enum: tuple[str, ...] | None = None,
            items: Any = None, bounds: tuple[int, int] | None = None) -> Callable[[Any], Any]:
    """The function turning a JSON value into the column's Python value (None passes).

    ``zoned``: the column keeps a UTC offset (PostgreSQL timestamptz/timetz);
    ``enum``: the members a value must be one of; ``items``: an array's element
    type (a :class:`pylight.types.ColumnType`).
    """
    if enum is not None:
        return _member(enum)
    if kind == "integer" and bounds is not None:
        return _int_in(*bounds)
    if kind == "array":
        if items is None:
            return _array(_json_value)
        element = coercer(items.kind or "text", enum=items.enum, items=items.items)
        return _array(taking_text(items.special_text, element))
    if kind == "decimal":
        return decimal_coercer(precision, scale)
    if kind in ("datetime", "time") and not zoned:
        return _naive_utc(_COERCERS[kind])
    return _COERCERS[kind]


def taking_text(pattern: str | None, coerce: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``coerce``, also taking a string that is the database's own text for a value
    the Python type cannot hold (see types.ColumnType.special_text) as it is."""
    if pattern is None:
        return coerce
    special = re.compile(pattern)

    def convert(value: Any) -> Any:
        try:
            return coerce(value)
        except BadValue:
            if isinstance(value, str) and special.fullmatch(value):
                return value
            raise
    return convert


# A date or date-time as the databases write those Python cannot hold: any number of
# year digits, zero months and days allowed, PostgreSQL's "BC" after it.
_DATE_TEXT = re.compile(r"([0-9]{4,})-([0-9]{2})-([0-9]{2})(?:[ T]([0-9]{2}):([0-9]{2}):"
                        r"([0-9]{2})(?:\.([0-9]{1,6}))?)?(?:[+-][0-9:]+)?( BC)?")


def instant_order(value: Any) -> tuple[Any, ...] | None:
    """A date or date-time, Python's or the database's text of one Python cannot hold,
    as (before Christ, year, month, day, hour, minute, second, microsecond), in UTC for
    a zoned value: a key that orders them all as the databases do. None for other
    text. (A BC year counts down: its key is the year negated.)"""
    if isinstance(value, str):
        match = _DATE_TEXT.fullmatch(value)
        if match is None:
            return None
        *numbers, fraction, bc = match.groups()
        parts = [int(number or 0) for number in numbers]
        parts.append(int((fraction or "0").ljust(6, "0")))
        return (0, -parts[0], *parts[1:]) if bc else (1, *parts)
    if isinstance(value, datetime.datetime):
        if value.utcoffset() is not None:
            value = value.astimezone(datetime.timezone.utc)
        return (1, value.year, value.month, value.day, value.hour, value.minute,
                value.second, value.microsecond)
    if isinstance(value, datetime.date):
        return (1, value.year, value.month, value.day, 0, 0, 0, 0)
    return None


def _naive_utc(coerce: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A column without a time zone gets an offset-carrying value as naive UTC.

    Left to the databases, "03:04:05+02:00" would be stored as 01:04:05
    (PostgreSQL, session time zone UTC), as 03:04:05 (MariaDB drops the
    offset) or as text with the offset (SQLite, then compared as text).
    """
    def convert(value: Any) -> Any:
        result = coerce(value)
        offset = result.utcoffset()
        if offset is None:
            return result
        try:
            if isinstance(result, datetime.datetime):
                return (result - offset).replace(tzinfo=None)
            moment = datetime.datetime.combine(datetime.date(2000, 1, 1),
                                               result.replace(tzinfo=None))
            return (moment - offset).time()
        except OverflowError:  # "0001-01-01T00:00:00+01:00"
            raise BadValue("date-time out of range") from None
    return convert


# -- query-string text -> JSON-like value ---------------------------------------

_INTEGER = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?[0-9]{1,30}\.[0-9]{1,30}")


# -- booleans given as text ---------------------------------------------------------
# Three grammars, each on purpose: the query language's keywords (query_boolean), a
# boolean column's value in a filter or key (_boolean_value), and a setting's on/off
# (config._ini_boolean: ini file, environment, command line).


def query_boolean(text: str) -> bool | None:
    """``true`` or ``false``, in any case, as a keyword of the query language
    (``is.true``, ``count=true``); None for any other text, which the caller refuses
    with a message of its own.

    Only the two words: a keyword is part of the grammar, not a column's value, so it
    does not take a database's short forms (``t``, ``1``) as _boolean_value does.
    """
    lowered = text.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    return None


def _boolean_value(text: str) -> bool | int:
    """A boolean column's value in a filter or a key: ``true``, ``t``, ``1`` or
    ``false``, ``f``, ``0``, in any case, or another integer.

    The short forms are how databases print booleans (PostgreSQL's ``t``/``f``,
    MySQL's and SQLite's ``1``/``0``), so a value copied from a database client finds
    its row. Other integers pass because a MySQL TINYINT(1) or an SQLite column may
    hold them: the column's coercer decides. openapi._TEXT_FORMS["boolean"] describes
    the same words.
    """
    lowered = text.lower()
    if lowered in ("true", "t", "1"):
        return True
    if lowered in ("false", "f", "0"):
        return False
    if _INTEGER.fullmatch(text) and len(text) <= 18:
        return int(text)
    raise BadValue(f"expected true or false, got {text[:40]!r}")


def from_text(kind: str, text: str) -> Any:
    """The JSON-like value a query-string token means for a column of ``kind``."""
    if kind == "integer":
        stripped = text.strip()
        # One optional sign, then ASCII digits ("+-1" passed lstrip("+-") and
        # str.isdigit() accepts "²", both then failing in int() as a 500).
        if not _INTEGER.fullmatch(stripped) or len(stripped) > _MAX_INT_DIGITS:
            raise BadValue(f"expected an integer, got {text[:40]!r}")
        return int(stripped)
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise BadValue(f"expected a number, got {text[:40]!r}") from None
    if kind == "boolean":
        return _boolean_value(text)
    if kind == "json":
        try:
            return loads(text)
        except ValueError:
            return text
    if kind == "any":
        # A column of no declared type holds numbers as numbers: "4000" means 4000.
        if _INTEGER.fullmatch(text) and len(text) <= 18:
            return int(text)
        if _FLOAT.fullmatch(text):
            return float(text)
        return text
    if kind == "array":
        try:
            return loads(text)
        except ValueError:
            raise BadValue(f"expected a JSON array such as [\"a\",\"b\"], got {text[:40]!r}") \
                from None
    return text


# -- Python value from the database -> JSON value ---------------------------------

def _encode_decimal(scale: int | None) -> Callable[[Any], str]:
    quantum = Decimal(1).scaleb(-scale) if scale is not None else None

    def encode(value: Any) -> str:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
        if quantum is not None and number.is_finite():
            try:
                number = number.quantize(quantum, context=_WIDE)
            except InvalidOperation:  # cannot happen within the column's precision
                pass
        return format(number, "f")
    return encode


def _encode_float(value: Any) -> Any:
    value = float(value)
    return value if math.isfinite(value) else None


def _encode_temporal(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _encode_binary(value: Any) -> Any:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, (bytes, bytearray, memoryview)):
        # A number in a BLOB column (SQLite keeps any type in any column) is served
        # as stored: bytes(n) would be n zero bytes, a gigabyte for 10**9.
        return value
    return base64.b64encode(bytes(value)).decode("ascii")


def _encode_json(value: Any) -> Any:
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            return value.decode() if isinstance(value, bytes) else value
    return value


def _encode_any(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _encode_binary(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _encode_array(element: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    def encode(value: Any) -> Any:
        if isinstance(value, (set, frozenset)):
            value = sorted(value)
        if not isinstance(value, (list, tuple)):
            return value
        return [None if item is None else encode(item) if isinstance(item, list)
                else item if element is None else element(item) for item in value]
    return encode


def _encode_boolean(value: Any) -> Any:
    # A boolean column may hold other numbers (MySQL's TINYINT(1), SQLite): those are
    # served as the numbers they are, not squashed into true.
    return bool(value) if value in (0, 1) else value


def _encode_duration(value: Any) -> Any:
    return iso_duration(value) if isinstance(value, datetime.timedelta) else value


def encoder(kind: str, scale: int | None = None, items: Any = None) -> Callable[[Any], Any] | None:
    """The function turning a database value into its JSON value; None means as-is."""
    if kind == "array":
        element = None if items is None else encoder(items.kind or "text", items=items.items)
        return _encode_array(element)
    if kind == "decimal":
        return _encode_decimal(scale)
    return {
        "float": _encode_float,
        "date": _encode_temporal,
        "time": _encode_temporal,
        "datetime": _encode_temporal,
        "binary": _encode_binary,
        "uuid": str,
        "json": _encode_json,
        "any": _encode_any,
        "boolean": _encode_boolean,
        "duration": _encode_duration,
    }.get(kind)
