"""The REST handlers: one generic collection and one item handler, serving every table."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote

from pylight import bulk, csv_output, etag, prefer, row_counts, values
from pylight import query as ql
from pylight.auth import Auth, Identity
from pylight.backend import RAISED
from pylight.catalog import Catalog
from pylight.config import ApiSettings
from pylight.embed import Embedder
from pylight.errors import ApiError, bad_request, method_not_allowed, not_found, unprocessable
from pylight.handlers import BaseHandler, HttpContext
from pylight.rows import Authorize, Rows
from pylight.schema import TableInfo

T = TypeVar("T")


@dataclass(frozen=True)
class RestContext:
    """What the REST handlers are handed: the tables, their rows, auth and the catalog."""

    tables: dict[str, TableInfo]
    rows: Rows
    auth: Auth
    catalog: Catalog
    settings: ApiSettings


class TableHandler(BaseHandler):
    identity: Identity | None = None

    def initialize(self, http: HttpContext, rest: RestContext) -> None:  # type: ignore[override]
        super().initialize(http)
        self.rest = rest
        self.rows = rest.rows
        self.auth = rest.auth

    async def run_write(self, table: TableInfo, write: Awaitable[T],
                        rows: list[dict[str, Any]] = (), arguments: dict[str, Any] | None = None
                        ) -> T:
        """Await a write; a value the database refused is blamed on its column (or, for
        a write by filter, a filter value on its parameter: ``arguments``)."""
        try:
            return await write
        except ApiError as error:
            name = _quoted_parameter(error.message, arguments or {})
            if error.status == 400 and "parameter" not in error.details and name is not None:
                raise bad_request(f"{name}: {error.message}", parameter=name) from None
            raise _blame_column(error, table, rows) from None

    async def prepare(self) -> None:
        super().prepare()
        if self.auth.enabled and not self._finished:
            self.identity = await self.auth.authenticate(self.request)

    def embedder(self) -> Embedder:
        """Related rows of ``select`` (API.md 7.1), read as this caller may."""
        return Embedder(self.rest.tables, self.rows, self.auth, self.rest.settings, self.identity)

    def row_check(self, table: TableInfo) -> ql.Matcher | None:
        return self.auth.matcher(self.identity, table) if self.auth.enabled else None

    def table(self, name: str) -> TableInfo:
        table = self.rest.tables.get(name)
        if table is None:
            raise not_found(f"no table named {name[:100]!r}", table=name[:100])
        return table

    def check_writable(self, table: TableInfo, allow: list[str]) -> None:
        if table.is_view:
            raise method_not_allowed(f"{table.name!r} is a view; it can only be read", allow)
        if table.read_only:
            raise method_not_allowed(f"{table.name!r} is read-only", allow)

    def coerce_row(self, table: TableInfo, body: Any, partial: bool, where: str = "") -> dict[str, Any]:
        """A body object's values coerced to their columns; 422 for anything that doesn't fit."""
        if not isinstance(body, dict):
            raise bad_request(f"{where}expected a JSON object of column values")
        row: dict[str, Any] = {}
        for name, value in body.items():
            column = table.columns.get(name)
            if column is None:
                reason = "is hidden" if name in table.hidden else "does not exist"
                raise unprocessable(f"{where}column {name[:64]!r} {reason} in {table.name!r}",
                                    column=name[:64])
            if column.read_only is not None:
                raise unprocessable(f"{where}column {name!r} is read-only ({column.read_only})",
                                    column=name)
            if value is None:
                if not column.nullable:
                    raise unprocessable(f"{where}column {name!r} may not be null", column=name)
                row[name] = None
                continue
            try:
                row[name] = column.coerce(value)
            except values.BadValue as exc:
                raise unprocessable(f"{where}column {name!r}: {exc}", column=name) from None
        if not partial and not row and not table.columns:
            raise unprocessable(f"{where}no columns given")
        return row

    def location(self, table: TableInfo, record: dict[str, Any]) -> str | None:
        """The row's URL; None for a composite key with a comma in a value (a range,
        a text): such a row is reachable through filters only."""
        parts = [str(record.get(name)) for name in table.primary_key]
        if len(parts) > 1 and any("," in part for part in parts):
            return None
        key = ",".join(parts)
        return f"{self.rest.settings.prefix}/{quote(table.name)}/{quote(key, safe=',')}"

    def preferences(self) -> prefer.Prefer:
        """The request's ``Prefer`` header (400 for a resolution we do not know)."""
        return prefer.parse(self.request.headers.get_list("Prefer"))

    def answer(self, payload: Any, preferred: prefer.Prefer, status: int = 200) -> None:
        """Write ``payload``; a 204 without a body with ``Prefer: return=minimal`` (or
        when there is nothing to show: None)."""
        if preferred.minimal:
            self.add_header("Preference-Applied", "return=minimal")
        elif payload is not None:
            self.write_json(payload, status)
            return
        self.set_status(204)
        self._cors()
        self.clear_header("Content-Type")
        self.finish()

    def record_check(self, table: TableInfo, action: str) -> Authorize | None:
        """Record-level authorisation of ``action`` on each row a write changes."""
        if not self.auth.authorizes:
            return None

        async def authorize(record: dict[str, Any]) -> None:
            await self.auth.authorize(self.identity, action, table.name, record)
        return authorize


