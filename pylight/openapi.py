"""Builds the OpenAPI 3 document from the reflected tables.

The document is precise enough for schema-driven fuzzing (tests/test_schemathesis.py):
every request a schema allows is one the server accepts, every response the
server sends matches its schema, and every error status an operation can
answer is listed. So request and response schemas differ: a request takes a
decimal as a string or a number and a timestamp with or without an offset, a
response always gives a decimal as a string and a timestamp as the database
keeps it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from pylight import __version__
from pylight.embed import embeddable
from pylight.schema import ColumnInfo, TableInfo
from pylight.types import DeclaredColumn
from pylight.values import INT64_MAX, INT64_MIN

log = logging.getLogger("pylight")

# -- value formats ------------------------------------------------------------------

_YEAR = r"[1-9][0-9]{3}"
# Days up to 28 are valid in every month: the pattern allows no impossible date.
_MONTH_DAY = r"-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
_DATE = _YEAR + _MONTH_DAY
# A date-time given with an offset is converted to UTC (a column without a time
# zone): years 1100 to 9899 stay within every database's range either way.
_DATETIME_DATE = r"(1[1-9][0-9]{2}|[2-8][0-9]{3}|9[0-8][0-9]{2})" + _MONTH_DAY
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
_OFFSET = r"(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])"
_NO_NUL = r"^[^\u0000]*$"  # NUL cannot be stored as text by PostgreSQL
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

# What a database gives back: ISO 8601, an offset only for zoned columns.
_RESPONSE: dict[str, dict[str, Any]] = {
    "integer": {"type": "integer", "format": "int64"},
    "float": {"type": "number"},
    "decimal": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$",
                "description": "exact decimal, as a string with the column's scale"},
    "boolean": {"type": "boolean"},
    "text": {"type": "string"},
    "date": {"type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
             "description": "ISO 8601 date"},
    # MySQL's TIME is a duration too: -838:59:59 to 838:59:59.
    "time": {"type": "string", "pattern": r"^-?[0-9]{2,3}:[0-9]{2}",
             "description": "ISO 8601 time"},
    "datetime": {"type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}",
                 "description": "ISO 8601 date-time; an offset only for columns with a time zone"},
    "binary": {"type": "string", "format": "byte"},
    "uuid": {"type": "string", "format": "uuid"},
    "json": {},
    "any": {},
    "duration": {"type": "string", "description": "ISO 8601 duration"},
}
# Requests: at most four digits a field, so every duration fits PostgreSQL's interval;
# negative fields, not a negative whole (PostgreSQL reads P-1D, not -P1D).
_DURATION = (r"^P(?!$)(-?[0-9]{1,4}Y)?(-?[0-9]{1,4}M)?(-?[0-9]{1,4}W)?(-?[0-9]{1,4}D)?"
             r"(T(?=-?[0-9])(-?[0-9]{1,4}H)?(-?[0-9]{1,4}M)?(-?[0-9]{1,4}(\.[0-9]{1,6})?S)?)?$")

# Shared schemas a backend's request schema may refer to ($ref).
_ANY_NO_NUL = {"anyOf": [{"$ref": "#/components/schemas/JsonValueNoNul"},
                        {"type": "string", "nullable": True, "enum": [None]}]}
_SHARED: dict[str, dict[str, Any]] = {
    "JsonValueNoNul": {
        "description": "any JSON value whose strings hold no NUL character",
        "anyOf": [{"type": "string", "pattern": _NO_NUL}, {"type": "number"}, {"type": "boolean"},
                  {"type": "array", "items": _ANY_NO_NUL},
                  {"type": "object", "additionalProperties": _ANY_NO_NUL}]},
}

# Integer widths by declared type (SQLite's INTEGER is always 64-bit).
def _int_range(column: Any) -> tuple[int, int]:
    """The values an integer column holds (reflection knows them from the backend)."""
    return column.int_range or (INT64_MIN, INT64_MAX)


def _int_text(low: int, high: int) -> str:
    """A pattern of the integers within [low, high] (no leading zeros), for keys and
    filters, where a number is text."""
    forms = [_up_to(high)] if high >= 0 else []
    if low < 0:
        forms.append("-" + _up_to(-low))
    return "(" + "|".join(forms) + ")"


def _up_to(limit: int) -> str:
    """A pattern of 0 to ``limit`` in decimal, without leading zeros."""
    text = str(limit)
    forms = ["[0-9]" if len(text) > 1 else f"[0-{text}]"]
    if len(text) > 2:  # every number of 2 to len-1 digits
        forms.append(f"[1-9][0-9]{{1,{len(text) - 2}}}")
    if len(text) > 1:  # as many digits as the limit: below it at one digit, equal before
        for i, digit in enumerate(text):
            least = 1 if i == 0 else 0
            if int(digit) > least:
                below = f"[{least}-{int(digit) - 1}]"
                forms.append(text[:i] + below + ("[0-9]" * (len(text) - i - 1)))
        forms.append(text)
    return "(" + "|".join(forms) + ")"


def _decimal_parts(column: Any) -> tuple[str, dict[str, Any]]:
    """The decimal's text pattern (unanchored) and the JSON number schema it fits."""
    precision, scale = column.precision, column.scale
    if precision is None:
        digits, places = 30, 30
    else:
        places = scale or 0
        digits = precision - places
    # At most `places` decimals: more would be rounded, possibly past the precision.
    fraction = rf"(\.[0-9]{{1,{places}}})?" if places else ""
    whole = rf"[0-9]{{1,{digits}}}" if digits > 0 else "0"
    number: dict[str, Any] = {"type": "number"}
    if precision is not None:
        bound = 10**digits - 10**-places if places else 10**digits - 1
        number.update(minimum=-bound, maximum=bound)
    return f"-?{whole}{fraction}", number


