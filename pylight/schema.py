"""Reflects the database into per-table models and column descriptions, with table settings."""

from __future__ import annotations

import fnmatch
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import peewee
from playhouse.reflection import Introspector, UnknownField

from pylight import values
from pylight.backend import Backend
from pylight.config import Config
from pylight.errors import StartupError
from pylight.types import API_TYPES, ColumnType, DeclaredColumn, ForeignKey, SortKey

log = logging.getLogger("pylight")


@dataclass
class ColumnInfo:
    name: str
    field: peewee.Field
    kind: str
    nullable: bool
    default: str | None
    raw_type: str
    precision: int | None = None
    scale: int | None = None
    coerce: Callable[[Any], Any] = field(repr=False, default=lambda v: v)
    encode: Callable[[Any], Any] | None = field(repr=False, default=None)
    api_type: str = "any"
    read_only: str | None = None  # why the column cannot be written
    enum: tuple[str, ...] | None = None
    items: ColumnType | None = None  # the element type of an array column
    orderable: bool = True
    sort_key: SortKey | None = field(repr=False, default=None)
    compare: Callable[[Any], Any] | None = field(repr=False, default=None)
    like_as_text: bool = False
    bounds: tuple[int, int] | None = None
    read: Callable[[Any], Any] | None = field(repr=False, default=None)
    loose: bool = False  # values of any type are kept (see types.ColumnType)
    request_schema: dict[str, Any] | None = None  # what a write accepts (types.ColumnType)
    compare_key: Callable[[Any], Any] | None = field(repr=False, default=None)
    range_filters: bool = True  # gt/lt filters offered (see types.ColumnType)
    special_text: str | None = None  # texts kept as they are (see types.ColumnType)
    #: The values an integer column holds (its bounds, else its declared type's range).
    int_range: tuple[int, int] | None = None

    @property
    def selected(self) -> Any:
        """What a SELECT list reads for this column (the field, or the backend's wrapper)."""
        return self.field if self.read is None else self.read(self.field)

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "name": self.name,
            "type": self.api_type,
            "nullable": self.nullable,
            "default": self.default,
        }
        if self.enum is not None:
            described["enum"] = list(self.enum)
        if self.items is not None:
            described["items"] = _describe_items(self.items)
        if self.read_only is not None:
            described["read_only"] = True
        return described


def _describe_items(ctype: ColumnType) -> dict[str, Any]:
    described: dict[str, Any] = {"type": ctype.api_type or API_TYPES.get(ctype.kind or "", "any")}
    if ctype.enum is not None:
        described["enum"] = list(ctype.enum)
    if ctype.items is not None:
        described["items"] = _describe_items(ctype.items)
    return described


@dataclass
class TableInfo:
    name: str
    model: type[peewee.Model]
    columns: dict[str, ColumnInfo]  # visible columns only, in table order
    primary_key: list[str]
    is_view: bool = False
    read_only: bool = False
    hidden: frozenset[str] = frozenset()
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    #: NULL sorts after every value in ascending order (PostgreSQL), else before.
    nulls_sort_high: bool = False
    #: Text compared byte by byte (the backend's, for tie-breaking under a collation).
    exact_text: Callable[[Any], Any] = field(repr=False, default=lambda node: node)
    #: An array column may hold arrays of more dimensions than declared (PostgreSQL).
    arrays_nest: bool = False
    #: What the catalog says beyond reflection (writable tables; None: unreadable).
    declared: dict[str, DeclaredColumn] | None = None
    #: The column sets an upsert may name as its conflict (``on_conflict``): the key
    #: first, then the unique constraints and indexes over visible columns.
    unique_keys: list[tuple[str, ...]] = field(default_factory=list)
    #: Without a key: the system columns that tell its rows apart (backend.row_identity).
    row_identity: tuple[str, ...] = ()
    # Statements compiled once per table (see store.py), keyed by purpose.
    statements: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def writable(self) -> bool:
        return not (self.is_view or self.read_only)

    @property
    def has_key(self) -> bool:
        return bool(self.primary_key)

    def key_fields(self) -> list[peewee.Field]:
        return [self.columns[name].field for name in self.primary_key]

    def key_of(self, record: dict[str, Any]) -> Any:
        """The `pk` of a record as the contract sends it: a value, or a list for composite keys."""
        if len(self.primary_key) == 1:
            return record.get(self.primary_key[0])
        return [record.get(name) for name in self.primary_key]

    def encode_row(self, names: list[str], row: tuple[Any, ...]) -> dict[str, Any]:
        record = {}
        columns = self.columns
        for name, value in zip(names, row, strict=False):
            encode = columns[name].encode
            record[name] = value if value is None or encode is None else encode(value)
        return record


