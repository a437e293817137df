"""The query language: parsed and validated once, compiled to SQL or evaluated on a record.

REST lists and WebSocket subscriptions both go through :func:`parse_filters`,
so a filter means the same thing in both places. Every column name is checked
against the table, every value is coerced to its column's type, and values
only ever reach SQL as bound parameters.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import peewee

from pylight import values
from pylight.backend import Backend
from pylight.errors import bad_request
from pylight.schema import ColumnInfo, TableInfo

COMPARISONS = ("eq", "neq", "gt", "gte", "lt", "lte")
OPERATORS = (*COMPARISONS, "like", "ilike", "in", "is")
LIST_PARAMS = ("order", "limit", "offset", "select", "after", "count", "or", "and")
TEXT_KINDS = ("text", "uuid", "any")
MAX_CONDITIONS = 100
MAX_IN_VALUES = 1000


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: Any  # coerced Python value; a tuple for `in`; None/True/False for `is`
    negate: bool = False


@dataclass(frozen=True)
class Group:
    """All (``any_of=False``) or any (``any_of=True``) of the members hold."""

    members: tuple[Filter, ...]
    any_of: bool = False
    negate: bool = False


Filter = Condition | Group


@dataclass(frozen=True)
class OrderBy:
    column: str
    descending: bool = False
    nulls: str | None = None  # "first", "last" or None for the database default
    exact: bool = False  # a tie-breaker: text compared byte by byte, whatever the collation


@dataclass
class EmbedSpec:
    """``alias:table!hint(select)`` in a select: related rows to embed, as written.

    :mod:`pylight.embed` finds the table and the foreign key; ``arguments`` are the
    request's parameters given by the embed's prefix (``orders.limit=5`` as
    ``{"limit": [...]}``), nested embeds' ones still prefixed.
    """

    table: str
    alias: str | None
    hints: tuple[str, ...]
    select: str
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The embed's key in each record, and the prefix of its parameters."""
        return self.alias or self.table


@dataclass
class ListQuery:
    where: Group
    order: list[OrderBy]
    limit: int
    offset: int = 0
    select: list[str] = field(default_factory=list)
    after: list[Any] | None = None
    count: bool = False
    #: Related rows named in ``select`` (see pylight.embed).
    embeds: list[EmbedSpec] = field(default_factory=list)


# -- parsing ------------------------------------------------------------------

def _first(raw: Any, param: str) -> str:
    # A 400 naming the parameter (a bare ValueError here was a 500 for
    # `count=true&count=false` and `after=..&after=..`).
    if isinstance(raw, (list, tuple)):
        if len(raw) != 1:
            raise bad_request(f"{param}: given more than once", parameter=param)
        raw = raw[0]
    return _text(raw, param)


def _all(raw: Any, param: str) -> list[str]:
    items = raw if isinstance(raw, (list, tuple)) else [raw]
    return [_text(item, param) for item in items]


def _text(raw: Any, param: str) -> str:
    # Percent-decoded query values are bytes and need not be UTF-8 (`?name=%FF`):
    # a 400, not a UnicodeDecodeError (found by tests/test_properties.py).
    if not isinstance(raw, bytes):
        return str(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"{param[:64]}: not valid UTF-8", parameter=param[:64]) from None


def _column(table: TableInfo, name: str, param: str) -> ColumnInfo:
    column = table.columns.get(name)
    if column is None:
        raise bad_request(f"{param}: unknown column {name[:64]!r} in table {table.name!r}",
                          parameter=param)
    return column


def _value(column: ColumnInfo, text: str, param: str) -> Any:
    try:
        return column.coerce(values.from_text(column.kind, text))
    except values.BadValue as exc:
        raise bad_request(f"{param}: {exc} for column {column.name!r}", parameter=param) from None