def _decimal_request(column: Any) -> dict[str, Any]:
    text, number = _decimal_parts(column)
    return {"anyOf": [{"type": "string", "pattern": f"^{text}$"}, number],
            "description": "exact decimal, as a string or a number"}


# A value's text, as keys and filters take it, where every value of the kind fits.
_TEXT_FORMS = {
    "float": r"-?[0-9]{1,6}(\.[0-9]{1,6})?",
    "date": _DATE,
    "uuid": _UUID,
    "boolean": r"([tT][rR][uU][eE]|[fF][aA][lL][sS][eE]|[tTfF01])",  # values._boolean_value
}


def _text_form(column: Any, key: bool = False) -> str | None:
    """A pattern (unanchored, without commas or slashes) of the text of values
    ``column`` surely accepts in a filter or a ``key``; None where any text is
    answered without an error (a 400 at worst) in a filter."""
    kind = column.kind
    if kind == "integer":
        return _int_text(*(_int_range(column)))
    if kind == "decimal":
        return _decimal_parts(column)[0]
    if kind == "boolean" and _stores_numbers(column):
        return rf"({_TEXT_FORMS['boolean']}|{_int_text(-128, 127)})"
    if kind in _TEXT_FORMS:
        return _TEXT_FORMS[kind]
    if key and kind == "time":
        return _TIME
    if key and kind == "datetime":
        return f"{_DATETIME_DATE}[T ]{_TIME}"
    return None


def _request_schema(column: Any, declared: DeclaredColumn | None) -> dict[str, Any]:
    kind = column.kind
    if column.request_schema is not None:
        schema = dict(column.request_schema)
    elif column.enum is not None and kind == "text":
        schema = {"type": "string", "enum": list(column.enum)}
    elif kind == "array":
        schema = _array_request(column.items)
    elif kind == "duration":
        schema = {"type": "string", "pattern": _DURATION, "description": "ISO 8601 duration"}
    elif kind == "boolean" and _stores_numbers(column):
        schema = {"anyOf": [{"type": "boolean"}, {"type": "integer", "minimum": -128,
                                                  "maximum": 127}]}
    elif kind == "integer":
        low, high = _int_range(column)
        schema = {"type": "integer", "format": "int64", "minimum": low, "maximum": high}
    elif kind == "decimal":
        schema = _decimal_request(column)
    elif kind == "text":
        schema = {"type": "string", "pattern": _NO_NUL}
    elif kind == "date":
        schema = {"type": "string", "pattern": f"^{_DATE}$", "description": "ISO 8601 date"}
    elif kind == "time":
        schema = {"type": "string", "pattern": f"^{_TIME}{_OFFSET}?$",
                  "description": "ISO 8601 time"}
    elif kind == "datetime":
        schema = {"type": "string", "pattern": f"^{_DATETIME_DATE}[T ]{_TIME}{_OFFSET}?$",
                  "description": "ISO 8601 date-time; an offset is converted to UTC unless "
                                 "the column keeps a time zone"}
    elif kind == "float":
        schema = {"type": "number"}
    elif kind == "any":
        schema = {"anyOf": [{"type": "string", "pattern": _NO_NUL}, {"type": "number"},
                            {"type": "boolean"}]}
    else:
        schema = dict(_RESPONSE.get(kind, {}))
    if declared is not None and declared.length is not None:
        schema = _sized(schema, kind, declared)
    return schema