class CollectionHandler(TableHandler):
    metrics_route = None

    async def get(self, name: str) -> None:
        if self._finished:
            return
        table = self.table(name)
        api = self.rest.settings
        arguments = self.request.query_arguments
        auth = self.auth
        # ?token= is a credential for browsers, never a column filter (and never
        # copied into a next link).
        ignore = ("token",) if auth.authenticates else ()
        as_csv = csv_output.negotiate(table, arguments, self.request.headers.get("Accept"))
        q = ql.parse_list_query(table, arguments, api.default_limit, api.max_limit,
                                (*ignore, *csv_output.PARAMS))
        if auth.enabled:
            await auth.authorize(self.identity, "read", table.name)
            rows = auth.row_filter(self.identity, table)
            if rows is not None:
                q.where = ql.Group((q.where, rows))
        reader = await self.embedder().plan(table, q)  # pages with their related rows
        try:
            if as_csv is not None and as_csv.every_row:
                await csv_output.stream_all(self, table, q, partial(reader.page, table),
                                            api.max_limit)
                return
            page = await reader.page(table, q)
        except ApiError as error:
            raise _as_query_error(error, arguments) from None
        link = None
        drop = dict.fromkeys(ignore)
        if page.after is not None:
            link = ql.query_string(table, arguments, offset=None, after=page.after, limit=q.limit,
                                   **drop)
        elif page.next_offset is not None:
            link = ql.query_string(table, arguments, after=None, offset=page.next_offset,
                                   limit=q.limit, **drop)
        if as_csv is not None:
            csv_output.write_page(self, table, q, page, f"{api.prefix}/{quote(table.name)}?{link}"
                                  if link is not None else None)
            return
        payload: dict[str, Any] = {
            "items": page.items,
            "next": f"{api.prefix}/{quote(table.name)}?{link}" if link is not None else None,
        }
        if page.total is not None:
            payload["total"] = page.total
        self.write_json(payload)

    async def post(self, name: str) -> None:
        if self._finished:
            return
        table = self.table(name)
        self.check_writable(table, ["GET"])
        preferred = self.preferences()
        # An upsert's (Prefer: resolution=...) conflict columns are refused before the
        # body is read; on_conflict without a resolution is checked too, and ignored.
        arguments = self.request.query_arguments
        target = (bulk.conflict_target(table, arguments)
                  if preferred.resolution or "on_conflict" in arguments else ())
        if self.auth.enabled:
            # May the caller create here at all? Asked before the body is read, so
            # an anonymous or unpermitted caller gets its 401/403, not a 422.
            await self.auth.authorize(self.identity, "create", table.name)
            if preferred.merge:
                await self.auth.authorize(self.identity, "update", table.name)
        body = self.json_body()
        many = isinstance(body, list)
        if many:
            if not body:
                raise bad_request("the array is empty; send at least one object")
            rows = [self.coerce_row(table, item, False, f"item {i}: ") for i, item in
                    enumerate(body)]
        elif isinstance(body, dict):
            rows = [self.coerce_row(table, body, False)]
        else:
            raise bad_request("expected a JSON object, or an array of objects")
        if self.auth.authorizes:
            for item in body if many else [body]:
                await self.auth.authorize(self.identity, "create", table.name, item)
        if preferred.resolution is None:
            write = self.rows.insert(table, rows, self.row_check(table), self.identity)
        else:
            write = self.rows.upsert(table, rows, target, preferred.merge, self.row_check(table),
                                     self.identity, self.record_check(table, "update"))
            self.add_header("Preference-Applied", f"resolution={preferred.resolution}")
        records = await self.run_write(table, write, rows)
        if preferred.resolution is not None:
            self.set_header("Pylight-Affected", str(len(records)))
        if many:
            self.answer({"items": records}, preferred, 201)
            return
        location = self.location(table, records[0]) if records and table.has_key else None
        if location is not None:
            self.set_header("Location", location)
        # A duplicate ignored (resolution=ignore-duplicates): nothing to show, a 204.
        self.answer(records[0] if records else None, preferred, 201)

    async def patch(self, name: str) -> None:
        """Update every row the filters match (API.md 7.2)."""
        if self._finished:
            return
        table, where, preferred = await self.by_filter(name, "update")
        row = self.coerce_row(table, self.json_body(), True)
        if not row:
            raise unprocessable("the object names no column to change")
        write = self.rows.update_where(table, where, row, self.row_check(table), self.identity,
                                       self.record_check(table, "update"))
        self.answer_rows(await self.run_write(table, write, [row], self.request.query_arguments),
                         preferred)

    async def delete(self, name: str) -> None:
        """Delete every row the filters match (API.md 7.2)."""
        if self._finished:
            return
        table, where, preferred = await self.by_filter(name, "delete")
        write = self.rows.delete_where(table, where, self.identity,
                                       self.record_check(table, "delete"))
        self.answer_rows(await self.run_write(table, write, [], self.request.query_arguments),
                         preferred)

    async def by_filter(self, name: str, action: str) -> tuple[TableInfo, ql.Group, prefer.Prefer]:
        """A write by filter's table, filters (ANDed with the caller's row filter: rows
        outside it are not touched) and preferences; refusals come before the body."""
        table = self.table(name)
        self.check_writable(table, ["GET"])
        if action == "update":
            bulk.check_updatable(table, ["GET", "POST", "DELETE"])
        preferred = self.preferences()
        if self.auth.enabled:
            await self.auth.authorize(self.identity, action, table.name)
        ignore = ("token",) if self.auth.authenticates else ()
        where = bulk.parse_where(table, self.request.query_arguments, ignore)
        rows = self.auth.row_filter(self.identity, table) if self.auth.enabled else None
        if rows is not None:
            where = ql.Group((where, rows))
        return table, where, preferred

    def answer_rows(self, items: list[dict[str, Any]], preferred: prefer.Prefer) -> None:
        self.set_header("Pylight-Affected", str(len(items)))
        self.answer({"items": items}, preferred)