def _split_top(text: str, param: str) -> list[str]:
    """Split on commas outside parentheses and double quotes."""
    parts, depth, quoted, current = [], 0, False, []
    chars = iter(text)
    for ch in chars:
        if quoted:
            current.append(ch)
            if ch == "\\":
                current.append(next(chars, ""))
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
            current.append(ch)
        elif ch == "(":
            depth += 1
            current.append(ch)
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise bad_request(f"{param}: unbalanced parentheses", parameter=param)
            current.append(ch)
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted or depth:
        raise bad_request(f"{param}: unbalanced quotes or parentheses", parameter=param)
    parts.append("".join(current))
    return parts


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def _condition(table: TableInfo, name: str, spec: str, param: str, explicit: bool) -> Condition:
    """``name`` compared as ``spec`` says (``op.value``, ``not.op.value`` or a plain value)."""
    column = _column(table, name, param)
    negate = False
    rest = spec
    head, dot, tail = rest.partition(".")
    if head == "not" and dot and tail.partition(".")[0] in OPERATORS and tail.partition(".")[1]:
        negate, rest = True, tail
        head, dot, tail = rest.partition(".")
    if dot and head in OPERATORS:
        op, text = head, tail
    elif explicit:
        raise bad_request(
            f"{param}: expected column.operator.value with an operator among "
            f"{', '.join(OPERATORS)}", parameter=param)
    else:
        op, text = "eq", spec
    kind = column.kind
    if kind == "json" and column.compare is None and op != "is":
        raise bad_request(f"{param}: JSON column {name!r} can only be tested with is.null",
                          parameter=param)
    if op in ("gt", "gte", "lt", "lte") and not column.range_filters:
        raise bad_request(f"{param}: {name!r} ({column.raw_type}) takes eq, neq, in, is and "
                          "like, not gt/gte/lt/lte: its order is the database's own",
                          parameter=param)
    if op == "is":
        if text.lower() == "null":
            return Condition(name, "is", None, negate)
        truth = values.query_boolean(text)
        if truth is not None and kind == "boolean":
            return Condition(name, "is", truth, negate)
        raise bad_request(f"{param}: is takes null (or true/false on a boolean column)",
                          parameter=param)
    if op in ("like", "ilike"):
        if "\x00" in text:
            raise bad_request(f"{param}: a pattern may not contain NUL characters",
                              parameter=param)
        if kind not in TEXT_KINDS and not column.like_as_text:
            raise bad_request(f"{param}: {op} works on text columns, {name!r} is {kind}",
                              parameter=param)
        return Condition(name, op, text, negate)
    if op == "in":
        if not (text.startswith("(") and text.endswith(")")):
            raise bad_request(f"{param}: in takes a list in parentheses, e.g. in.(1,2,3)",
                              parameter=param)
        inner = text[1:-1]
        items = [_unquote(item) for item in _split_top(inner, param)] if inner else []
        if len(items) > MAX_IN_VALUES:
            raise bad_request(f"{param}: at most {MAX_IN_VALUES} values in a list",
                              parameter=param)
        return Condition(name, "in", tuple(_value(column, item, param) for item in items), negate)
    if kind == "binary" and op not in ("eq", "neq"):
        raise bad_request(f"{param}: binary columns support eq, neq, in and is", parameter=param)
    return Condition(name, op, _value(column, text, param), negate)


def _logic(table: TableInfo, text: str, any_of: bool, param: str, depth: int = 0) -> Group:
    """``(cond,cond,and(cond,cond))`` in PostgREST's grammar."""
    if depth > 8:
        raise bad_request(f"{param}: nested too deeply", parameter=param)
    if not (text.startswith("(") and text.endswith(")")):
        raise bad_request(f"{param}: expected a parenthesised list, e.g. (price.lt.5,id.eq.1)",
                          parameter=param)
    members: list[Filter] = []
    for part in _split_top(text[1:-1], param):
        part = part.strip()
        negate = False
        if part.startswith("not.") and part[4:].startswith(("and(", "or(")):
            negate, part = True, part[4:]
        for word, nested_any in (("and", False), ("or", True)):
            if part.startswith(word + "("):
                group = _logic(table, part[len(word):], nested_any, param, depth + 1)
                members.append(Group(group.members, nested_any, negate))
                break
        else:
            name, dot, spec = part.partition(".")
            if not dot:
                raise bad_request(f"{param}: expected column.operator.value, got {part[:64]!r}",
                                  parameter=param)
            condition = _condition(table, name, spec, param, explicit=True)
            if condition.op in ("like", "ilike"):
                # A quoted pattern is unquoted too (PostgREST's grammar): without it a
                # pattern holding a comma or ending in a space could not be written
                # here, the quotes stayed in the pattern. Found by test_properties.py.
                condition = Condition(condition.column, condition.op,
                                      _unquote(condition.value), condition.negate)
            elif condition.op != "is" and isinstance(condition.value, str):
                condition = Condition(condition.column, condition.op,
                                      _unquote_value(table, condition), condition.negate)
            members.append(condition)
    if not members:
        raise bad_request(f"{param}: the list is empty", parameter=param)
    return Group(tuple(members), any_of)