def _sized(schema: dict[str, Any], kind: str, declared: DeclaredColumn) -> dict[str, Any]:
    """The declared length (VARCHAR(n), BINARY(n), BIT(n)) the database enforces."""
    length = declared.length
    if schema.get("type") != "string" or length is None:
        return schema
    if kind == "binary":
        # base64 of at most `length` bytes: whole groups of 3 bytes in 4 characters
        return {**schema, "maxLength": 4 * (length // 3)}
    if kind != "text":
        return schema
    schema = {**schema, "maxLength": length}
    if declared.fixed:
        schema["minLength"] = length
    return schema


# Elements surely valid for an array of each kind (PostgreSQL).
_SAMPLES: dict[str, list[Any]] = {
    "integer": [0, 1], "float": [0, 1.5], "decimal": ["0", "1"], "boolean": [True, False],
    "text": ["", "a b"], "date": ["2000-01-01"], "time": ["12:00:00"],
    "datetime": ["2000-01-01T00:00:00"], "uuid": ["00000000-0000-0000-0000-000000000000"],
    "binary": ["", "AAE="], "duration": ["P1D", "PT1H"], "json": [{"a": [1]}, "x"],
}


def _array_request(ctype: Any) -> dict[str, Any]:
    """What an array column (PostgreSQL's) takes, as a few valid arrays.

    PostgreSQL reads any array nested in an array as one more dimension, so no schema
    of the elements' types is exact (an element that is an array is not refused),
    and an array of rows of different lengths is refused: only examples are exact.
    """
    samples: list[Any] = []
    if ctype is not None:
        if ctype.enum is not None:
            samples = list(ctype.enum[:3])
        elif ctype.request_schema is None:
            samples = _SAMPLES.get(ctype.kind or "text", [])
    examples: list[Any] = [[]]
    if samples:
        examples += [[samples[0]], [*samples, None], [[samples[0]], [samples[-1]]]]
    # No `type` beside the enum: schemathesis reads `nullable` as another branch, whose
    # wrong-type values include arrays.
    return {"enum": examples,
            "description": "an array of the element type; these are examples (nested "
                           "arrays of equal lengths are more dimensions)"}


def _response_schema(column: ColumnInfo, arrays_nest: bool) -> dict[str, Any]:
    if column.enum is not None and column.kind == "text":
        schema: dict[str, Any] = {"type": "string", "enum": list(column.enum)}
    elif column.kind == "array":
        items = _items(column.items)
        schema = {"type": "array", "items": items}
        if arrays_nest:
            # Any PostgreSQL array may have more than one dimension ('{{1,2},{3,4}}').
            schema = {"anyOf": [schema, {"type": "array", "items": {
                "type": "array", "items": items}}, {"type": "array", "items": {
                    "type": "array", "items": {"type": "array"}}}]}
    elif column.kind == "boolean" and _stores_numbers(column):
        schema = {"anyOf": [{"type": "boolean"}, {"type": "integer"}]}
    elif column.kind == "integer" and column.bounds is not None:
        low, high = column.bounds
        schema = {"type": "integer", "minimum": low, "maximum": high}
    else:
        schema = dict(_RESPONSE.get(column.kind, {}))
    if column.special_text is not None:
        schema = {"anyOf": [schema, {"type": "string", "pattern": f"^({column.special_text})$"}]}
    schema = _loose(schema, column)
    if column.read_only is not None:
        schema["readOnly"] = True
    return schema


def _stores_numbers(column: Any) -> bool:
    """A boolean that is an integer column underneath (MySQL's TINYINT(1))."""
    return "int" in column.raw_type.lower()


def _items(ctype: Any) -> dict[str, Any]:
    """The schema of an array's elements (any JSON value where the type is unknown)."""
    if ctype is None:
        return {}
    if ctype.enum is not None:
        return _or_null({"type": "string", "enum": list(ctype.enum)})
    if ctype.kind == "array":
        return _or_null({"type": "array", "items": _items(ctype.items)})
    return _or_null(dict(_RESPONSE.get(ctype.kind or "text", {})))


def _loose(schema: dict[str, Any], column: ColumnInfo) -> dict[str, Any]:
    """A column keeping values of any type (SQLite) may give text and numbers too."""
    if not column.loose or not schema:
        return schema
    return {"anyOf": [schema, {"type": "string", "pattern": _NO_NUL}, {"type": "number"}]}


# OpenAPI 3.0.3 has no null type: `nullable` adds null only beside a `type`.
_NULL = {"type": "string", "nullable": True, "enum": [None]}


def _nullable(schema: dict[str, Any], column: Any) -> dict[str, Any]:
    if column.nullable:
        schema = _or_null(schema)
    return schema


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    if not schema:  # any value, null included
        return schema
    if "type" not in schema and "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    if "type" not in schema:  # anyOf, $ref: one more alternative
        if "anyOf" in schema:
            return {**schema, "anyOf": [*schema["anyOf"], _NULL]}
        return {"anyOf": [schema, _NULL]}
    schema = {**schema, "nullable": True}
    if "enum" in schema and None not in schema["enum"]:
        # nor to an enum, which must list it
        schema["enum"] = [*schema["enum"], None]
    return schema


def _creatable_without(table: TableInfo, column: ColumnInfo,
                       declared: dict[str, DeclaredColumn] | None) -> bool:
    """Whether a create may leave ``column`` out: nullable, defaulted or generated."""
    if column.nullable or column.default is not None:
        return True
    if declared is None:  # no catalog: an integer key is taken to be generated
        return table.primary_key == [column.name] and column.kind == "integer"
    return declared.get(column.name, DeclaredColumn()).generated


def _error(description: str = "error", retry: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}
    if retry:
        response["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
    return response


def _errors(*statuses: int) -> dict[str, Any]:
    """The operation's own errors, and those any operation may meet: a 403 (an auth
    plugin, or the database refusing its own user a privilege), a 422 (an error the
    database's own code raised: a trigger, a function a view calls) and a 503."""
    text = {400: "bad query parameter, key or body", 404: "no such row",
            405: "method not allowed", 409: "unique or foreign-key conflict",
            413: "body too large", 415: "body not JSON",
            422: "a column is unknown or its value does not fit, or the database's own "
                 "code raised an error"}
    shared = {403: "not allowed: by the caller's permissions, or by the database for "
                   "Pylight's own database user", 503: "database unreachable"}
    text = {**text, **shared}
    every = sorted({*statuses, *shared, 422})
    return {str(s): _error(text[s], retry=s == 503) for s in every}


def _list_params(table: TableInfo, related: Sequence[str] = ()) -> list[dict[str, Any]]:
    names = "|".join(re.escape(n) for n in table.columns) or "(?!)"
    order_item = rf"({names})(\.(asc|desc))?(\.(nullsfirst|nullslast))?"
    selected = names
    if related:
        # `alias:table!fk_column(select)` for each table it can embed (API.md 7.1); inside
        # the parentheses is a select of that table, nested or not.
        tables = "|".join(re.escape(n) for n in related)
        selected += rf"|([^,:()!.]+:)?({tables})(![^,:()!]+)*\([\s\S]*\)"
    return [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                     "maximum": 999999999999}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                      "maximum": 999999999999}},
        {"name": "order", "in": "query",
         "schema": {"type": "string", "pattern": f"^{order_item}(,{order_item})*$"}},
        {"name": "select", "in": "query",
         "schema": {"type": "string", "pattern": rf"^(\*|{selected})(,(\*|{selected}))*$"},
         "description": "columns (* for all) and related rows through foreign keys: "
                        "table(columns), alias:table(columns), table!fk_column(columns); "
                        "an embed's order, limit, offset and filters by its prefix "
                        "(orders.limit=5)"},
        {"name": "after", "in": "query", "schema": {"type": "string"},
         "description": "cursor from a next link; must match the request's order"},
        {"name": "count", "in": "query", "schema": {"type": "boolean"}},
        {"name": "or", "in": "query", "schema": {"type": "string"},
         "description": "(col.op.value,...) in PostgREST's grammar"},
        *_CSV_PARAMS,
    ]