class ItemHandler(TableHandler):
    metrics_route = None

    def key(self, table: TableInfo, text: str) -> list[Any]:
        if not table.has_key:
            kind = "a view" if table.is_view else "a table without a primary key"
            raise method_not_allowed(
                f"{table.name!r} is {kind}, so it has no item routes; "
                f"use filters on {self.rest.settings.prefix}/{table.name}", [])
        parts = [text] if len(table.primary_key) == 1 else text.split(",")
        if len(parts) != len(table.primary_key):
            raise bad_request(
                f"key {text[:100]!r} needs {len(table.primary_key)} comma-separated values "
                f"({', '.join(table.primary_key)})")
        key = []
        for name, part in zip(table.primary_key, parts, strict=False):
            column = table.columns[name]
            try:
                key.append(column.coerce(values.from_text(column.kind, part)))
            except values.BadValue as exc:
                raise bad_request(f"key column {name!r}: {exc}") from None
        return key

    async def get(self, name: str, key_text: str) -> None:
        if self._finished:
            return
        table = self.table(name)
        key = self.key(table, key_text)
        if self.auth.enabled:
            # Table-level first: a caller who may not read the table learns
            # nothing (not even whether the row exists: 401/403, never 404) and
            # costs no database read.
            await self.auth.authorize(self.identity, "read", table.name)
        check = self.row_check(table)
        record = await self.rows.get(table, key)
        if record is None or (check is not None and not check(record)):
            raise not_found(f"no row in {table.name!r} with key {key_text[:100]!r}")
        if self.auth.authorizes:
            await self.auth.authorize(self.identity, "read", table.name, record)
        if self.not_modified(record):
            return
        arguments = self.request.query_arguments
        if "select" not in arguments:  # the common case: the row as read, nothing to plan
            self.write_json(record)
            return
        self.write_json(await self.embedder().item(table, record, arguments))

    def not_modified(self, record: dict[str, Any]) -> bool:
        """Send the row's ETag; answer 304 (and True) when If-None-Match holds it.

        With ``select`` the answer is not the row (some columns; related rows, which
        change on their own): it has no tag, and only If-Match is checked."""
        tag = etag.row_tag(record)
        conditions = etag.preconditions(self.request.headers)
        if "select" in self.request.query_arguments:
            if conditions is not None:
                conditions.require_match(tag)
            return False
        self.set_header("ETag", tag)
        if conditions is None or not conditions.not_modified(tag):
            return False
        self.set_status(304)
        self._cors()
        self.finish()
        return True

    async def authorize_change(self, table: TableInfo, action: str, key: list[Any]) -> None:
        """Record-level authorisation of an update or delete, on the row as stored now.

        The table-level check (record None) is made by the caller before the
        body is read, so a refused caller gets its 401/403 rather than a 422.
        """
        auth = self.auth
        if auth.authorizes:
            record = await self.rows.get(table, key)
            if record is not None:
                await auth.authorize(self.identity, action, table.name, record)

    async def put(self, name: str, key_text: str) -> None:
        if self._finished:
            return
        table = self.table(name)
        key = self.key(table, key_text)
        self.check_writable(table, ["GET"])
        preferred = self.preferences()
        if self.auth.enabled:
            await self.auth.authorize(self.identity, "update", table.name)
        row = self.coerce_row(table, self.json_body(), True)
        if self.auth.enabled:
            await self.authorize_change(table, "update", key)
        record = await self.run_write(
            table, self.rows.update(table, key, row, self.row_check(table), self.identity,
                                    etag.preconditions(self.request.headers)),
            [row])
        self.set_header("ETag", etag.row_tag(record))
        self.answer(record, preferred)

    patch = put

    async def delete(self, name: str, key_text: str) -> None:
        if self._finished:
            return
        table = self.table(name)
        key = self.key(table, key_text)
        self.check_writable(table, ["GET"])
        if self.auth.enabled:
            await self.auth.authorize(self.identity, "delete", table.name)
            await self.authorize_change(table, "delete", key)
        await self.run_write(table, self.rows.delete(table, key, self.row_check(table),
                                                     self.identity,
                                                     etag.preconditions(self.request.headers)))
        self.set_status(204)
        self._cors()
        self.clear_header("Content-Type")
        self.finish()


