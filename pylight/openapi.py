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

import logging
import re
from typing import Any

import peewee

from pylight import __version__
from pylight.schema import ColumnInfo, TableInfo
from pylight.values import INT64_MAX, INT64_MIN

log = logging.getLogger("pylight")

# -- value formats ------------------------------------------------------------------

_YEAR = r"[1-9][0-9]{3}"
# Days up to 28 are valid in every month: the pattern allows no impossible date.
_DATE = _YEAR + r"-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
_OFFSET = r"(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])"
_NO_NUL = r"^[^\u0000]*$"  # NUL cannot be stored as text by PostgreSQL

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
    "time": {"type": "string", "pattern": r"^[0-9]{2}:[0-9]{2}",
             "description": "ISO 8601 time"},
    "datetime": {"type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}",
                 "description": "ISO 8601 date-time; an offset only for columns with a time zone"},
    "binary": {"type": "string", "format": "byte"},
    "uuid": {"type": "string", "format": "uuid"},
    "json": {},
    "any": {},
    "duration": {"type": "string", "description": "ISO 8601 duration"},
}
_DURATION = (r"^-?P(?!$)(-?[0-9]+Y)?(-?[0-9]+M)?(-?[0-9]+W)?(-?[0-9]+D)?"
             r"(T(?=-?[0-9])(-?[0-9]+H)?(-?[0-9]+M)?(-?[0-9]+(\.[0-9]+)?S)?)?$")

# Integer widths by declared type (SQLite's INTEGER is always 64-bit).
_INT_BITS = (("bigint", 64), ("int8", 64), ("mediumint", 24), ("smallint", 16), ("int2", 16),
             ("tinyint", 8), ("int", 32), ("serial", 32))


def _int_range(column: ColumnInfo, sqlite: bool) -> tuple[int, int]:
    raw = column.raw_type.lower()
    if sqlite:
        return INT64_MIN, INT64_MAX
    bits = next((b for word, b in _INT_BITS if word in raw), 64)
    if bits == 64:
        return INT64_MIN, INT64_MAX
    if "unsigned" in raw:
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _decimal_request(column: ColumnInfo) -> dict[str, Any]:
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
    return {"anyOf": [{"type": "string", "pattern": f"^-?{whole}{fraction}$"}, number],
            "description": "exact decimal, as a string or a number"}


def _request_schema(column: ColumnInfo, sqlite: bool, max_length: int | None) -> dict[str, Any]:
    kind = column.kind
    if column.enum is not None and kind == "text":
        return {"type": "string", "enum": list(column.enum)}
    if kind == "array":
        return {"type": "array", "items": _items(column.items)}
    if kind == "duration":
        return {"type": "string", "pattern": _DURATION, "description": "ISO 8601 duration"}
    if kind == "boolean" and _stores_numbers(column):
        return {"anyOf": [{"type": "boolean"}, {"type": "integer", "minimum": -128,
                                                "maximum": 127}]}
    if kind == "integer":
        low, high = column.bounds or _int_range(column, sqlite)
        return {"type": "integer", "format": "int64", "minimum": low, "maximum": high}
    if kind == "decimal":
        return _decimal_request(column)
    if kind == "text":
        schema: dict[str, Any] = {"type": "string", "pattern": _NO_NUL}
        if max_length:
            schema["maxLength"] = max_length
        return schema
    if kind == "date":
        return {"type": "string", "pattern": f"^{_DATE}$", "description": "ISO 8601 date"}
    if kind == "time":
        return {"type": "string", "pattern": f"^{_TIME}{_OFFSET}?$", "description": "ISO 8601 time"}
    if kind == "datetime":
        return {"type": "string", "pattern": f"^{_DATE}[T ]{_TIME}{_OFFSET}?$",
                "description": "ISO 8601 date-time; an offset is converted to UTC unless the "
                               "column keeps a time zone"}
    if kind == "float":
        return {"type": "number"}
    if kind == "any":
        return {"anyOf": [{"type": "string", "pattern": _NO_NUL}, {"type": "number"},
                          {"type": "boolean"}]}
    return dict(_RESPONSE.get(kind, {}))