def _filter_schema(column: ColumnInfo) -> dict[str, Any]:
    """A column filter: `value` or `op.value`, with the value's text form for the type."""
    value = _text_form(column)
    if value is None:
        return {"type": "string"}
    # gt/gte/lt/lte only where the column offers them (a 400 elsewhere)
    names = "eq|neq|gt|gte|lt|lte" if getattr(column, "range_filters", True) else "eq|neq"
    ops = rf"((not\.)?({names})\.)?"
    return {"type": "string", "pattern": rf"^({ops}{value}|(not\.)?is\.null)$"}


def _key_schema(table: TableInfo) -> dict[str, Any]:
    """The `pk` path parameter: the key's value, or its values joined by commas."""
    columns = [table.columns[c] for c in table.primary_key]
    if len(columns) == 1 and columns[0].kind == "integer":
        low, high = _int_range(columns[0])
        return {"type": "integer", "format": "int64", "minimum": low, "maximum": high}
    parts = []
    for column in columns:
        form = _text_form(column, key=True)
        if form is None:
            # any text but a comma (it separates key values) or a slash; not `.` or `..`
            # alone, which a client resolves as a path
            form = r"([^./\u0000,]|\.[^./\u0000,]|\.\.[^/\u0000,])[^/\u0000,]*"
            if len(columns) == 1:
                form = form.replace(",", "")
        parts.append(form)
    return {"type": "string", "minLength": 1, "pattern": "^" + ",".join(parts) + "$"}