class SchemaHandler(TableHandler):
    metrics_route = ":schema"

    async def readable(self) -> dict[str, TableInfo]:
        """The tables the caller may read: the schema documents show only those."""
        if not self.auth.enabled:
            return self.rest.tables
        tables = {}
        for name, table in self.rest.tables.items():
            try:
                await self.auth.authorize(self.identity, "read", name)
            except ApiError:
                continue
            tables[name] = table
        return tables

    async def get(self) -> None:
        if self._finished:
            return
        counted = row_counts.wanted(self.request.query_arguments)  # ?count=true
        tables = await self.readable()
        described = [self.rest.catalog.describe(t) for t in tables.values()]
        if counted:
            filters = {name: self.auth.row_filter(self.identity, t) for name, t in tables.items()}
            counts = await row_counts.count_rows(self.rows.database, self.rows.backend, tables,
                                                 filters)
            for item in described:
                item.update(counts[item["name"]])
        self.write_json({"tables": described})


class OpenApiHandler(SchemaHandler):
    metrics_route = ":openapi"

    async def get(self) -> None:
        if self._finished:
            return
        if not self.auth.enabled:
            self.write_json(self.rest.catalog.openapi())
            return
        self.write_json(self.rest.catalog.openapi(await self.readable()))


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"\s*$')


def _as_query_error(error: ApiError, arguments: dict[str, Any]) -> ApiError:
    """A value the database refused while reading is a filter value that does not fit
    its column (a PostgreSQL inet given "abc"): a 400 naming the parameter."""
    if error.status != 422 or error.details.get("reason") == RAISED:
        return error
    name = _quoted_parameter(error.message, arguments)
    if name is not None:
        return bad_request(f"{name}: {error.message}", parameter=name)
    return bad_request(f"a filter value does not fit its column: {error.message}")


def _quoted_parameter(message: str, arguments: dict[str, Any]) -> str | None:
    """The one query parameter holding the value a database's message quotes, if any."""
    match = _QUOTED.search(message)
    quoted = match.group(1) if match else None
    names = [name for name, raw in arguments.items() if quoted is not None and any(
        quoted in (item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item))
        for item in raw)]
    return names[0] if len(names) == 1 else None


def _blame_column(error: ApiError, table: TableInfo, rows: list[dict[str, Any]]) -> ApiError:
    """A database's 422 that names no column (PostgreSQL's "invalid input syntax for
    type inet: "x"") names the column whose value it quotes, when exactly one does."""
    if error.status != 422 or "column" in error.details:
        return error
    match = _QUOTED.search(error.message)
    if match is None:
        return error
    quoted = match.group(1)
    names = {name for row in rows for name, value in row.items()
             if value is not None and str(value) == quoted and name in table.columns}
    if len(names) != 1:
        return error
    name = names.pop()
    return unprocessable(f"column {name!r}: {error.message}", column=name)


def routes(http: HttpContext, rest: RestContext) -> list[tuple[str, type, dict[str, Any]]]:
    prefix = rest.settings.prefix
    kwargs = {"http": http, "rest": rest}
    return [
        (rf"{prefix}/?", SchemaHandler, kwargs),
        (rf"{prefix}/openapi\.json", OpenApiHandler, kwargs),
        (rf"{prefix}/([^/]+)/?", CollectionHandler, kwargs),
        (rf"{prefix}/([^/]+)/([^/]+)", ItemHandler, kwargs),
    ]


__all__ = ["ApiError", "CollectionHandler", "ItemHandler", "routes"]