def _unquote_value(table: TableInfo, condition: Condition) -> Any:
    value = condition.value
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return table.columns[condition.column].coerce(_unquote(value))
    return value


def _operator_first(text: str) -> bool:
    """Whether ``text`` starts with an operator and a dot (``eq.3``, ``not.is.null``)."""
    head, dot, tail = text.partition(".")
    if head == "not":
        head, dot, _ = tail.partition(".")
    return bool(dot) and head in OPERATORS


def split_arguments(table: TableInfo, arguments: Mapping[str, Any],
                    reserved: Iterable[str]) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """``(column filters, parameters)`` of a query.

    A name among ``reserved`` (``order``, ``limit``, ``token``...) is the
    parameter, unless the table has a column of that name and the value starts
    with an operator and a dot: ``order=eq.3`` filters a column named "order".
    """
    filters: dict[str, list[str]] = {}
    params: dict[str, Any] = {}
    reserved = set(reserved)
    for name, raw in arguments.items():
        if name not in reserved:
            filters[name] = _all(raw, name)
            continue
        if name not in table.columns:
            params[name] = raw
            continue
        for text in _all(raw, name):
            if _operator_first(text):
                filters.setdefault(name, []).append(text)
            else:
                params.setdefault(name, []).append(text)
    return filters, params


def parse_filters(table: TableInfo, arguments: Mapping[str, Any],
                  ignore: Iterable[str] = ()) -> Group:
    """The filters among ``arguments`` (a query's parameters) as one AND group."""
    members: list[Filter] = []
    filters, params = split_arguments(table, arguments, [*ignore, *LIST_PARAMS])
    for name in ("or", "and"):
        for text in _all(params.get(name, []), name):
            members.append(_logic(table, text.strip(), name == "or", name))
    for name, texts in filters.items():
        for text in texts:
            members.append(_condition(table, name, text, name, explicit=False))
    if _count(members) > MAX_CONDITIONS:
        raise bad_request(f"too many conditions (at most {MAX_CONDITIONS})")
    return Group(tuple(members))


def _count(members: Iterable[Filter]) -> int:
    return sum(_count(m.members) if isinstance(m, Group) else 1 for m in members)


def _int_param(arguments: Mapping[str, Any], name: str) -> int | None:
    if name not in arguments:
        return None
    text = _first(arguments[name], name)
    # isascii(): str.isdigit() also accepts digits like "²" that int() refuses.
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise bad_request(f"{name}: expected a whole number >= 0, got {text[:40]!r}",
                          parameter=name)
    return int(text)


def parse_list_query(table: TableInfo, arguments: Mapping[str, Any], default_limit: int,
                     max_limit: int, ignore: Iterable[str] = ()) -> ListQuery:
    """A list request's parameters, validated against ``table``."""
    select, embeds = parse_select(table, arguments)
    if embeds:  # the embeds' own parameters (orders.limit=5) are theirs
        arguments = {name: raw for name, raw in arguments.items()
                     if _embed_of(table, name, embeds) is None}
    where = parse_filters(table, arguments, ignore)
    _, arguments = split_arguments(table, arguments, LIST_PARAMS)
    limit = _int_param(arguments, "limit")
    limit = default_limit if limit is None else min(limit, max_limit)
    offset = _int_param(arguments, "offset") or 0

    order: list[OrderBy] = []
    if "order" in arguments:
        for text in _all(arguments["order"], "order"):
            for item in text.split(","):
                order.append(_order_item(table, item.strip()))
    count = False
    if "count" in arguments:
        truth = values.query_boolean(_first(arguments["count"], "count"))
        if truth is None:
            raise bad_request("count: expected true or false", parameter="count")
        count = truth
    query = ListQuery(where, order, limit, offset, select, None, count, embeds)
    if "after" in arguments:
        if offset:
            raise bad_request("after: use either after or offset, not both", parameter="after")
        query.after = decode_cursor(table, query, _first(arguments["after"], "after"))
    return query


