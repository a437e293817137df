"""Builds the OpenAPI 3 document from the reflected tables."""

from __future__ import annotations

from typing import Any

from pylight import __version__
from pylight.schema import ColumnInfo, TableInfo

_TYPES: dict[str, dict[str, Any]] = {
    "integer": {"type": "integer", "format": "int64"},
    "float": {"type": "number"},
    "decimal": {"type": "string", "format": "decimal"},
    "boolean": {"type": "boolean"},
    "text": {"type": "string"},
    "date": {"type": "string", "format": "date"},
    "time": {"type": "string", "format": "time"},
    "datetime": {"type": "string", "format": "date-time"},
    "binary": {"type": "string", "format": "byte"},
    "uuid": {"type": "string", "format": "uuid"},
    "json": {},
    "any": {},
}


def _column_schema(column: ColumnInfo) -> dict[str, Any]:
    schema = dict(_TYPES.get(column.kind, {}))
    if column.kind == "decimal":
        schema = {"oneOf": [{"type": "string", "pattern": r"^-?\d+(\.\d+)?$"},
                            {"type": "number"}], "description": "exact decimal"}
    if column.nullable and schema:
        schema["nullable"] = True
    return schema


def _record_schema(table: TableInfo) -> dict[str, Any]:
    return {"type": "object",
            "properties": {name: _column_schema(c) for name, c in table.columns.items()}}


def _error() -> dict[str, Any]:
    return {"description": "error", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}


def build(tables: dict[str, TableInfo], prefix: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["status", "code", "message"],
            "properties": {"status": {"type": "integer"}, "code": {"type": "string"},
                           "message": {"type": "string"}, "details": {"type": "object"}}}}},
    }
    list_params = [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "order", "in": "query", "schema": {"type": "string"}},
        {"name": "select", "in": "query", "schema": {"type": "string"}},
        {"name": "after", "in": "query", "schema": {"type": "string"}},
        {"name": "count", "in": "query", "schema": {"type": "boolean"}},
        {"name": "or", "in": "query", "schema": {"type": "string"}},
    ]
    for name, table in tables.items():
        ref = {"$ref": f"#/components/schemas/{name}"}
        schemas[name] = _record_schema(table)
        json_record = {"application/json": {"schema": ref}}
        errors = {"400": _error(), "404": _error(), "503": _error()}
        filters = [{"name": c, "in": "query", "required": False, "schema": {"type": "string"},
                    "description": "filter: value or op.value"} for c in table.columns]
        collection: dict[str, Any] = {"get": {
            "summary": f"List rows of {name}",
            "operationId": f"list_{name}",
            "parameters": list_params + filters,
            "responses": {"200": {"description": "a page of rows", "content": {
                "application/json": {"schema": {"type": "object", "properties": {
                    "items": {"type": "array", "items": ref},
                    "next": {"type": "string", "nullable": True},
                    "total": {"type": "integer"}}}}}}, **errors}}}
        if table.writable:
            collection["post"] = {
                "summary": f"Create a row in {name}",
                "operationId": f"create_{name}",
                "requestBody": {"required": True, "content": json_record},
                "responses": {"201": {"description": "created", "content": json_record},
                              "409": _error(), "413": _error(), "415": _error(),
                              "422": _error(), **errors}}
        paths[f"{prefix}/{name}"] = collection
        if table.has_key:
            key = {"name": "pk", "in": "path", "required": True, "schema": {"type": "string"},
                   "description": "the key; for a composite key, values joined by commas"}
            item: dict[str, Any] = {"parameters": [key], "get": {
                "summary": f"Get one row of {name}", "operationId": f"get_{name}",
                "responses": {"200": {"description": "the row", "content": json_record},
                              **errors}}}
            if table.writable:
                for method in ("put", "patch"):
                    item[method] = {
                        "summary": f"Update columns of one row of {name}",
                        "operationId": f"{method}_{name}",
                        "requestBody": {"required": True, "content": json_record},
                        "responses": {"200": {"description": "the updated row",
                                              "content": json_record},
                                      "409": _error(), "415": _error(), "422": _error(),
                                      **errors}}
                item["delete"] = {"summary": f"Delete one row of {name}",
                                  "operationId": f"delete_{name}",
                                  "responses": {"204": {"description": "deleted"},
                                                "409": _error(), **errors}}
            paths[f"{prefix}/{name}/{{pk}}"] = item
    return {
        "openapi": "3.0.3",
        "info": {"title": "Pylight API", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas},
    }
