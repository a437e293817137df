"""PostgreSQL's column types as Pylight serves them (see pylight/types.py).

Types with an exact JSON form keep it (numbers, booleans, dates, JSON,
arrays); every other type is served as the text PostgreSQL itself reads and
writes (intervals as ISO 8601 durations, ranges, network addresses, bit
strings, geometry, xml, text search), so what a GET returns, a PUT accepts
and an ``eq`` filter finds unchanged.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import replace
from decimal import Decimal
from typing import Any

import peewee
import psycopg2.extensions as ext

from pylight import values
from pylight.types import ColumnType

# Built-in types the driver would turn into Python objects that are not their
# text (timedelta, Range): read them as the text PostgreSQL writes.
# interval, the six ranges and six multiranges; then their array types.
_TEXT_OIDS = (1186, 3904, 3906, 3908, 3910, 3912, 3926, 4451, 4532, 4533, 4534, 4535, 4536)
_TEXT_ARRAY_OIDS = (1187, 3905, 3907, 3909, 3911, 3913, 3927, 6150, 6151, 6152, 6153, 6155, 6157)
_AS_TEXT = ext.new_type(_TEXT_OIDS, "PYLIGHT_TEXT", lambda value, cursor: value)
_AS_TEXT_ARRAY = ext.new_array_type(_TEXT_ARRAY_OIDS, "PYLIGHT_TEXT_ARRAY", _AS_TEXT)


# Dates and timestamps Python cannot hold: 'infinity' and '-infinity' (which the
# driver would turn into date.max and date.min, so that a PUT of the row as read
# would overwrite them), BC dates and years past 9999 (which it cannot read at all).
# They are served, and taken back, as PostgreSQL's own text.
SPECIAL_TEMPORAL = r"[+-]?infinity|[0-9]{4,}-[^\u0000]* BC|[0-9]{5,}-[^\u0000]*"
_SPECIAL = re.compile(SPECIAL_TEMPORAL, re.IGNORECASE)


def _temporal_order(value: Any) -> Any:
    """How PostgreSQL orders a date or timestamp, infinities and BC dates included,
    for the filters feeds evaluate in Python: -infinity, BC, AD, infinity."""
    if isinstance(value, str) and value.lower().lstrip("+-") == "infinity":
        return (-1,) if value.startswith("-") else (2,)
    order = values.instant_order(value)
    return value if order is None else order


def _temporal(default: Any) -> Any:
    def cast(value: str | None, cursor: Any) -> Any:
        if value is not None and _SPECIAL.fullmatch(value):
            return value
        return default(value, cursor)
    return cast


_TEMPORALS = [ext.new_type(default.values, f"PYLIGHT_{default.name}", _temporal(default))
              for default in (ext.PYDATE, ext.PYDATETIME, ext.PYDATETIMETZ)]
_TEMPORAL_ARRAYS = [ext.new_array_type(array.values, f"PYLIGHT_{array.name}", element)
                    for array, element in zip((ext.PYDATEARRAY, ext.PYDATETIMEARRAY,
                                               ext.PYDATETIMETZARRAY), _TEMPORALS, strict=True)]


def register_text_types(conn: Any) -> None:
    ext.register_type(_AS_TEXT, conn)
    ext.register_type(_AS_TEXT_ARRAY, conn)
    for caster in (*_TEMPORALS, *_TEMPORAL_ARRAYS):
        ext.register_type(caster, conn)


# Element types whose arrays the driver already parses into Python values.
_DRIVER_ARRAYS = {"int2", "int4", "int8", "float4", "float8", "numeric", "bool", "text",
                  "varchar", "bpchar", "name", "date", "time", "timetz", "timestamp",
                  "timestamptz", "json", "jsonb", "bytea", "oid", "interval", "int4range",
                  "int8range", "numrange", "tsrange", "tstzrange", "daterange"}
_registered_arrays: set[int] = set()

_INTEGERS = {"int2": 16, "int4": 32, "int8": 64}
_TEXTS = {"text", "varchar", "bpchar", "name", "char", "citext"}
# No btree operator class: ORDER BY and < > fail on these.
_UNORDERED = {"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle", "xid",
              "cid", "tid", "aclitem"}
# No equality operator, or one that is not equality (box and circle compare areas):
# filters compare their text.
_COMPARE_AS_TEXT = {"xml", "point", "line", "lseg", "box", "path", "polygon", "circle", "xid",
                    "cid", "tid", "aclitem"}
_PEEWEE = {"int2": peewee.SmallIntegerField, "int4": peewee.IntegerField,
           "int8": peewee.BigIntegerField, "float4": peewee.FloatField,
           "float8": peewee.DoubleField, "numeric": peewee.DecimalField,
           "bool": peewee.BooleanField, "date": peewee.DateField, "time": peewee.TimeField,
           "timetz": peewee.TimeField, "timestamp": peewee.DateTimeField,
           "timestamptz": peewee.DateTimeField, "bytea": peewee.BlobField,
           "uuid": peewee.UUIDField}

_KINDS = {"numeric": "decimal", "bool": "boolean", "date": "date", "time": "time",
          "timetz": "time", "timestamp": "datetime", "timestamptz": "datetime",
          "bytea": "binary", "uuid": "uuid"}

# -- what a write surely accepts (the OpenAPI request schemas) -------------------------
#
# Simple shapes that are valid whatever is generated from them: a range's lower
# bound is always below its upper one (four digits against five, a year 1xxx
# against 2xxx), a cidr has no bits set past its mask, a line's A is never 0.
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(\.{_OCTET}){{3}}"
_HEX2 = "[0-9a-fA-F]{2}"
_COORD = r"-?[0-9]{1,3}(\.[0-9]{1,2})?"
_PAIR = rf"\({_COORD},{_COORD}\)"
_PAIRS = rf"{_PAIR}(,{_PAIR}){{0,3}}"
_MONTH_DAY = r"-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
_CLOCK = r"( ([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?)?"
_LOWER_UPPER = {
    "int": (r"-?[0-9]{1,4}", r"[1-9][0-9]{4}"),
    "num": (r"-?[0-9]{1,4}(\.[0-9]{1,2})?", r"[1-9][0-9]{4}(\.[0-9]{1,2})?"),
    "date": (rf"1[0-9]{{3}}{_MONTH_DAY}", rf"2[0-9]{{3}}{_MONTH_DAY}"),
    "ts": (rf"1[0-9]{{3}}{_MONTH_DAY}{_CLOCK}", rf"2[0-9]{{3}}{_MONTH_DAY}{_CLOCK}"),
}


def _range(bounds: str) -> str:
    lower, upper = _LOWER_UPPER[bounds]
    return rf"[\[(]({lower})?,({upper})?[\])]"


def _text(pattern: str, description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": f"^({pattern})$", "description": description}


# Character data: no markup, no characters XML forbids.
_XML_TEXT = r"[^<&\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]*"
# Text search input, as PostgreSQL's parsers read it: lexemes (plain, escaped or quoted)
# apart by whitespace; a document's with positions, a query's joined by operators
# (parentheses one level deep).
_SPACE = r" \t\n\r\x0b\x0c\u1680\u2000-\u2006\u2008-\u200a\u2028\u2029\u205f\u3000"
_S = f"[{_SPACE}]"
_ESC = r"\\[^\u0000]"
_POSITIONS = r"(:[1-9][0-9]{0,3}[A-Da-d*]?(,[1-9][0-9]{0,3}[A-Da-d*]?)*)?"
_LEXEME = (rf"(([^{_SPACE}'\\\u0000]|{_ESC})([^{_SPACE}\\:\u0000]|{_ESC})*"
           rf"|'([^'\\\u0000]|''|{_ESC})+')")
_TSVECTOR = rf"{_S}*({_LEXEME}{_POSITIONS}({_S}+{_LEXEME}{_POSITIONS})*)?{_S}*"
_OPS = "!&|()<"
_OPERAND = (rf"(([^{_SPACE}{_OPS}':\\\u0000]|{_ESC})([^{_SPACE}{_OPS}:\\\u0000]|{_ESC})*"
            rf"|'([^'\\\u0000]|''|{_ESC})+')(:[A-Da-d*]{{0,3}})?")
_OPERATOR = rf"{_S}*(&|\||<->|<[1-9][0-9]{{0,2}}>){_S}*"
_TERM = rf"(!{_S}*){{0,3}}{_OPERAND}"
_GROUP = rf"(!{_S}*){{0,3}}({_OPERAND}|\({_S}*{_TERM}({_OPERATOR}{_TERM})*{_S}*\))"
_TSQUERY = rf"{_S}*({_GROUP}({_OPERATOR}{_GROUP})*)?{_S}*"
_RANGES = {"int4": "int", "int8": "int", "num": "num", "date": "date", "ts": "ts", "tstz": "ts"}
_REQUEST: dict[str, dict[str, Any]] = {
    "inet": _text(rf"{_IPV4}(/([0-9]|[12][0-9]|3[0-2]))?", "an IPv4 address, a mask optional"),
    # (classful: '10' is 10.0.0.0/8)
    "cidr": _text(rf"{_OCTET}\.0\.0\.0/8|{_OCTET}\.{_OCTET}\.0\.0/16|"
                  rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.0/24|{_IPV4}/32|{_OCTET}(\.{_OCTET}){{0,3}}",
                  "an IPv4 network, no bits set past its mask"),
    "macaddr": _text(rf"{_HEX2}(:{_HEX2}){{5}}", "a MAC address"),
    "macaddr8": _text(rf"{_HEX2}(:{_HEX2}){{7}}", "an EUI-64 MAC address"),
    "bit": _text("[01]*", "a bit string of the column's length"),
    "varbit": _text("[01]*|[bB][01]*", "a bit string"),
    "money": _text(r"[ \t\n\r\x0b\x0c]*[(+-]?\$?[0-9,]{0,12}(\.[0-9]{0,2})?\)?[ \t\n\r\x0b\x0c]*",
                   "an amount"),
    "pg_lsn": _text("[0-9A-F]{1,8}/[0-9A-F]{1,8}", "a WAL location"),
    "point": _text(_PAIR, "(x,y)"),
    "line": _text(r"\{[1-9][0-9]{0,2},-?[0-9]{1,3},-?[0-9]{1,3}\}", "{A,B,C}: Ax + By + C = 0"),
    "lseg": _text(rf"\[{_PAIR},{_PAIR}\]", "[(x1,y1),(x2,y2)]"),
    "box": _text(rf"{_PAIR},{_PAIR}", "(x1,y1),(x2,y2)"),
    "path": _text(rf"\[{_PAIRS}\]|\({_PAIR}(,{_PAIR}){{1,3}}\)",
                  "[(x1,y1),...] open or ((x1,y1),...) closed"),
    "polygon": _text(rf"\({_PAIRS}\)", "((x1,y1),...)"),
    "circle": _text(rf"<{_PAIR},[0-9]{{1,3}}(\.[0-9]{{1,2}})?>", "<(x,y),r>"),
    "xml": _text(rf"{_XML_TEXT}|<p>{_XML_TEXT}</p>", "XML content"),
    "tsvector": _text(_TSVECTOR, "a text search document: lexemes, positions"),
    "tsquery": _text(_TSQUERY, "a text search query: lexemes and operators"),
    **{f"{name}range": _text(rf"empty|{_range(bounds)}", "a range, lower bound first")
       for name, bounds in _RANGES.items()},
    **{f"{name}multirange": _text(rf"\{{({_range(bounds)}(,{_range(bounds)})?)?\}}",
                                  "ranges, lower bounds first")
       for name, bounds in _RANGES.items()},
}
# jsonb: any JSON whose strings hold no NUL (jsonb cannot; json can); the shared
# schema is defined by pylight/openapi.py.
_JSON = {"anyOf": [{"$ref": "#/components/schemas/JsonValueNoNul"}]}
# real: PostgreSQL refuses what overflows or underflows single precision (a number's
# shortest text read as a float: past 3.4028235677973366e38, or below 7.006492321624087e-46
# but not 0).
_REAL_MIN, _REAL_MAX = 7.006492321624087e-46, 3.4028235677973366e38
_REAL = {"anyOf": [{"type": "number", "minimum": _REAL_MIN, "maximum": _REAL_MAX},
                   {"type": "number", "minimum": -_REAL_MAX, "maximum": -_REAL_MIN}, {"enum": [0]}],
         "description": "a single-precision number"}

_COLUMNS = """
SELECT a.attname, b.typname, b.typtype, b.typcategory, a.attgenerated, a.attidentity,
       b.oid, e.typname, e.typtype, e.oid
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_type e ON e.oid = b.typelem AND b.typcategory = 'A'
WHERE n.nspname = current_schema() AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
"""


def _enum_members(db: peewee.Database) -> dict[int, tuple[str, ...]]:
    members: dict[int, list[str]] = {}
    for type_oid, label in db.execute_sql(
            "SELECT enumtypid, enumlabel FROM pg_enum ORDER BY enumtypid, enumsortorder"):
        members.setdefault(type_oid, []).append(label)
    return {oid: tuple(labels) for oid, labels in members.items()}


def column_types(db: peewee.Database, table: str) -> dict[str, ColumnType]:
    enums = _enum_members(db)
    types: dict[str, ColumnType] = {}
    for (name, type_name, type_kind, category, generated, identity, type_oid,
         element_name, element_kind, element_oid) in db.execute_sql(_COLUMNS, (table,)):
        if category == "A" and element_name is not None:
            element = _scalar(element_name, element_kind, enums.get(element_oid))
            if element_name not in _DRIVER_ARRAYS and type_oid not in _registered_arrays:
                # Arrays of types the driver does not know (enums, inet...) would come
                # back as one string: have it split them into lists of text.
                ext.register_type(ext.new_array_type(
                    (type_oid,), f"PYLIGHT_ARRAY_{type_oid}", ext.UNICODE))
                _registered_arrays.add(type_oid)
            ctype = ColumnType(field=peewee.Field, kind="array", items=element,
                               to_db=array_literal, orderable=element.orderable,
                               like_as_text=True,
                               compare=_as_text if element_name in _COMPARE_AS_TEXT else None,
                               # PostgreSQL orders arrays by elements and dimensions:
                               # ORDER BY yes, gt/lt filters (evaluated by feeds) no.
                               range_filters=False,
                               compare_key=_array_key(element.compare_key))
        else:
            ctype = _scalar(type_name, type_kind, enums.get(type_oid))
        if generated == "s":
            ctype = _read_only(ctype, "a generated column")
        elif identity == "a":
            ctype = _read_only(ctype, "an identity column GENERATED ALWAYS")
        types[name] = ctype
    return types


def _timetz_order(value: Any) -> Any:
    """How PostgreSQL compares timetz: by the time less its offset (not wrapped into a
    day: 08:00+14 comes before 00:00+00), then by zone (08:00+00 and 00:00-08 are not
    equal: the one further west is greater)."""
    if not isinstance(value, datetime.time) or value.utcoffset() is None:
        return value
    offset = value.utcoffset().total_seconds()
    seconds = value.hour * 3600 + value.minute * 60 + value.second + value.microsecond / 1e6
    return (seconds - offset, -offset)


_ISO_PART = re.compile(r"(-?[0-9.]+)([YMWDHS])")
_SPAN = {"Y": 360 * 86400, "W": 7 * 86400, "D": 86400, "H": 3600, "S": 1}


def _interval_order(value: Any) -> Any:
    """How PostgreSQL compares intervals: as one span, a month being 30 days."""
    if not isinstance(value, str) or not value.lstrip("-").startswith("P"):
        return value
    sign = -1 if value.startswith("-") else 1
    date_part, _, time_part = value.lstrip("-")[1:].partition("T")
    total = 0.0
    for number, unit in _ISO_PART.findall(date_part):
        total += float(number) * (30 * 86400 if unit == "M" else _SPAN[unit])
    for number, unit in _ISO_PART.findall(time_part):
        total += float(number) * (60 if unit == "M" else _SPAN[unit])
    return sign * total


def _array_key(element: Any) -> Any:
    """How PostgreSQL compares arrays, for feeds: element by element (NULL after every
    value), then the shorter first, as Python compares lists."""
    def key(value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [(1, 0) if item is None else (0, key(item) if isinstance(item, list)
                                             else item if element is None else element(item))
                for item in value]
    return key


def _read_only(ctype: ColumnType, why: str) -> ColumnType:
    return replace(ctype, read_only=why)


def _scalar(type_name: str, type_kind: str, members: tuple[str, ...] | None) -> ColumnType:
    """The ColumnType of one (non-array) PostgreSQL type."""
    if type_kind == "e" and members is not None:
        # Ordered (and compared by gt/lt) in the order the type declares its members.
        position = {member: i for i, member in enumerate(members)}
        return ColumnType(field=peewee.TextField, kind="text", enum=members, like_as_text=True,
                          compare_key=lambda value: position.get(value, value))
    if type_name in _INTEGERS:
        bits = _INTEGERS[type_name]
        return ColumnType(field=_PEEWEE[type_name], kind="integer",
                          bounds=(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
    if type_name == "oid":
        return ColumnType(field=peewee.BigIntegerField, kind="integer", bounds=(0, 2**32 - 1))
    if type_name == "float4":
        # Single precision: 0.1 in a real is not the double 0.1, so a filter or a
        # cursor compares with the value cast to real.
        return ColumnType(field=peewee.FloatField, kind="float", compare=_as_real,
                          request_schema=_REAL)
    if type_name == "float8":
        return ColumnType(field=peewee.DoubleField, kind="float")
    if type_name in _TEXTS:
        return ColumnType(kind="text")
    if type_name == "timetz":
        return ColumnType(field=peewee.TimeField, kind="time", compare_key=_timetz_order)
    if type_name in ("date", "timestamp", "timestamptz"):
        return ColumnType(field=_PEEWEE[type_name], kind=_KINDS[type_name],
                          special_text=SPECIAL_TEMPORAL, compare_key=_temporal_order)
    if type_name in _PEEWEE:
        return ColumnType(field=_PEEWEE[type_name], kind=_KINDS[type_name],
                          like_as_text=type_name == "uuid")
    if type_name == "json":  # no ordering; compared as jsonb (by value)
        return ColumnType(kind="json", compare=_json_as_jsonb, orderable=False)
    if type_name == "jsonb":
        return ColumnType(kind="json", compare=_as_jsonb, request_schema=_JSON)
    if type_name == "interval":
        return ColumnType(field=peewee.Field, kind="duration", like_as_text=True,
                          compare_key=_interval_order)
    # Everything else (money, inet, cidr, macaddr, bit strings, ranges, xml, tsvector,
    # geometry, pg_lsn ...) as PostgreSQL's own text.
    # Their orders are PostgreSQL's own (network order, text search), not their
    # text's: ORDER BY works, gt/lt filters (which feeds evaluate in Python) do not.
    return ColumnType(field=peewee.TextField, kind="text", api_type="string",
                      orderable=type_name not in _UNORDERED, like_as_text=True,
                      compare=_as_text if type_name in _COMPARE_AS_TEXT else None,
                      request_schema=_REQUEST.get(type_name), range_filters=False)


def _as_real(node: Any) -> Any:
    return peewee.Cast(node, "real")


def _as_text(node: Any) -> Any:
    return peewee.Cast(node, "text")


def _as_jsonb(node: Any) -> Any:
    return peewee.Cast(node, "jsonb")


def _json_as_jsonb(node: Any) -> Any:
    # json keeps a \u0000 that jsonb refuses: such a document compares as NULL
    # (matches nothing) rather than failing every filter on the column.
    text = peewee.Cast(node, "text")
    return peewee.Case(None, [(peewee.fn.strpos(text, "\\u0000") > 0, peewee.SQL("NULL"))],
                       peewee.Cast(node, "jsonb"))


# -- array values as PostgreSQL array literals --------------------------------------
#
# A Python list would be sent as ARRAY[...] of the elements' SQL types (text[] for
# strings), which PostgreSQL will not assign to an enum[] or inet[] column; the
# literal '{...}' is untyped and takes the column's type, whatever it is.

def array_literal(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    return "{" + ",".join(_element(item) for item in value) + "}"


def _element(item: Any) -> str:
    if item is None:
        return "NULL"
    if isinstance(item, list):
        return array_literal(item)
    if isinstance(item, bool):
        text = "t" if item else "f"
    elif isinstance(item, (int, float, Decimal)):
        text = str(item)
    elif isinstance(item, (bytes, bytearray, memoryview)):
        text = "\\x" + bytes(item).hex()
    elif isinstance(item, (datetime.date, datetime.time)):
        text = item.isoformat()
    elif isinstance(item, dict):
        text = json.dumps(item)
    else:
        text = str(item)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