def parse_select(table: TableInfo, arguments: Mapping[str, Any]
                 ) -> tuple[list[str], list[EmbedSpec]]:
    """``select``: the columns it names (none: every column), and the related rows it
    embeds (``users(name)``, ``customer:users!buyer_id(*)``, see pylight.embed)."""
    _, params = split_arguments(table, arguments, ("select",))
    if "select" not in params:
        return [], []
    columns: list[str] = []
    embeds: list[EmbedSpec] = []
    for text in _all(params["select"], "select"):
        for item in _select_items(table, text):
            if item == "*":
                columns.extend(table.columns)
            elif item in table.columns:
                columns.append(item)
            elif item.endswith(")") and "(" in item:
                embeds.append(_embed_spec(item))
            elif item:
                _column(table, item, "select")
    columns = list(dict.fromkeys(columns))
    if not columns and not embeds:
        raise bad_request("select: name at least one column", parameter="select")
    seen = set(columns)
    for embed in embeds:
        if embed.key in seen:
            raise bad_request(f"select: {embed.key[:64]!r} is named twice (a column or another "
                              f"embed); give the embed an alias: other:{embed.table[:64]}(...)",
                              parameter="select")
        seen.add(embed.key)
    for name, raw in arguments.items():
        owner = _embed_of(table, name, embeds)
        if owner is not None:
            owner.arguments[name[len(owner.key) + 1:]] = raw
    return columns, embeds


def _select_items(table: TableInfo, text: str) -> list[str]:
    """The items of one select, split on the commas outside parentheses."""
    parts = [part.strip() for part in text.split(",")]
    if all(part in ("*", "") or part in table.columns for part in parts):
        return parts  # columns only (a column may be named "a(b")
    items, current, depth = [], [], 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            break
        if ch == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if depth:
        raise bad_request("select: unbalanced parentheses", parameter="select")
    items.append("".join(current).strip())
    return items


def _embed_spec(item: str) -> EmbedSpec:
    """``alias:table!hint!hint(select)`` as written; the table is found later."""
    head, _, inner = item[:-1].partition("(")
    alias: str | None = None
    if ":" in head:
        alias, _, head = (part.strip() for part in head.partition(":"))
    name, *hints = (part.strip() for part in head.split("!"))
    if alias is not None and (not alias or any(ch in alias for ch in "!.")):
        raise bad_request(f"select: {item[:64]!r}: an alias is a name without '!' or '.' "
                          "before the table, e.g. customer:users(name)", parameter="select")
    if not name or not all(hints):
        raise bad_request(f"select: expected table(columns), alias:table(columns) or "
                          f"table!fk_column(columns), got {item[:64]!r}", parameter="select")
    return EmbedSpec(name, alias, tuple(hints), inner)


def _embed_of(table: TableInfo, name: str, embeds: list[EmbedSpec]) -> EmbedSpec | None:
    """The embed a parameter belongs to by its prefix (``orders.limit``: ``orders``);
    None for a column's own name, which stays a filter."""
    if name in table.columns:
        return None
    owners = [embed for embed in embeds if name.startswith(embed.key + ".")]
    return max(owners, key=lambda embed: len(embed.key)) if owners else None


def _order_item(table: TableInfo, item: str) -> OrderBy:
    parts = item.split(".")
    column = _column(table, parts[0], "order")
    if not column.orderable:
        raise bad_request(f"order: the database cannot order by {column.name!r} "
                          f"({column.raw_type})", parameter="order")
    descending, nulls = False, None
    for word in parts[1:]:
        if word in ("asc", "desc"):
            descending = word == "desc"
        elif word in ("nullsfirst", "nullslast"):
            nulls = word[5:]
        else:
            raise bad_request(
                f"order: {word[:32]!r} is not asc, desc, nullsfirst or nullslast",
                parameter="order")
    return OrderBy(parts[0], descending, nulls)


# -- keyset cursors --------------------------------------------------------------
#
# Paging is exact by construction: the order a request names is always
# completed to a total order (the key breaks ties; without a key every
# orderable column does), and the cursor holds the last row's values of that
# whole order, NULLs included. A table with a key pages by cursor whatever the
# order; only tables without one (and views) page by offset, over the total order.