def _response_schema(column: ColumnInfo) -> dict[str, Any]:
    if column.enum is not None and column.kind == "text":
        schema: dict[str, Any] = {"type": "string", "enum": list(column.enum)}
    elif column.kind == "array":
        schema = {"type": "array", "items": _items(column.items)}
    elif column.kind == "boolean" and _stores_numbers(column):
        schema = {"anyOf": [{"type": "boolean"}, {"type": "integer"}]}
    elif column.kind == "integer" and column.bounds is not None:
        low, high = column.bounds
        schema = {"type": "integer", "minimum": low, "maximum": high}
    else:
        schema = dict(_RESPONSE.get(column.kind, {}))
    schema = _loose(schema, column)
    if column.read_only is not None:
        schema["readOnly"] = True
    return schema


def _stores_numbers(column: ColumnInfo) -> bool:
    """A boolean that is an integer column underneath (MySQL's TINYINT(1))."""
    return "int" in column.raw_type.lower()


def _items(ctype: Any) -> dict[str, Any]:
    """The schema of an array's elements (any JSON value where the type is unknown)."""
    if ctype is None:
        return {}
    if ctype.enum is not None:
        return {"type": "string", "enum": list(ctype.enum), "nullable": True}
    if ctype.kind == "array":
        return {"type": "array", "items": _items(ctype.items), "nullable": True}
    schema = dict(_RESPONSE.get(ctype.kind or "text", {}))
    return {**schema, "nullable": True} if schema else schema


def _loose(schema: dict[str, Any], column: ColumnInfo) -> dict[str, Any]:
    """A column keeping values of any type (SQLite) may give text and numbers too."""
    if not column.loose or not schema:
        return schema
    return {"anyOf": [schema, {"type": "string", "pattern": _NO_NUL}, {"type": "number"}]}


def _nullable(schema: dict[str, Any], column: ColumnInfo) -> dict[str, Any]:
    if column.nullable and schema:
        schema = {**schema, "nullable": True}
    return schema


def _text_lengths(table: TableInfo) -> dict[str, int]:
    """Declared lengths of the text columns (VARCHAR(n)) the database enforces, for maxLength.

    PostgreSQL and MariaDB report them in information_schema (reflection does
    not keep them). Asked once per document; none when they cannot be asked.
    """
    lengths: dict[str, int] = {}
    db = table.model._meta.database
    if isinstance(db, peewee.SqliteDatabase):
        return lengths  # SQLite stores text of any length, whatever the declaration says
    schema = "current_schema()" if isinstance(db, peewee.PostgresqlDatabase) else "DATABASE()"
    try:
        with db.connection_context():
            rows = db.execute_sql(
                "SELECT column_name, character_maximum_length FROM information_schema.columns "
                f"WHERE table_schema = {schema} AND table_name = %s "
                "AND character_maximum_length IS NOT NULL", (table.name,)).fetchall()
    except Exception as exc:  # the document stays usable without the lengths
        log.debug("no text lengths for %s: %s", table.name, exc)
        return lengths
    for name, length in rows:
        column = table.columns.get(name)
        if column is not None and column.kind == "text":
            lengths[name] = int(length)
    return lengths


def _creatable_without(table: TableInfo, column: ColumnInfo) -> bool:
    """Whether a create may leave ``column`` out: nullable, defaulted or a generated key."""
    if column.nullable or column.default is not None:
        return True
    return table.primary_key == [column.name] and column.kind == "integer"