def _field_class(column: Any, metadata: Any, backend: Backend) -> type[peewee.Field]:
    cls = column.field_class
    hops = 0
    while cls is peewee.ForeignKeyField and hops < 10:
        # The value type of a reference is the type of the column it points to,
        # which may itself be a reference (a key made of references).
        fk = column.foreign_key
        column = metadata.columns.get(fk.dest_table, {}).get(fk.dest_column)
        cls = column.field_class if column is not None else peewee.BareField
        hops += 1
    if cls is peewee.ForeignKeyField:
        cls = peewee.BareField
    if cls is UnknownField or cls is peewee.BareField:
        cls = backend.field_for_unknown(column.raw_column_type) or peewee.BareField
    if cls is peewee.AutoField:
        cls = peewee.IntegerField
    elif cls is peewee.BigAutoField:
        cls = peewee.BigIntegerField
    return cls


def _has_time_zone(raw_type: str) -> bool:
    """PostgreSQL's timestamptz/timetz keep an offset; every other time column is naive."""
    lowered = raw_type.lower()
    return "with time zone" in lowered or lowered in ("timestamptz", "timetz")


def _with_conversion(cls: type[peewee.Field], ctype: ColumnType) -> type[peewee.Field]:
    """``cls``, or a subclass binding values through the backend's ``to_db``."""
    to_db = ctype.to_db
    if to_db is None:
        return cls

    def db_value(self: peewee.Field, value: Any) -> Any:
        if value is None or isinstance(value, peewee.Node):
            return value
        return to_db(value)
    return type(cls.__name__, (cls,), {"db_value": db_value})


def _column_info(name: str, column: Any, fld: peewee.Field, ctype: ColumnType,
                 numeric: tuple[int | None, int | None] | None, in_key: bool) -> ColumnInfo:
    kind = ctype.kind or values.kind_of(fld)
    precision, scale = numeric or (None, None)
    if kind == "decimal" and scale is None:
        precision = None
    raw_type = str(column.raw_column_type)
    return ColumnInfo(
        name=name,
        field=fld,
        kind=kind,
        nullable=bool(column.nullable) and not in_key,
        default=column.default,
        raw_type=raw_type,
        precision=precision,
        scale=scale,
        coerce=values.taking_text(ctype.special_text, ctype.coerce or values.coercer(
            kind, precision, scale, zoned=_has_time_zone(raw_type), enum=ctype.enum,
            items=ctype.items, bounds=ctype.bounds)),
        special_text=ctype.special_text,
        encode=ctype.encode or values.encoder(kind, scale, items=ctype.items),
        bounds=ctype.bounds,
        read=ctype.read,
        loose=ctype.loose,
        request_schema=ctype.request_schema,
        compare_key=ctype.compare_key,
        range_filters=ctype.range_filters and ctype.orderable and kind != "json",
        api_type=ctype.api_type or API_TYPES.get(kind, "any"),
        read_only=ctype.read_only,
        enum=ctype.enum,
        items=ctype.items,
        orderable=ctype.orderable,
        sort_key=ctype.sort_key,
        compare=ctype.compare,
        like_as_text=ctype.like_as_text,
    )


