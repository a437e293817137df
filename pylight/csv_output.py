"""CSV answers of lists (API.md section 7.3): when a list is CSV, how values are written,
and streaming every matching row (``all=true``) a page at a time."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tornado.iostream import StreamClosedError

from pylight import query as ql
from pylight import values
from pylight.errors import ApiError, bad_request
from pylight.handlers import BaseHandler
from pylight.schema import TableInfo
from pylight.store import Page

log = logging.getLogger("pylight")

CONTENT_TYPE = "text/csv; charset=utf-8"
#: The list parameters that ask for CSV. A column of one of these names is still
#: filtered with an operator (``format=eq.x``), as ``order`` is (query.split_arguments).
PARAMS = ("format", "all")


@dataclass(frozen=True)
class CsvRequest:
    every_row: bool  # all=true: every matching row in one answer, not one page


def negotiate(table: TableInfo, arguments: Mapping[str, Any],
              accept: str | None) -> CsvRequest | None:
    """Whether a list request asks for CSV (``format=csv``, or an Accept header preferring
    ``text/csv``; ``format=json`` wins over Accept); None: JSON. 400 for a bad ``format``
    or ``all``, and for ``all=true`` without CSV or with ``limit``/``offset``."""
    _, params = ql.split_arguments(table, arguments, PARAMS)
    form = _one(params, "format")
    if form not in (None, "csv", "json"):
        raise bad_request("format: expected csv or json (a column named format is filtered "
                          "as format=eq.<value>)", parameter="format")
    every = False
    text = _one(params, "all")
    if text is not None:
        truth = values.query_boolean(text)
        if truth is None:
            raise bad_request("all: expected true or false", parameter="all")
        every = truth
    wanted = form == "csv" or (form is None and prefers_csv(accept))
    if every and not wanted:
        raise bad_request("all: only for CSV (format=csv or Accept: text/csv); a JSON list "
                          "is read page by page through its next links", parameter="all")
    _, paging = ql.split_arguments(table, arguments, ("limit", "offset")) if every else (0, {})
    if paging:
        name = next(iter(paging))
        raise bad_request(f"{name}: all=true answers every matching row; leave {name} out "
                          "(after= still resumes from a cursor)", parameter=name)
    return CsvRequest(every) if wanted else None


def _one(params: Mapping[str, Any], name: str) -> str | None:
    raw = params.get(name)
    if raw is None:
        return None
    items = raw if isinstance(raw, (list, tuple)) else [raw]
    if len(items) != 1:
        raise bad_request(f"{name}: given more than once", parameter=name)
    item = items[0]
    try:
        return item.decode("utf-8") if isinstance(item, bytes) else str(item)
    except UnicodeDecodeError:
        raise bad_request(f"{name}: not valid UTF-8", parameter=name) from None


def prefers_csv(accept: str | None) -> bool:
    """Whether an Accept header prefers ``text/csv`` to ``application/json``: a higher
    q-value, or the same one listed first. Wildcards choose nothing (JSON is the default)."""
    if not accept:
        return False
    best: dict[str, tuple[float, int]] = {}
    for position, part in enumerate(accept.split(",")):
        media, *params = part.split(";")
        media = media.strip().lower()
        if media not in ("text/csv", "application/json"):
            continue
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 0.0
                if not 0.0 <= weight <= 1.0:  # also NaN: not a q-value, not acceptable
                    weight = 0.0
        best[media] = max(best.get(media, (0.0, 0)), (weight, -position))
    csv_rank = best.get("text/csv", (0.0, 0))
    return csv_rank[0] > 0 and csv_rank > best.get("application/json", (0.0, -1 << 30))


# -- writing ---------------------------------------------------------------------------

def _other(value: Any) -> str | None:
    text = values.dumps(value)  # floats as JSON spells them; NaN is null there too
    if text == "null":
        return None
    if text.startswith('"'):  # a value the column encoder left to the JSON fallback
        return json.loads(text)
    return text


# A value's text by its type (objects and arrays are their JSON text); _other for the rest.
_BY_TYPE: dict[type, Callable[[Any], str | None]] = {
    str: str, type(None): lambda value: None, int: str,
    bool: lambda value: "true" if value else "false", dict: values.dumps, list: values.dumps}
# What csv's minimal quoting quotes (the delimiter, the quote, line ends).
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


def cell(value: Any) -> str | None:
    """A record's value as CSV text, as the JSON answer gives it; None for null (an
    empty field)."""
    return _BY_TYPE.get(type(value), _other)(value)


class CsvWriter:
    """Rows as RFC 4180 text (CRLF line ends), quoted by the csv module as needed.

    An empty string is always quoted (``""``) and null is an empty field, so the two
    differ (as in PostgreSQL's CSV); csv's minimal quoting alone would write both
    as nothing. A row of one null field is an empty line.
    """

    def __init__(self) -> None:
        self._out = io.StringIO()
        self._writer = csv.writer(self._out, lineterminator="\r\n")
        self._one = io.StringIO()
        self._single = csv.writer(self._one, lineterminator="\r\n")

    def row(self, cells: list[str | None]) -> None:
        if "" in cells or (len(cells) == 1 and cells[0] is None):
            self._out.write(",".join(self._field(text) for text in cells) + "\r\n")
        else:
            self._writer.writerow(cells)

    def records(self, names: list[str], records: list[dict[str, Any]]) -> None:
        row, convert = self.row, _BY_TYPE.get
        for record in records:
            # cell() inlined: an export is millions of values, and a call per value
            # costs about as much as writing it.
            row([convert(type(value), _other)(value) for value in map(record.get, names)])

    def _field(self, text: str | None) -> str:
        if text is None:
            return ""
        if text == "":
            return '""'
        if _NEEDS_QUOTES.search(text) is None:
            return text
        # csv quotes a field the same way alone as within a row.
        self._one.seek(0)
        self._one.truncate()
        self._single.writerow([text])
        return self._one.getvalue()[:-2]

    def take(self) -> bytes:
        """The text written since the last take, as UTF-8."""
        text = self._out.getvalue()
        self._out.seek(0)
        self._out.truncate()
        return text.encode("utf-8")


def _names(table: TableInfo, q: ql.ListQuery, page: Page) -> list[str]:
    """The header: the columns of the records (select, embeds), or of the query."""
    if page.items:
        return list(page.items[0])
    return q.select or list(table.columns)


def _start(handler: BaseHandler, page: Page) -> None:
    handler._cors()
    handler.set_header("Content-Type", CONTENT_TYPE)
    # The same URL answers JSON or CSV by Accept: caches must keep them apart.
    handler.add_header("Vary", "Accept")
    if page.total is not None:
        handler.set_header("Pylight-Total", str(page.total))


def write_page(handler: BaseHandler, table: TableInfo, q: ql.ListQuery, page: Page,
               next_url: str | None) -> None:
    """Answer one page as CSV; its next link goes in a ``Link`` header."""
    names = _names(table, q, page)
    writer = CsvWriter()
    writer.row(list(names))
    writer.records(names, page.items)
    _start(handler, page)
    if next_url is not None:
        handler.set_header("Link", f'<{next_url}>; rel="next"')
    handler.finish(writer.take())


async def stream_all(handler: BaseHandler, table: TableInfo, q: ql.ListQuery,
                     fetch: Callable[[ql.ListQuery], Awaitable[Page]], page_size: int) -> None:
    """Answer every row ``q`` matches as CSV, read and sent a keyset page at a time.

    Each page is its own query, written and flushed to the client before the next is
    read, so the server holds one page at a time whatever the table's size and however
    slowly the client reads. An error on the first page is an ordinary JSON error; a
    later one closes the connection without the chunked body's end, so a client never
    takes a cut-off export for a whole one.
    """
    q.limit = page_size
    page = await fetch(q)
    names = _names(table, q, page)
    _start(handler, page)
    writer = CsvWriter()
    writer.row(list(names))
    while True:
        writer.records(names, page.items)
        handler.write(writer.take())
        try:
            await handler.flush()
        except StreamClosedError:
            return  # the client went away
        if page.after is None and page.next_offset is None:
            break
        try:
            page = await fetch(_following(table, q, page))
        except Exception as exc:  # past the headers no error can be answered: cut it off
            if isinstance(exc, ApiError):
                log.warning("CSV export of %r cut off: %s", table.name, exc.message)
            else:
                log.exception("CSV export of %r cut off", table.name)
            handler.request.connection.close()
            return
    handler.finish()


def _following(table: TableInfo, q: ql.ListQuery, page: Page) -> ql.ListQuery:
    """``q`` moved on to the page after ``page``, as its next link would (count once)."""
    q.count = False
    if page.after is not None:
        q.after = ql.decode_cursor(table, q, page.after)
    else:
        q.offset = page.next_offset or 0
    return q