def build(tables: dict[str, TableInfo], prefix: str) -> dict[str, Any]:
    """The OpenAPI document of ``tables``, their paths under ``prefix``.

    Pure: it reads only the tables (the catalog's facts were read by the backend at
    reflection), so it may run per request on the event loop (with auth on, each
    caller sees its own tables).
    """
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Error": _error_schema()}
    for name, table in tables.items():
        _add_table(name, table, prefix, paths, schemas, embeddable(tables, table))
    document = {
        "openapi": "3.0.3",
        "info": {"title": "Pylight API", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    _add_shared(schemas)
    return document


def _error_schema() -> dict[str, Any]:
    """The body of every error response (errors.py)."""
    return {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["status", "code", "message"],
        "properties": {"status": {"type": "integer"}, "code": {"type": "string"},
                       "message": {"type": "string"}, "details": {"type": "object"}}}}}


def _add_shared(schemas: dict[str, Any]) -> None:
    """Add the shared schemas (``_SHARED``) that backends' request schemas refer to,
    and only those: most documents need none."""
    text = json.dumps(schemas)
    for shared, schema in _SHARED.items():
        if f'"#/components/schemas/{shared}"' in text:
            schemas[shared] = schema


def _add_table(name: str, table: TableInfo, prefix: str, paths: dict[str, Any],
               schemas: dict[str, Any], related: Sequence[str] = ()) -> None:
    """Add the schemas and paths of one table: its collection, and its rows by key."""
    response_props = {c: _nullable(_response_schema(col, table.arrays_nest), col)
                      for c, col in table.columns.items()}
    # A record as returned: every visible column, nothing else.
    schemas[name] = {"type": "object", "properties": response_props,
                     "required": list(table.columns), "additionalProperties": False}
    # A list item: `select` may leave columns out, and add related rows: an object or
    # null (many-to-one), an array (one-to-many).
    schemas[f"{name}_item"] = {"type": "object", "properties": response_props,
                               "additionalProperties": {"oneOf": [
                                   {"type": "object", "nullable": True},
                                   {"type": "array", "items": {"type": "object"}}]}
                               if related else False}
    collection: dict[str, Any] = {"get": _list_operation(name, table, related)}
    if table.writable:
        schemas.update(_write_schemas(name, table))
        collection["post"] = _create_operation(name, table)
        collection.update(_by_filter_operations(name, table, schemas[f"{name}_update"]))
    paths[f"{prefix}/{name}"] = collection
    if table.has_key:
        paths[f"{prefix}/{name}/{{pk}}"] = _item_path(name, table)