def _error(description: str = "error", retry: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}
    if retry:
        response["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
    return response


def _errors(*statuses: int) -> dict[str, Any]:
    text = {400: "bad query parameter, key or body", 404: "no such row",
            405: "method not allowed", 409: "unique or foreign-key conflict",
            413: "body too large", 415: "body not JSON",
            422: "a column is unknown or its value does not fit", 503: "database unreachable"}
    return {str(s): _error(text[s], retry=s == 503) for s in (*statuses, 503)}


def _list_params(table: TableInfo) -> list[dict[str, Any]]:
    names = "|".join(re.escape(n) for n in table.columns) or "(?!)"
    order_item = rf"({names})(\.(asc|desc))?(\.(nullsfirst|nullslast))?"
    return [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                     "maximum": 999999999999}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                      "maximum": 999999999999}},
        {"name": "order", "in": "query",
         "schema": {"type": "string", "pattern": f"^{order_item}(,{order_item})*$"}},
        {"name": "select", "in": "query",
         "schema": {"type": "string", "pattern": rf"^(\*|{names})(,(\*|{names}))*$"}},
        {"name": "after", "in": "query", "schema": {"type": "string"},
         "description": "cursor from a next link; must match the request's order"},
        {"name": "count", "in": "query", "schema": {"type": "boolean"}},
        {"name": "or", "in": "query", "schema": {"type": "string"},
         "description": "(col.op.value,...) in PostgREST's grammar"},
    ]


def _filter_schema(column: ColumnInfo) -> dict[str, Any]:
    """A column filter: `value` or `op.value`, with the value's text form for the kind."""
    value = {"integer": r"-?[0-9]{1,18}", "boolean": r"([tT][rR][uU][eE]|[fF][aA][lL][sS][eE]|[tTfF01])",
             "decimal": r"-?[0-9]{1,6}(\.[0-9]{1,2})?", "float": r"-?[0-9]{1,6}(\.[0-9]{1,6})?",
             "date": _DATE}.get(column.kind)
    if column.kind == "json":
        return {"type": "string", "pattern": r"^(not\.)?is\.null$"}
    if value is None:
        return {"type": "string"}
    ops = r"((not\.)?(eq|neq|gt|gte|lt|lte)\.)?"
    return {"type": "string", "pattern": rf"^({ops}{value}|(not\.)?is\.null)$"}


