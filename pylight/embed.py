"""Related rows through foreign keys (API.md 7.1): ``select=id,users(name)`` planned,
authorised and read with one statement per embed for a whole page, never one per row.

A select names its embeds (:class:`pylight.query.EmbedSpec`); planning finds each
one's table and foreign key, parses its own parameters (``orders.limit=5``) as a
list query of that table, checks the caller may read it and adds the caller's row
filter, all before the page is read. A many-to-one embed of a page with nothing
below it is a LEFT JOIN in the page's own statement. Every other embed is one
statement over the keys of every row of the level above, once that is read:
``WHERE fk IN (...)`` for a many-to-one embed (an object, or null), and the same
with ``ROW_NUMBER() OVER (PARTITION BY fk ORDER BY ...)`` for a one-to-many embed
(an array), which keeps ``limit`` and ``offset`` per parent row in that one
statement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import peewee

from pylight import decoding, store, values
from pylight import query as ql
from pylight.errors import ApiError, bad_request
from pylight.types import ForeignKey

if TYPE_CHECKING:
    from pylight.auth import Auth, Identity
    from pylight.backend import Backend
    from pylight.config import ApiSettings
    from pylight.rows import Rows
    from pylight.schema import TableInfo

#: Embeds nest this deep at most (``a(b(c(...)))``).
MAX_DEPTH = 3
Record = dict[str, Any]


@dataclass(frozen=True)
class Link:
    """One way through a foreign key, from a table to a table it embeds."""

    key: ForeignKey
    many: bool  # one-to-many (an array); else many-to-one (an object or null)
    parent_columns: tuple[str, ...]  # the embedding table's side of the join
    child_columns: tuple[str, ...]  # the embedded table's side

    @property
    def cardinality(self) -> str:
        return "one-to-many" if self.many else "many-to-one"


def links(parent: TableInfo, child: TableInfo) -> list[Link]:
    """Every way ``parent`` can embed ``child``: its own keys into ``child`` (many-to-one)
    and ``child``'s keys into it (one-to-many). A key whose referenced columns are
    hidden is no way: the join would show their values."""
    found = [Link(fk, False, fk.columns, fk.references) for fk in parent.foreign_keys
             if fk.table == child.name and set(fk.references) <= set(child.columns)]
    found += [Link(fk, True, fk.references, fk.columns) for fk in child.foreign_keys
              if fk.table == parent.name and set(fk.references) <= set(parent.columns)]
    return list(dict.fromkeys(found))  # a constraint declared twice is one way


def embeddable(tables: dict[str, TableInfo], table: TableInfo) -> list[str]:
    """The tables ``table`` can embed (for the OpenAPI document)."""
    return [name for name, other in tables.items() if links(table, other)]


@dataclass
class Embed:
    """One planned embed: its table, the way to it, and what to read and show."""

    key: str
    table: TableInfo
    link: Link
    query: ql.ListQuery  # filters (with the caller's row filter), order, limit, offset
    embeds: list[Embed] = field(default_factory=list)

    @property
    def shown(self) -> list[str]:
        return self.query.select

    @property
    def fetch(self) -> list[str]:
        """The columns read: those shown, then the join columns (to the parent, and to
        the embeds below), which are dropped once matched."""
        joins = [*self.link.child_columns, *(n for e in self.embeds for n in e.link.parent_columns)]
        return list(dict.fromkeys([*self.shown, *joins]))


class Embedder:
    """Plans the embeds of one request and reads them (see the module's docstring)."""

    def __init__(self, tables: dict[str, TableInfo], rows: Rows, auth: Auth,
                 settings: ApiSettings, identity: Identity | None) -> None:
        self.tables = tables
        self.rows = rows
        self.auth = auth
        self.max_limit = settings.max_limit
        self.identity = identity

    async def plan(self, table: TableInfo, q: ql.ListQuery) -> Plan:
        """The embeds of ``q``, resolved and authorised; ``q.select`` gains the join
        columns the page must read for them."""
        if not q.embeds:
            return Plan(self.rows, [], q.select)
        embeds = [await self._embed(table, spec, spec.key, 1) for spec in q.embeds]
        shown = list(q.select)
        joins = [name for embed in embeds for name in embed.link.parent_columns]
        q.select = list(dict.fromkeys([*shown, *joins]))
        return Plan(self.rows, embeds, shown)

    async def item(self, table: TableInfo, record: Record, arguments: dict[str, Any]) -> Record:
        """One record (every column read) with the ``select`` of ``arguments`` applied."""
        columns, specs = ql.parse_select(table, arguments)
        if not specs:
            return {name: record[name] for name in columns} if columns else record
        q = ql.ListQuery(ql.Group(()), [], 1, select=columns, embeds=specs)
        plan = await self.plan(table, q)
        records = [record]
        await plan.attach(records)
        return records[0]

    async def _embed(self, parent: TableInfo, spec: ql.EmbedSpec, prefix: str,
                     depth: int) -> Embed:
        """``spec``, at ``depth``, planned; ``prefix`` is how the request names its
        parameters (``orders.products`` for ``products`` in ``orders``)."""
        if depth > MAX_DEPTH:
            raise bad_request(f"select: embeds nest at most {MAX_DEPTH} levels deep "
                              f"({spec.table[:64]!r} would be level {depth})",
                              parameter="select")
        child = self.tables.get(spec.table)
        if child is None:
            raise bad_request(f"select: no table named {spec.table[:64]!r} to embed",
                              parameter="select")
        link = choose_link(parent, child, spec)
        q = _embed_query(child, spec, link, prefix, self.max_limit)
        if self.auth.enabled:
            # Exactly as a read of the table itself: the read permission (401/403),
            # then the caller's row filter on the rows embedded.
            await self.auth.authorize(self.identity, "read", child.name)
            rows = self.auth.row_filter(self.identity, child)
            if rows is not None:
                q.where = ql.Group((q.where, rows))
        nested = [await self._embed(child, inner, f"{prefix}.{inner.key}", depth + 1)
                  for inner in q.embeds]
        return Embed(spec.key, child, link, q, nested)


def choose_link(parent: TableInfo, child: TableInfo, spec: ql.EmbedSpec) -> Link:
    """The one foreign key ``spec`` means; its hints (``!buyer_id``: a column of the key,
    ``!one``/``!many``: the direction) choose among several."""
    found = links(parent, child)
    if not found:
        raise bad_request(f"select: no foreign key links {parent.name!r} and {child.name!r}",
                          parameter="select")
    every = found
    for hint in spec.hints:
        if any(hint in link.key.columns for link in found):
            found = [link for link in found if hint in link.key.columns]
        elif hint in ("one", "many"):
            found = [link for link in found if link.many == (hint == "many")]
        else:
            found = []
        if not found:
            raise bad_request(
                f"select: {spec.table[:64]}!{hint[:64]}: no foreign key between "
                f"{parent.name!r} and {child.name!r} fits it; use one of "
                f"{', '.join(_hint(spec.table, link, every) for link in every)}",
                parameter="select", candidates=_candidates(spec.table, every))
    if len(found) > 1:
        raise bad_request(
            f"select: {spec.table[:64]!r} is linked to {parent.name!r} by more than one "
            f"foreign key; name one: {', '.join(_hint(spec.table, link, found) for link in found)}",
            parameter="select", candidates=_candidates(spec.table, found))
    return found[0]


def _hint(name: str, link: Link, among: list[Link]) -> str:
    """How a select names ``link`` apart from the others ``among``: a column of its key
    that no other key has, and its direction where the same key goes both ways (a key
    of a table to itself)."""
    others = [other for other in among if other.key != link.key]
    column = next((c for c in link.key.columns
                   if not any(c in other.key.columns for other in others)), link.key.columns[0])
    both_ways = any(other.key == link.key and other is not link for other in among)
    return f"{name}!{column}" + (("!many" if link.many else "!one") if both_ways else "")


def _candidates(name: str, found: list[Link]) -> list[dict[str, Any]]:
    return [{"embed": _hint(name, link, found), "cardinality": link.cardinality,
             **link.key.describe()} for link in found]


def _embed_query(child: TableInfo, spec: ql.EmbedSpec, link: Link, prefix: str,
                 max_limit: int) -> ql.ListQuery:
    """The embed's select and its own parameters as a list query of its table; an
    array holds up to ``max_limit`` rows per parent unless its ``limit`` says fewer."""
    refused = {"after": "not for embedded rows", "count": "not for embedded rows",
               "select": f"name the embedded columns in the select: {spec.key}(...)"}
    if not link.many:
        refused.update(dict.fromkeys(
            ("order", "limit", "offset"), f"{spec.table!r} is one row per parent (many-to-one)"))
    _, params = ql.split_arguments(child, spec.arguments, refused)
    for name, why in refused.items():
        if name in params:
            raise bad_request(f"{prefix}.{name}: {why}", parameter=f"{prefix}.{name}")
    arguments = dict(spec.arguments)
    # Any `select` left is a filter on a column named "select" (select=eq.3).
    kept = arguments.get("select", [])
    arguments["select"] = [*(kept if isinstance(kept, (list, tuple)) else [kept]), spec.select]
    try:
        return ql.parse_list_query(child, arguments, max_limit, max_limit)
    except ApiError as error:
        raise _prefixed(error, prefix) from None


def _prefixed(error: ApiError, prefix: str) -> ApiError:
    """An error about an embed's parameter, named as the request wrote it (``orders.limit``)."""
    parameter = error.details.get("parameter")
    if error.status != 400 or parameter is None or parameter == "select":
        return error  # a select error already names its table
    message = error.message
    if message.startswith(f"{parameter}:"):
        message = f"{prefix}.{message}"
    return bad_request(message, **{**error.details, "parameter": f"{prefix}.{parameter}"})


@dataclass
class Plan:
    """The planned embeds of one request, read once its page is."""

    rows: Rows
    embeds: list[Embed]
    shown: list[str]  # the page's columns to show; the others were read for the joins

    async def page(self, table: TableInfo, q: ql.ListQuery) -> store.Page:
        """A page of ``q`` (planned by :meth:`Embedder.plan`) with its embeds, read in
        one call to a worker thread."""
        if not self.embeds:
            return await self.rows.page(table, q)
        return await self.rows.database.read(self._page, table, q)

    def _page(self, table: TableInfo, q: ql.ListQuery) -> store.Page:
        backend = self.rows.backend
        joined = _joinable(table, self.embeds)
        page = store.list_rows(table, backend, q, [
            store.Joined(embed.key, embed.table, embed.link.parent_columns,
                         embed.link.child_columns, tuple(embed.shown), embed.query.where)
            for embed in joined])
        rest = [embed for embed in self.embeds if embed not in joined]
        if page.items and rest:
            attach(rest, page.items, backend)
        added = [embed.key for embed in (*joined, *rest)]
        if len(q.select) == len(self.shown) and added == [embed.key for embed in self.embeds]:
            # Every column read is shown (the join columns were selected anyway), in
            # that order, followed by the embeds in the select's order: nothing to drop.
            return page
        page.items[:] = [_shown(record, self.shown, self.embeds) for record in page.items]
        return page

    async def attach(self, records: list[Record]) -> None:
        """Add every embed to ``records`` (in place), then drop the join columns."""
        if records:
            await self.rows.database.read(attach, self.embeds, records, self.rows.backend)
        records[:] = [_shown(record, self.shown, self.embeds) for record in records]


def _joinable(table: TableInfo, embeds: list[Embed]) -> list[Embed]:
    """The embeds read by a LEFT JOIN in the page's own statement: many-to-one (at
    most one related row per row, so the page's rows are not multiplied), with no
    embeds of their own, of another table than the page's and of a table no other
    joined embed reads (the join names each table once), under a key that is not
    one of the page's columns."""
    joined: list[Embed] = []
    for embed in embeds:
        if (not embed.link.many and not embed.embeds and embed.table.name != table.name
                and embed.key not in table.columns
                and all(other.table.name != embed.table.name for other in joined)):
            joined.append(embed)
    return joined


def _shown(record: Record, shown: list[str], embeds: list[Embed]) -> Record:
    result = {name: record[name] for name in shown}
    for embed in embeds:
        result[embed.key] = record[embed.key]
    return result


# -- reading (in a worker thread) -----------------------------------------------------------

def attach(embeds: list[Embed], records: list[Record], backend: Backend) -> None:
    """Set each embed's key on each of ``records``: one statement per embed. All are
    read before any is set: an embed may be named like a join column of another."""
    found = [_embedded(embed, records, backend) for embed in embeds]
    for embed, per_record in zip(embeds, found, strict=True):
        for record, value in zip(records, per_record, strict=True):
            record[embed.key] = value


def _embedded(embed: Embed, parents: list[Record], backend: Backend) -> list[Any]:
    """What ``embed`` is for each of ``parents``: an object or None, or a list."""
    link, child = embed.link, embed.table
    matcher = ql.Matcher(child, ql.Group(()), backend)
    # Keys as the database compares them (a case-insensitive collation matches 'de'
    # with 'DE'), and the values to bind for them.
    parent_keys = _keys(matcher, link.child_columns,
                        [[p[n] for n in link.parent_columns] for p in parents])
    wanted: dict[Any, tuple[Any, ...] | None] = {}
    for parent, key in zip(parents, parent_keys, strict=True):
        if key is not None and key not in wanted:
            wanted[key] = _bound(child, link, [parent[n] for n in link.parent_columns])
    children = _read(embed, [v for v in wanted.values() if v is not None], backend)
    groups: dict[Any, list[Record]] = {}
    for row in children:
        key = _key(matcher, link.child_columns, [row[n] for n in link.child_columns])
        groups.setdefault(key, []).append(row)
    if embed.embeds:
        attach(embed.embeds, children, backend)
    for row in children:  # in place: a many-to-one row may be shared by several parents
        row_shown = _shown(row, embed.shown, embed.embeds)
        row.clear()
        row.update(row_shown)
    found = [groups.get(key, []) if key is not None else [] for key in parent_keys]
    return found if link.many else [rows[0] if rows else None for rows in found]


def _keys(matcher: ql.Matcher, columns: tuple[str, ...], raws: list[list[Any]]) -> list[Any]:
    """The join key of each of ``raws``, each distinct value worked out once (a page's
    parents mostly share a few related rows)."""
    known: dict[Any, Any] = {}
    keys = []
    for raw in raws:
        # The types are part of the memo's key: 1, 1.0 and True are equal in Python.
        memo = tuple((type(value), value) for value in raw)
        try:
            key = known[memo]
        except KeyError:
            key = known[memo] = _key(matcher, columns, raw)
        except TypeError:  # an unhashable value (an array or a document)
            key = _key(matcher, columns, raw)
        keys.append(key)
    return keys


def _key(matcher: ql.Matcher, columns: tuple[str, ...], raw: list[Any]) -> Any:
    """A join key as the database compares it; None where a column is NULL (no match)."""
    if any(value is None for value in raw):
        return None
    folded = tuple(matcher.comparable(name, value) for name, value in zip(columns, raw,
                                                                          strict=True))
    try:
        hash(folded)
    except TypeError:
        return values.dumps(list(folded))  # a key of arrays or documents
    return folded


def _bound(child: TableInfo, link: Link, raw: list[Any]) -> tuple[Any, ...] | None:
    """A parent's key values as the embedded columns take them (None: they cannot match)."""
    bound = []
    for name, value in zip(link.child_columns, raw, strict=True):
        column = child.columns[name]
        try:
            bound.append(column.coerce(value))
        except values.BadValue:
            if not column.loose:
                return None
            bound.append(value)  # SQLite keeps a value of any type in any column
    return tuple(bound)


def _read(embed: Embed, keys: list[tuple[Any, ...]], backend: Backend) -> list[Record]:
    """The embedded rows of every key, in one statement."""
    if not keys:
        return []
    child = embed.table
    sql, params = _statement(embed, keys, backend)
    rows = child.model._meta.database.execute_sql(sql, params).fetchall()
    decode = decoding.row_decoder(child, tuple(embed.fetch))
    return [decode(row) for row in rows]


def _statement(embed: Embed, keys: list[tuple[Any, ...]], backend: Backend) -> tuple[str, list[Any]]:
    child, link, q = embed.table, embed.link, embed.query
    columns = link.child_columns
    if len(columns) == 1:
        matching: ql.Filter = ql.Condition(columns[0], "in", tuple(key[0] for key in keys))
    else:
        matching = ql.Group(tuple(
            ql.Group(tuple(ql.Condition(name, "eq", value)
                           for name, value in zip(columns, key, strict=True)))
            for key in keys), any_of=True)
    where = ql.to_sql(child, backend, ql.Group((q.where, matching)))
    fields = [child.columns[name].selected for name in embed.fetch]
    if not link.many:
        # The referenced columns are unique: at most one row per key, no order needed.
        return child.model.select(*fields).where(where).sql()
    # One statement for every parent: rows numbered per parent in the embed's order
    # (made total by the key), the page of each parent cut by that number.
    number = peewee.fn.ROW_NUMBER().over(
        partition_by=[child.columns[name].field for name in columns],
        order_by=ql.order_sql(child, ql.full_order(child, q.order)))
    names = [f"c{i}" for i in range(len(fields))]
    inner = child.model.select(*[f.alias(n) for f, n in zip(fields, names, strict=True)],
                               number.alias("n")).where(where).alias("embedded")
    outer = peewee.Select([inner], [getattr(inner.c, n) for n in names])
    outer = outer.where(inner.c.n > q.offset, inner.c.n <= q.offset + q.limit)
    return outer.order_by(inner.c.n).bind(child.model._meta.database).sql()