def _write_schemas(name: str, table: TableInfo) -> dict[str, Any]:
    """The bodies of a create (``NAME_create``) and of an update (``NAME_update``)."""
    declared = table.declared
    # Read-only columns (generated, types Pylight cannot write) are not in requests,
    # nor is a key whose auto-increment counter an explicit value could exhaust
    # (the database fills it in; it can still be given).
    request_props = {
        c: _nullable(_request_schema(col, (declared or {}).get(c)), col)
        for c, col in table.columns.items()
        if col.read_only is None and not (declared or {}).get(c, DeclaredColumn()).counter}
    required = [c for c, col in table.columns.items()
                if c in request_props and not _creatable_without(table, col, declared)]
    create: dict[str, Any] = {"type": "object", "properties": request_props,
                              "additionalProperties": False}
    if required:
        create["required"] = required
    # An update names only the columns it changes: nothing is required.
    update = {"type": "object", "properties": request_props, "additionalProperties": False}
    return {f"{name}_create": create, f"{name}_update": update}


def _filter_params(table: TableInfo) -> list[dict[str, Any]]:
    """A query parameter per column, filtering by it.

    No parameter for a column named like a list parameter (`limit`, `order`, ...): OpenAPI
    allows one parameter of a name, and the list parameter keeps it (such a column is
    still filtered as ``order=eq.3``, see query.split_arguments).
    """
    return [{"name": c, "in": "query", "required": False,
             "schema": _filter_schema(col),
             "description": "filter: value or op.value"}
            for c, col in table.columns.items() if c not in ("limit", "offset", "order",
                                                              "select", "after", "count",
                                                              "or", "and", "format", "all")]


def _list_operation(name: str, table: TableInfo, related: Sequence[str] = ()) -> dict[str, Any]:
    """GET on the collection: a page of rows, filtered, ordered and selected."""
    return {
        "summary": f"List rows of {name}",
        "operationId": f"list_{name}",
        "parameters": _list_params(table, related) + _filter_params(table),
        "responses": {"200": {"description": "a page of rows", "content": {
            "application/json": {"schema": {
                "type": "object", "required": ["items", "next"], "additionalProperties": False,
                "properties": {
                    "items": {"type": "array", "items": {
                        "$ref": f"#/components/schemas/{name}_item"}},
                    "next": {"type": "string", "nullable": True},
                    "total": {"type": "integer", "minimum": 0}}}},
            "text/csv": _CSV_PAGE}, "headers": _LIST_HEADERS},
            **_errors(400)}}


def _key_links(name: str, table: TableInfo, verbs: tuple[str, ...]) -> dict[str, Any]:
    """Links from a response's record to the operations on its row, by its key.

    Only for a single-column key: a link's parameter is one field of the body, and
    a composite key's path is several joined by commas.
    """
    key = table.primary_key[0]
    return {f"{verb}_{name}": {"operationId": f"{verb}_{name}",
                               "parameters": {"pk": f"$response.body#/{key}"}}
            for verb in verbs}