def full_order(table: TableInfo, order: list[OrderBy]) -> list[OrderBy]:
    """``order`` completed with tie-breakers so that no two distinct rows compare equal."""
    named = {item.column for item in order}
    if table.primary_key:
        return list(order) + [OrderBy(name) for name in table.primary_key if name not in named]
    # Without a key every orderable column breaks ties, text byte by byte: under a
    # case-insensitive collation 'a' and 'A' would still tie.
    orderable = [name for name, column in table.columns.items() if column.orderable]
    return (list(order) + [OrderBy(name) for name in orderable if name not in named]
            + [OrderBy(name, exact=True) for name in orderable
               if table.columns[name].kind == "text"])


def keyset_order(table: TableInfo, query: ListQuery) -> list[OrderBy] | None:
    """The total order a cursor follows, or None where the table pages by offset."""
    if not table.has_key:
        return None
    return full_order(table, query.order)


def encode_cursor(record_values: list[Any]) -> str:
    raw = values.dumps(record_values).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(table: TableInfo, query: ListQuery, text: str) -> list[Any]:
    order = keyset_order(table, query)
    if order is None:
        raise bad_request("after: this table pages by offset, not by cursor", parameter="after")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        items = values.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad_request("after: not a cursor from a next link", parameter="after") from None
    if not isinstance(items, list) or len(items) != len(order):
        raise bad_request("after: the cursor does not match this order", parameter="after")
    decoded = []
    for item, value in zip(order, items, strict=True):
        column = table.columns[item.column]
        if value is None and not column.nullable:
            raise bad_request("after: the cursor does not match this table", parameter="after")
        try:
            decoded.append(None if value is None else column.coerce(value))
        except values.BadValue:
            # A value the column would not accept from a client, but holds (SQLite
            # keeps any value in any column): a cursor carries it as it was read.
            if not column.loose or not isinstance(value, (str, int, float)):
                raise bad_request("after: the cursor does not match this table",
                                  parameter="after") from None
            decoded.append(value)
    return decoded


# -- SQL -----------------------------------------------------------------------