def build(tables: dict[str, TableInfo], prefix: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["status", "code", "message"],
            "properties": {"status": {"type": "integer"}, "code": {"type": "string"},
                           "message": {"type": "string"}, "details": {"type": "object"}}}}},
    }
    for name, table in tables.items():
        sqlite = isinstance(table.model._meta.database, peewee.SqliteDatabase)
        lengths = _text_lengths(table) if table.writable else {}
        response_props = {c: _nullable(_response_schema(col), col)
                          for c, col in table.columns.items()}
        # Read-only columns (generated, types Pylight cannot write) are not in requests.
        request_props = {c: _nullable(_request_schema(col, sqlite, lengths.get(c)), col)
                         for c, col in table.columns.items() if col.read_only is None}
        # A record as returned: every visible column, nothing else.
        schemas[name] = {"type": "object", "properties": response_props,
                         "required": list(table.columns), "additionalProperties": False}
        # A list item: `select` may leave columns out.
        schemas[f"{name}_item"] = {"type": "object", "properties": response_props,
                                   "additionalProperties": False}
        ref = {"$ref": f"#/components/schemas/{name}"}
        json_record = {"application/json": {"schema": ref}}
        filters = [{"name": c, "in": "query", "required": False, "schema": _filter_schema(col),
                    "description": "filter: value or op.value"}
                   for c, col in table.columns.items() if c not in ("limit", "offset", "order",
                                                                     "select", "after", "count",
                                                                     "or", "and")]
        collection: dict[str, Any] = {"get": {
            "summary": f"List rows of {name}",
            "operationId": f"list_{name}",
            "parameters": _list_params(table) + filters,
            "responses": {"200": {"description": "a page of rows", "content": {
                "application/json": {"schema": {
                    "type": "object", "required": ["items", "next"], "additionalProperties": False,
                    "properties": {
                        "items": {"type": "array", "items": {
                            "$ref": f"#/components/schemas/{name}_item"}},
                        "next": {"type": "string", "nullable": True},
                        "total": {"type": "integer", "minimum": 0}}}}}},
                **_errors(400)}}}
        single_key = len(table.primary_key) == 1
        if table.writable:
            required = [c for c, col in table.columns.items()
                        if not _creatable_without(table, col)]
            create: dict[str, Any] = {"type": "object", "properties": request_props,
                                      "additionalProperties": False}
            if required:
                create["required"] = required
            schemas[f"{name}_create"] = create
            schemas[f"{name}_update"] = {"type": "object", "properties": request_props,
                                         "additionalProperties": False}
            create_ref = {"$ref": f"#/components/schemas/{name}_create"}
            created: dict[str, Any] = {"description": "created: the stored record", "content": {
                "application/json": {"schema": {"oneOf": [ref, {
                    "type": "object", "required": ["items"], "additionalProperties": False,
                    "properties": {"items": {"type": "array", "items": ref}}}]}}}}
            if table.has_key:
                created["headers"] = {"Location": {"schema": {"type": "string"},
                                                   "description": "the new row's URL"}}
            if single_key:
                key = table.primary_key[0]
                created["links"] = {
                    f"{verb}_{name}": {"operationId": f"{verb}_{name}",
                                       "parameters": {"pk": f"$response.body#/{key}"}}
                    for verb in ("get", "put", "patch", "delete")}
            collection["post"] = {
                "summary": f"Create a row (an object) or rows (an array, one transaction) "
                           f"in {name}",
                "operationId": f"create_{name}",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "oneOf": [create_ref, {"type": "array", "minItems": 1,
                                           "items": create_ref}]}}}},
                "responses": {"201": created, **_errors(400, 409, 413, 415, 422)}}
        paths[f"{prefix}/{name}"] = collection
        if table.has_key:
            if single_key:
                column = table.columns[table.primary_key[0]]
                key_schema = (_request_schema(column, sqlite, None) if column.kind == "integer"
                              else {"type": "string", "minLength": 1, "pattern": r"^[^/\u0000]+$"})
            else:
                key_schema = {"type": "string", "minLength": 1}
            key = {"name": "pk", "in": "path", "required": True, "schema": key_schema,
                   "description": "the key; for a composite key, values joined by commas"}
            item: dict[str, Any] = {"parameters": [key], "get": {
                "summary": f"Get one row of {name}", "operationId": f"get_{name}",
                "responses": {"200": {"description": "the row", "content": json_record},
                              **_errors(400, 404)}}}
            if table.writable:
                again = {"pk": "$request.path.pk"}
                for method in ("put", "patch"):
                    updated: dict[str, Any] = {"description": "the updated row",
                                               "content": json_record}
                    if single_key:
                        updated["links"] = {f"{verb}_{name}": {
                            "operationId": f"{verb}_{name}",
                            "parameters": {"pk": f"$response.body#/{table.primary_key[0]}"}}
                            for verb in ("get", "delete")}
                    item[method] = {
                        "summary": f"Update the given columns of one row of {name}",
                        "operationId": f"{method}_{name}",
                        "requestBody": {"required": True, "content": {"application/json": {
                            "schema": {"$ref": f"#/components/schemas/{name}_update"}}}},
                        "responses": {"200": updated,
                                      **_errors(400, 404, 409, 413, 415, 422)}}
                item["delete"] = {"summary": f"Delete one row of {name}",
                                  "operationId": f"delete_{name}",
                                  "responses": {"204": {"description": "deleted", "links": {
                                      f"get_{name}": {"operationId": f"get_{name}",
                                                      "parameters": again}}},
                                                **_errors(400, 404, 409)}}
            paths[f"{prefix}/{name}/{{pk}}"] = item
    return {
        "openapi": "3.0.3",
        "info": {"title": "Pylight API", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas},
    }