def _selected(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def reflect(db: peewee.Database, backend: Backend, config: Config) -> dict[str, TableInfo]:
    """Build a :class:`TableInfo` for every exposed table and view."""
    metadata = _introspect(db, backend)
    views = {view.name for view in db.get_views()}
    exposed = [name for name in _exposed(metadata, backend, config) if _shown(metadata, name)]
    _check_table_sections(metadata, config)
    return {name: _table_info(db, backend, config, metadata, name, name in views, number)
            for number, name in enumerate(exposed)}


def _introspect(db: peewee.Database, backend: Backend) -> Any:
    """peewee's account of every table and view: columns, primary and foreign keys.

    A view whose table was dropped or altered since (SQLite and MariaDB keep such
    views) cannot even be described: it is left out with a warning, so one broken
    view does not keep the rest of the database from being served.
    """
    introspector = Introspector.from_database(db)
    with warnings.catch_warnings():
        # Foreign keys into other schemas are dropped by peewee, with a warning.
        warnings.simplefilter("ignore")
        try:
            return introspector.introspect(literal_column_names=True, include_views=True)
        except peewee.DatabaseError:
            names = db.get_tables() + [view.name for view in db.get_views()]
            described = [name for name in names if _describable(introspector, backend, name)]
            return introspector.introspect(table_names=described, literal_column_names=True,
                                           include_views=True)


def _describable(introspector: Introspector, backend: Backend, name: str) -> bool:
    """True when the database can list ``name``'s columns, indexes and foreign keys."""
    metadata = introspector.metadata
    try:
        metadata.get_columns(name)
        metadata.get_indexes(name)
        metadata.get_foreign_keys(name)
    except peewee.DatabaseError as exc:
        log.warning("not serving %s: the database cannot describe it (%s)", name,
                    backend.error_text(exc))
        return False
    return True


def _exposed(metadata: Any, backend: Backend, config: Config) -> list[str]:
    """The tables and views [api] tables and exclude select, in name order.

    Pylight's own tables (the change log, ...) and the backend's internal ones are
    never exposed, whatever the patterns say: `tables = *` must not publish them.
    """
    return [
        name for name in sorted(metadata.columns)
        if _selected(name, config.api.tables) and not _selected(name, config.api.exclude)
        and not name.startswith(("_pylight", *backend.internal_table_prefixes))
    ]


def _shown(metadata: Any, name: str) -> bool:
    """False (with a warning) for a table the database shows no column of: PostgreSQL
    lists every table but shows the columns of only those the database user has a
    privilege on, so there is nothing Pylight could serve."""
    if metadata.columns[name]:
        return True
    log.warning("not serving %s: the database shows none of its columns (the database "
                "user Pylight connects as may have no privilege on it)", name)
    return False


def _check_table_sections(metadata: Any, config: Config) -> None:
    """A [table:NAME] section for a table that does not exist is a typo whose settings
    (hidden columns, read_only) would otherwise be silently ignored."""
    for name in config.tables:
        if name not in metadata.columns:
            raise StartupError(
                f"{config.source}: [table:{name}] names a table the database does not have"
            )


def _table_info(db: peewee.Database, backend: Backend, config: Config, metadata: Any,
                name: str, is_view: bool, number: int) -> TableInfo:
    """One exposed table or view: its model, its visible columns and its settings."""
    settings = config.table(name)
    hidden = frozenset(settings.hidden)
    reflected = backend.columns(db, name, metadata.columns[name])
    primary_key = [] if is_view else _visible_key(name, metadata, reflected)
    _check_hidden(config.source, name, hidden, reflected, primary_key)
    fields, columns = _fields(db, backend, metadata, name, reflected, primary_key, hidden)
    info = TableInfo(
        name=name,
        model=_model(db, name, fields, list(reflected), primary_key, number),
        columns=columns,
        primary_key=primary_key,
        is_view=is_view,
        read_only=settings.read_only or backend.read_only(config.database.url),
        hidden=hidden,
        # Only keys over visible columns: a hidden column is never named, not even here.
        foreign_keys=[fk for fk in backend.foreign_keys(db, name)
                      if set(fk.columns) <= set(columns)],
        nulls_sort_high=backend.nulls_sort_high,
        exact_text=backend.exact_text,
        arrays_nest=backend.arrays_nest,
    )
    if info.writable:
        info.declared = _declared(db, backend, info, reflected)
        info.unique_keys = _unique_keys(db, backend, info)
        if not primary_key:
            info.row_identity = backend.row_identity(list(reflected))
    return info


def _visible_key(name: str, metadata: Any, reflected: dict[str, Any]) -> list[str]:
    """The primary key, when the database shows its user every column of it.

    With column privileges (PostgreSQL ``GRANT SELECT (a, b)``) a key column may be
    out of sight: the table is then served as one without a key (rows found by
    filters), not with a key no statement could name."""
    key = list(metadata.primary_keys.get(name) or [])
    unseen = [column for column in key if column not in reflected]
    if unseen:
        log.warning("serving %s as a table without a primary key: the database does not "
                    "show its key column(s) %s", name, ", ".join(unseen))
        return []
    return key


def _declared(db: peewee.Database, backend: Backend, table: TableInfo,
              reflected: dict[str, Any]) -> dict[str, DeclaredColumn] | None:
    """The catalog's facts beyond reflection; None (the document stays usable) when
    the catalog cannot be read."""
    raw_types = {name: str(column.raw_column_type) for name, column in reflected.items()}
    try:
        return backend.declared_columns(db, table.name, table.primary_key, raw_types)
    except Exception as exc:
        log.debug("no catalog for %s: %s", table.name, exc)
        return None


def _unique_keys(db: peewee.Database, backend: Backend, table: TableInfo) -> list[tuple[str, ...]]:
    """The key and the unique column sets over visible columns, each once (an upsert
    names one of them; a hidden column is never named)."""
    keys = [tuple(table.primary_key)] if table.primary_key else []
    try:
        keys += backend.unique_keys(db, table.name)
    except Exception as exc:
        log.debug("no unique keys for %s: %s", table.name, exc)
    found: dict[frozenset[str], tuple[str, ...]] = {}
    for key in keys:
        # An upsert finds the existing row with `eq` filters: a JSON column without
        # an equality of its own cannot be one of its columns.
        if key and all(name in table.columns and (table.columns[name].kind != "json"
                                                  or table.columns[name].compare is not None)
                       for name in key):
            found.setdefault(frozenset(key), key)
    return list(found.values())


def _check_hidden(source: str, name: str, hidden: frozenset[str], reflected: dict[str, Any],
                  primary_key: list[str]) -> None:
    """Refuse a `hidden` list naming unknown columns (a typo would leave the column
    visible) or key columns (a row is addressed by its key, which must be readable)."""
    unknown = hidden - set(reflected)
    if unknown:
        raise StartupError(
            f"{source}: [table:{name}] hidden names unknown column(s) "
            f"{', '.join(sorted(unknown))}"
        )
    if hidden & set(primary_key):
        raise StartupError(
            f"{source}: [table:{name}] cannot hide primary-key column(s) "
            f"{', '.join(sorted(hidden & set(primary_key)))}"
        )


def _fields(db: peewee.Database, backend: Backend, metadata: Any, name: str,
            reflected: dict[str, Any], primary_key: list[str],
            hidden: frozenset[str]) -> tuple[dict[str, peewee.Field], dict[str, ColumnInfo]]:
    """A peewee field for every column (``c0``, ``c1``, ... in table order), and a
    :class:`ColumnInfo` for every visible one.

    Hidden columns get a field too: change capture writes its triggers from the model's
    fields, so that they do not change with `hidden` (capture.py drops hidden columns
    when it reads the log).
    """
    scales = backend.numeric_scales(db, name)
    types = backend.column_types(db, name)
    fields: dict[str, peewee.Field] = {}
    columns: dict[str, ColumnInfo] = {}
    for index, (column_name, column) in enumerate(reflected.items()):
        ctype = types.get(column_name) or ColumnType()
        cls = _with_conversion(ctype.field or _field_class(column, metadata, backend), ctype)
        params: dict[str, Any] = {"column_name": column_name, "null": True}
        if issubclass(cls, peewee.DecimalField):
            # values.decimal_coercer rounds to the column's scale; peewee's rounding
            # would use its own default number of places.
            params["auto_round"] = False
        if len(primary_key) == 1 and column_name == primary_key[0]:
            params["primary_key"] = True
        # Field names are positional: a column called "select" or "save"
        # must not shadow a Model method.
        fld = cls(**params)
        fields[f"c{index}"] = fld
        if column_name in hidden:
            continue
        info = _column_info(column_name, column, fld, ctype, scales.get(column_name),
                            column_name in primary_key)
        if info.kind == "integer":
            info.int_range = ctype.bounds or backend.integer_range(info.raw_type)
        columns[column_name] = info
    return fields, columns


def _model(db: peewee.Database, name: str, fields: dict[str, peewee.Field],
           column_names: list[str], primary_key: list[str], number: int) -> type[peewee.Model]:
    """The peewee model of table ``name`` (the ``number``-th exposed) over ``fields``."""
    meta_attrs: dict[str, Any] = {"database": db, "table_name": name}
    if len(primary_key) > 1:
        position = {column_name: i for i, column_name in enumerate(column_names)}
        meta_attrs["primary_key"] = peewee.CompositeKey(
            *[f"c{position[c]}" for c in primary_key]
        )
    elif not primary_key:
        # Without this peewee would add an `id` column the table does not have.
        meta_attrs["primary_key"] = False
    attrs = {**fields, "Meta": type("Meta", (), meta_attrs)}
    return type(f"Table_{number}", (peewee.Model,), attrs)