def like_pattern(text: str) -> str:
    """Our ``*`` wildcard pattern as a SQL LIKE pattern with backslash escapes."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def to_sql(table: TableInfo, backend: Backend, node: Filter) -> Any:
    """A peewee expression for ``node``; None when it has no conditions."""
    if isinstance(node, Group):
        parts = [p for p in (to_sql(table, backend, m) for m in node.members) if p is not None]
        if not parts:
            expression = None
        elif len(parts) == 1:
            expression = parts[0]
        else:
            # One flat list, not peewee's nested (a OR b) OR c: a hundred nested
            # parentheses overflow SQLite's parser stack.
            glue = " OR " if node.any_of else " AND "
            expression = peewee.NodeList(parts, glue=glue, parens=True)
        if expression is not None and node.negate:
            expression = ~expression
        return expression
    column = table.columns[node.column]
    fld = column.field
    op, value = node.op, node.value
    if op not in ("like", "ilike", "is"):
        if column.compare is not None:
            fld = column.compare(fld)
        value = ([_operand(column, item) for item in value] if op == "in"
                 else _operand(column, value))
    if op == "eq":
        expression = fld == value
    elif op == "neq":
        expression = fld != value
    elif op == "gt":
        expression = fld > value
    elif op == "gte":
        expression = fld >= value
    elif op == "lt":
        expression = fld < value
    elif op == "lte":
        expression = fld <= value
    elif op in ("like", "ilike"):
        target = peewee.Cast(fld, "text") if column.like_as_text else fld
        expression = backend.like(target, like_pattern(value), op == "ilike")
    elif op == "in":
        expression = fld.in_(list(value)) if value else peewee.SQL("1 = 0")
    elif value is None:
        expression = fld.is_null()
    else:
        expression = peewee.Expression(fld, "IS", peewee.SQL("TRUE" if value else "FALSE"))
    return ~expression if node.negate else expression


def _nulls_last(table: TableInfo, item: OrderBy) -> bool:
    """Whether NULLs come after every value in this order item, as the database sorts."""
    if item.nulls is not None:
        return item.nulls == "last"
    return table.nulls_sort_high != item.descending


def _operand(column: ColumnInfo, value: Any) -> Any:
    """The right-hand side of a comparison with ``column``.

    Where the backend compares the type through an expression (text, jsonb),
    the value goes through it too; a list (an array value) is bound as one
    value, not spread into a row as peewee would.
    """
    if column.compare is None and not isinstance(value, list):
        return value
    bound = peewee.Value(column.field.db_value(value), converter=False)
    return bound if column.compare is None else column.compare(bound)


def keyset_condition(table: TableInfo, order: list[OrderBy], after: list[Any]) -> Any:
    """Rows strictly after the cursor in ``order``: (a > x) OR (a = x AND b > y) ...

    NULL-aware: a NULL in the cursor, or NULLs in a column, compare as the
    database sorts them (where the order puts NULLs last, NULL is after every
    value; where first, before).
    """
    expression = None
    equal_so_far: Any = None
    for item, value in zip(order, after, strict=True):
        column = table.columns[item.column]
        fld = sort_expression(column)
        value = _sort_value(column, value)
        nulls_last = _nulls_last(table, item)
        if value is None:
            after_step = None if nulls_last else fld.is_null(False)
            equal = fld.is_null()
        else:
            after_step = (fld < value) if item.descending else (fld > value)
            if nulls_last and column.nullable:
                after_step = after_step | fld.is_null()
            equal = fld == value
        if after_step is not None:
            step = after_step if equal_so_far is None else (equal_so_far & after_step)
            expression = step if expression is None else (expression | step)
        equal_so_far = equal if equal_so_far is None else (equal_so_far & equal)
    return expression if expression is not None else peewee.SQL("1 = 0")


def sort_expression(column: ColumnInfo) -> Any:
    """What ``column`` is ordered by: the expression its filters compare (the column
    itself for most types), unless its type orders by something else (a MySQL ENUM
    by its member index). Cursors compare through the same expression."""
    if column.sort_key is not None:
        return column.sort_key.expression(column.field)
    return column.field if column.compare is None else column.compare(column.field)


def _sort_value(column: ColumnInfo, value: Any) -> Any:
    """The cursor's side of a keyset comparison (``value`` may be a statement slot)."""
    if value is None:
        return None
    if column.sort_key is not None:
        return value if isinstance(value, peewee.Node) else column.sort_key.value(value)
    if column.compare is None and not isinstance(value, list):
        return value
    node = value if isinstance(value, peewee.Node) else peewee.Value(
        column.field.db_value(value), converter=False)  # an array value is bound whole
    # As the column's type compares it (a MySQL FLOAT with a FLOAT, not a double).
    return node if column.compare is None else column.compare(node)


def bound_sort_value(column: ColumnInfo, value: Any) -> Any:
    """What the driver binds for a cursor value of ``column`` (see keyset_condition)."""
    if column.sort_key is not None:
        return column.sort_key.value(value)
    return column.field.db_value(value)


def order_sql(table: TableInfo, order: list[OrderBy]) -> list[Any]:
    result = []
    for item in order:
        fld = sort_expression(table.columns[item.column])
        if item.exact:
            fld = table.exact_text(fld)
        result.append(fld.desc(nulls=item.nulls) if item.descending else fld.asc(nulls=item.nulls))
    return result


def query_string(table: TableInfo, arguments: Mapping[str, Any], **changes: Any) -> str:
    """The request's parameters with ``changes`` applied, for `next` links (a filter on
    a column named like a changed parameter stays)."""
    from urllib.parse import urlencode

    filters, _ = split_arguments(table, arguments, changes)
    pairs: list[tuple[str, str]] = []
    for name, texts in filters.items():
        pairs.extend((name, text) for text in texts)
    pairs.extend((name, str(value)) for name, value in changes.items() if value is not None)
    return urlencode(pairs)


# -- evaluation on a record (WebSocket filters) ------------------------------------
#
# The same filter, evaluated in Python on a change's record, must agree with
# what the SQL above returns for that row: NULL makes a comparison unknown
# (None) and `not` of unknown stays unknown, as in SQL's three-valued logic.