def _create_operation(name: str, table: TableInfo) -> dict[str, Any]:
    """POST on the collection: one row (an object) or several (an array)."""
    ref = {"$ref": f"#/components/schemas/{name}"}
    create_ref = {"$ref": f"#/components/schemas/{name}_create"}
    created: dict[str, Any] = {"description": "created: the stored record", "content": {
        "application/json": {"schema": {"oneOf": [ref, {
            "type": "object", "required": ["items"], "additionalProperties": False,
            "properties": {"items": {"type": "array", "items": ref}}}]}}}}
    if table.has_key:
        created["headers"] = {"Location": {"schema": {"type": "string"},
                                           "description": "the new row's URL"}}
    if len(table.primary_key) == 1:
        created["links"] = _key_links(name, table, ("get", "put", "patch", "delete"))
    parameters = [_prefer_header(upsert=table.has_key)]
    if table.unique_keys:
        parameters.append({
            "name": "on_conflict", "in": "query", "required": False,
            "schema": {"type": "string", "enum": [",".join(key) for key in table.unique_keys]},
            "description": "with Prefer: resolution=...: the unique columns that tell an "
                           "existing row (default: the primary key)"})
    return {
        "summary": f"Create a row (an object) or rows (an array, one transaction) "
                   f"in {name}; an upsert with Prefer: resolution=...",
        "operationId": f"create_{name}",
        "parameters": parameters,
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "oneOf": [create_ref, {"type": "array", "minItems": 1,
                                   "items": create_ref}]}}}},
        "responses": {"201": created,
                      "204": {"description": "Prefer: return=minimal, or one object that "
                                             "resolution=ignore-duplicates skipped or a "
                                             "trigger kept out of the table: no body"},
                      **_errors(400, 409, 413, 415, 422)}}


def _prefer_header(upsert: bool = False) -> dict[str, Any]:
    """The Prefer request header (RFC 7240): unknown preferences are ignored."""
    examples = {"minimal": {"value": "return=minimal"}}
    description = "return=minimal: answer 204 without a body"
    if upsert:
        examples.update({"merge": {"value": "resolution=merge-duplicates"},
                         "ignore": {"value": "resolution=ignore-duplicates, return=minimal"}})
        description += ("; resolution=merge-duplicates: insert, or update the row whose key "
                        "(or on_conflict columns) exists; resolution=ignore-duplicates: "
                        "leave existing rows as they are")
    return {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
            "description": description, "examples": examples}


def _by_filter_operations(name: str, table: TableInfo,
                          update: dict[str, Any]) -> dict[str, Any]:
    """PATCH and DELETE on the collection: every row the filters match (at least one
    filter, else a 400), one transaction, `Pylight-Affected` rows."""
    ref = {"$ref": f"#/components/schemas/{name}"}
    affected = {"Pylight-Affected": {"required": True, "description": "rows changed",
                                     "schema": {"type": "integer", "minimum": 0}}}
    parameters = ([_prefer_header()] + [p for p in _list_params(table) if p["name"] == "or"]
                  + _filter_params(table))

    def answer(what: str) -> dict[str, Any]:
        return {"200": {"description": what, "headers": affected, "content": {
                    "application/json": {"schema": {
                        "type": "object", "required": ["items"], "additionalProperties": False,
                        "properties": {"items": {"type": "array", "items": ref}}}}}},
                "204": {"description": "Prefer: return=minimal: no body", "headers": affected}}

    operations = {"delete": {
        "summary": f"Delete every row of {name} the filters match",
        "operationId": f"filter_delete_{name}", "parameters": parameters,
        "responses": {**answer("the rows deleted, as they were"), **_errors(400, 409)}}}
    if update["properties"] and (table.has_key or table.row_identity):
        operations["patch"] = {
            "summary": f"Update the given columns of every row of {name} the filters match",
            "operationId": f"filter_update_{name}", "parameters": parameters,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "allOf": [{"$ref": f"#/components/schemas/{name}_update"}],
                "minProperties": 1}}}},
            "responses": {**answer("the rows updated, as they are now"),
                          **_errors(400, 409, 413, 415, 422)}}
    return operations


def _item_path(name: str, table: TableInfo) -> dict[str, Any]:
    """The path of one row by its key: GET, and PUT, PATCH and DELETE where writable."""
    key = {"name": "pk", "in": "path", "required": True,
           "schema": _key_schema(table),
           "description": "the key; for a composite key, values joined by commas"}
    json_record = {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}
    item: dict[str, Any] = {"parameters": [key], "get": {
        "summary": f"Get one row of {name}", "operationId": f"get_{name}",
        "responses": {"200": {"description": "the row", "content": json_record},
                      **_errors(400, 404)}}}
    if table.writable:
        for method in ("put", "patch"):
            item[method] = _update_operation(name, table, method, json_record)
        item["delete"] = _delete_operation(name)
    for operation in item.values():
        if isinstance(operation, dict):
            _add_conditions(operation)
    return item