def _like_regex(pattern: str, case_insensitive: bool) -> re.Pattern[str]:
    body = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.compile(body, re.DOTALL | (re.IGNORECASE if case_insensitive else 0))


def _ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}


class Matcher:
    """Evaluates a parsed filter on JSON records of one table, the way the backend's SQL does."""

    def __init__(self, table: TableInfo, where: Group, backend: Backend) -> None:
        self.table = table
        self.where = where
        self.ascii_ilike = getattr(backend, "ilike_ascii_only", False)
        self.fold_text = getattr(backend, "text_compare_case_insensitive", False)
        self._regex: dict[tuple[str, bool], re.Pattern[str]] = {}

    def __call__(self, record: dict[str, Any] | None) -> bool:
        if record is None:
            return False
        return self._eval(self.where, record) is True

    def _eval(self, node: Filter, record: dict[str, Any]) -> bool | None:
        if isinstance(node, Group):
            results = [self._eval(member, record) for member in node.members]
            if node.any_of:
                value = True if True in results else (None if None in results else False)
            else:
                value = False if False in results else (None if None in results else True)
            if not node.members:
                value = True
            return _negate(value) if node.negate else value
        value = self._condition(node, record)
        return _negate(value) if node.negate else value

    def comparable(self, name: str, raw: Any) -> Any:
        """A JSON value of column ``name`` as the database compares it (equal values,
        equal results: keys of related rows are matched by it)."""
        return self._python(name, raw)

    def _python(self, name: str, raw: Any) -> Any:
        column = self.table.columns[name]
        try:
            value = column.coerce(raw)
        except values.BadValue:
            value = raw  # a value of another type than the column declares (SQLite)
        return self._fold(name, value)

    def _condition(self, node: Condition, record: dict[str, Any]) -> bool | None:
        if node.column not in record:
            return None
        raw = record[node.column]
        if node.op == "is":
            if node.value is None:
                return raw is None
            # `x IS TRUE` / `IS FALSE` is never unknown in SQL: false for NULL, so that
            # `not.is.true` holds for NULL rows (it was unknown here, REST returned them).
            return raw is not None and bool(raw) is node.value
        if raw is None:
            return None
        if node.op in ("like", "ilike"):
            text = str(raw)
            case_insensitive = node.op == "ilike"
            if case_insensitive and self.ascii_ilike:
                text, pattern = _ascii_lower(text), _ascii_lower(node.value)
                case_insensitive = False
            else:
                pattern = node.value
            key = (pattern, case_insensitive)
            regex = self._regex.get(key)
            if regex is None:
                regex = self._regex[key] = _like_regex(pattern, case_insensitive)
            return regex.fullmatch(text) is not None
        value = self._python(node.column, raw)
        try:
            if node.op == "in":
                return any(value == self._fold(node.column, item) for item in node.value)
            target = self._fold(node.column, node.value)
            if node.op == "eq":
                return value == target
            if node.op == "neq":
                return value != target
            if node.op == "gt":
                return value > target
            if node.op == "gte":
                return value >= target
            if node.op == "lt":
                return value < target
            return value <= target
        except TypeError:
            return None

    def _fold(self, name: str, value: Any) -> Any:
        """``value`` as the database compares it for this column."""
        column = self.table.columns[name]
        if column.compare_key is not None:
            return column.compare_key(value)
        if self.fold_text and column.kind == "text" and isinstance(value, str):
            return _ci_key(value)
        return value


def _negate(value: bool | None) -> bool | None:
    return None if value is None else not value


# MySQL/MariaDB's default utf8mb4 collations (general_ci, and the *_ai_ci ones)
# ignore accents as well as case, compare by the upper-case base letter (so
# "_" sorts after "a") and ignore trailing spaces (PAD SPACE): "Éclair" equals
# "eclair" and sorts before "m". Lower-casing alone made a subscriber's filter
# disagree with the SQL of the same filter; this key approximates the collation.
_CI_SPECIAL = {"ß": "S"}


def _ci_key(text: str) -> str:
    import unicodedata

    base = "".join(ch for ch in unicodedata.normalize("NFD", text)
                   if not unicodedata.combining(ch))
    return "".join(_CI_SPECIAL.get(ch) or (ch.upper() if len(ch.upper()) == 1 else ch)
                   for ch in base).rstrip(" ")