def _update_operation(name: str, table: TableInfo, method: str,
                      json_record: dict[str, Any]) -> dict[str, Any]:
    """PUT or PATCH of one row: both change only the columns given."""
    updated: dict[str, Any] = {"description": "the updated row", "content": json_record}
    if len(table.primary_key) == 1:
        updated["links"] = _key_links(name, table, ("get", "delete"))
    return {
        "summary": f"Update the given columns of one row of {name}",
        "operationId": f"{method}_{name}",
        "parameters": [_prefer_header()],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{name}_update"}}}},
        "responses": {"200": updated, "204": {"description": "Prefer: return=minimal: no body"},
                      **_errors(400, 404, 409, 413, 415, 422)}}


def _delete_operation(name: str) -> dict[str, Any]:
    """DELETE of one row; its link leads to the same row (by the path's key), for
    clients and stateful tests to find it gone."""
    again = {"pk": "$request.path.pk"}
    return {"summary": f"Delete one row of {name}",
            "operationId": f"delete_{name}",
            "responses": {"204": {"description": "deleted", "links": {
                f"get_{name}": {"operationId": f"get_{name}",
                                "parameters": again}}},
                          **_errors(400, 404, 409)}}


# -- CSV lists and conditional requests (API.md sections 7.2, 7.3) ---------------------------

_CSV_PARAMS: list[dict[str, Any]] = [
    {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "csv"]},
     "description": "csv: the page as CSV, as with Accept: text/csv (a column named format "
                    "is filtered as format=eq.value)"},
    {"name": "all", "in": "query", "schema": {"type": "boolean"},
     "description": "with CSV only: every matching row in one streamed answer (without "
                    "limit or offset; after= resumes from a cursor)"},
]
_CSV_PAGE: dict[str, Any] = {
    "schema": {"type": "string"},
    "example": 'id,name,price,note\r\n1,Widget,9.99,""\r\n2,"Gadget, large",24.50,\r\n'}
_LIST_HEADERS: dict[str, Any] = {
    "Link": {"schema": {"type": "string"},
             "description": 'CSV: the next page, as <url>; rel="next" (JSON has "next")'},
    "Pylight-Total": {"schema": {"type": "integer", "minimum": 0},
                      "description": "CSV with count=true: the number of matching rows"},
}
_ETAG = {"schema": {"type": "string"},
         "description": "the row's strong entity tag, for If-Match and If-None-Match "
                        "(not sent with select, whose answer is not the whole row)"}
_CONDITION_PARAMS: list[dict[str, Any]] = [
    {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
     "description": 'the row only if its ETag is one of these ("tag", "tag2", or *); '
                    "else 412, nothing written"},
    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "GET: 304 while the row's ETag is one of these (or *); a write: 412"},
]


def _add_conditions(operation: dict[str, Any]) -> None:
    """An operation on one row takes If-Match and If-None-Match; its row comes with an
    ETag; a condition that does not hold is a 412 (a read: a 304 for If-None-Match)."""
    operation["parameters"] = [*operation.get("parameters", ()), *_CONDITION_PARAMS]
    responses = operation["responses"]
    # The row as it is after a read or an update (a 204 of Prefer: return=minimal too).
    tagged = ("200",) if operation["operationId"].startswith("delete_") else ("200", "204")
    for status in tagged:
        if status in responses:
            responses[status] = {**responses[status],
                                 "headers": {**responses[status].get("headers", {}),
                                             "ETag": _ETAG}}
    if operation["operationId"].startswith("get_"):
        responses["304"] = {"description": "not modified: If-None-Match holds the row's ETag",
                            "headers": {"ETag": _ETAG}}
    responses["412"] = _error("If-Match (or If-None-Match) does not hold for the row as it "
                              "is now; nothing was written")
