"""Reads the ini file, environment and command line into frozen, typed settings."""

from __future__ import annotations

import ast
import configparser
import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pylight.errors import StartupError


def setting(default: Any, help: str) -> Any:
    """A dataclass field carrying its help text, so the reference is written once."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServerSettings:
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8000, "TCP port to listen on")
    idle_timeout: float = setting(
        60.0, "seconds an idle keep-alive HTTP connection is kept, and the most a client may "
        "take to send a request's headers (0: one hour)")
    body_timeout: float = setting(
        30.0, "seconds a client may take to send a request body (0: no limit)")


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = setting("sqlite:///var/demo.db", "database URL: sqlite:///path, postgresql://, mysql://")
    seed_demo: bool = setting(False, "create and seed the demo tables when the database is empty")
    pool_size: int = setting(8, "connections (and worker threads) for blocking database calls")
    connect_timeout: float = setting(5.0, "seconds to wait when opening a database connection")


@dataclass(frozen=True)
class ApiSettings:
    prefix: str = setting("/api", "URL prefix of the REST API")
    tables: list[str] = setting(["*"], "tables to expose: * or a comma-separated list")
    exclude: list[str] = setting([], "tables never exposed")
    default_limit: int = setting(50, "rows per page when the request names no limit")
    max_limit: int = setting(1000, "the largest limit a request may ask for")
    max_body_bytes: int = setting(1048576, "largest request body accepted, in bytes")
    cors_origins: list[str] = setting([], "origins allowed by CORS: * or a list of origins")


@dataclass(frozen=True)
class RealtimeSettings:
    enabled: bool = setting(True, "serve WebSocket change feeds")
    prefix: str = setting("/ws", "URL prefix of the WebSocket feeds")
    heartbeat_interval: float = setting(20.0, "seconds between server pings")
    heartbeat_timeout: float = setting(10.0, "seconds without a pong before a connection is dropped")
    replay_buffer: int = setting(10000, "recent changes kept per table for since= resume")
    max_pending: int = setting(1000, "undelivered messages per connection before it is dropped")
    allowed_origins: list[str] = setting([], "WebSocket Origin allow-list (empty: same host only)")
    max_message_bytes: int = setting(
        65536, "largest message a client may send, in bytes (larger: closed with 1009)")
    max_connections: int = setting(
        10000, "open feed connections in total (more: upgrade refused with 503; 0: no limit)")
    max_connections_per_client: int = setting(
        1000, "open feed connections per client address (more: 503; 0: no limit)")
    max_messages_per_second: int = setting(
        50, "messages a client may send per second, bursts of twice that allowed "
        "(more: closed with 1008; 0: no limit)")
    capture: str = setting(
        "api", "where changes come from: api (REST writes) or database (triggers also "
        "catch writes made outside Pylight)")
    poll_interval: float = setting(
        0.25, "seconds between reads of the change log (capture = database, "
        "SQLite and MySQL)")
    install_triggers: bool = setting(
        False, "install the change-capture triggers at start-up (capture = database)")
    max_subscriptions: int = setting(
        100, "subscriptions one /ws connection may hold (more: an error for that subscribe; "
        "0: no limit)")
    sse: bool = setting(True, "serve Server-Sent Events feeds at /sse/<table>")
    expose_actor: bool = setting(
        False, "change messages of API writes name who made them (\"by\": the identity's "
        "subject, null when anonymous)")
    compression: bool = setting(
        False, "offer permessage-deflate to feed clients that ask for it (each message is "
        "compressed once and shared; costs CPU, saves bandwidth on large rows)")


@dataclass(frozen=True)
class BusSettings:
    url: str = setting("", "bus between Pylight processes, e.g. redis://127.0.0.1:6379/0 "
                           "(empty: this process only)")
    prefix: str = setting("pylight", "prefix of the bus's Redis keys and channel; every process "
                                     "serving one database uses the same, other deployments another")


@dataclass(frozen=True)
class PluginSettings:
    load: list[str] = setting([], "extra plugin modules to load, comma separated")


@dataclass(frozen=True)
class TableSettings:
    hidden: list[str] = setting([], "columns never read, written or sent")
    read_only: bool = setting(False, "refuse writes to this table with 405")


SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "database": DatabaseSettings,
    "api": ApiSettings,
    "realtime": RealtimeSettings,
    "plugins": PluginSettings,
    "bus": BusSettings,
}


@dataclass(frozen=True)
class Config:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    realtime: RealtimeSettings = field(default_factory=RealtimeSettings)
    plugins: PluginSettings = field(default_factory=PluginSettings)
    bus: BusSettings = field(default_factory=BusSettings)
    tables: dict[str, TableSettings] = field(default_factory=dict)
    # Raw `[plugin:NAME]` sections; each plugin validates its own keys.
    plugin_sections: dict[str, dict[str, str]] = field(default_factory=dict)
    source: str = "<defaults>"

    def table(self, name: str) -> TableSettings:
        return self.tables.get(name, TableSettings())

    def plugin_section(self, name: str) -> dict[str, str]:
        """The one accessor plugins use to read their `[plugin:NAME]` settings."""
        return dict(self.plugin_sections.get(name, {}))


def _ini_boolean(text: str) -> bool | None:
    """An on/off setting: ``1``, ``true``, ``yes``, ``on`` or ``0``, ``false``, ``no``,
    ``off``, in any case; None for any other text (the caller names the setting).

    Wider than the query language's ``true``/``false`` (values.query_boolean) on
    purpose: these are the words configparser's own getboolean() takes, which operators
    expect to write in an ini file, an environment variable or on the command line,
    where no grammar of ours is involved. A URL's keywords stay strict instead.
    """
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    return None


def _convert(raw: str, kind: Any, where: str) -> Any:
    text = raw.strip()
    if kind is bool or kind == "bool":
        switch = _ini_boolean(text)
        if switch is None:
            raise StartupError(f"{where}: expected true or false, got {raw!r}")
        return switch
    if kind is int or kind == "int":
        try:
            value = int(text)
        except ValueError:
            raise StartupError(f"{where}: expected a whole number, got {raw!r}") from None
        if value < 0:
            raise StartupError(f"{where}: must not be negative, got {value}")
        return value
    if kind is float or kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise StartupError(f"{where}: expected a number of seconds, got {raw!r}") from None
        if not value >= 0 or value == float("inf"):
            raise StartupError(f"{where}: must be a finite number >= 0, got {raw!r}")
        return value
    if kind in ("list[str]", list[str]):
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _parse_error(exc: configparser.Error) -> str:
    """configparser's message on one line, with the line number that is wrong.

    Its first line alone can omit the line ("Source contains parsing errors:
    'x.ini'"), which leaves the operator searching the file.
    """
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return (f"line {exc.lineno}: {exc.line.strip()!r} comes before any [section] header "
                "or is not a valid one")
    if isinstance(exc, configparser.ParsingError):
        lines = "; ".join(f"line {lineno}: {_unrepr(text)!r}" for lineno, text in exc.errors)
        return f"not a 'key = value' line or [section] header: {lines}"
    return " ".join(str(exc).split())


def _unrepr(text: str) -> str:
    try:
        value = ast.literal_eval(text)  # configparser stores repr(line)
    except (ValueError, SyntaxError):
        value = text
    return str(value).strip()


def _build(cls: type, values: dict[str, str], where: str,
           origins: dict[str, str] | None = None) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, raw in values.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise StartupError(f"{where}: unknown key {key!r} (known keys: {known})")
        # A value from the environment or the command line is blamed on its
        # real source, not on the file that never contained it.
        origin = (origins or {}).get(key) or f"{where} key {key!r}"
        kwargs[key] = _convert(raw, fields[key].type, origin)
    return cls(**kwargs)


def _check(config: Config) -> None:
    where = config.source
    if not 1 <= config.server.port <= 65535 and config.server.port != 0:
        raise StartupError(f"{where}: [server] port must be between 1 and 65535")
    if config.database.pool_size < 1:
        raise StartupError(f"{where}: [database] pool_size must be at least 1")
    if config.api.default_limit < 1 or config.api.max_limit < config.api.default_limit:
        raise StartupError(
            f"{where}: [api] default_limit must be >= 1 and no larger than max_limit"
        )
    for section in ("api", "realtime"):
        prefix = getattr(config, section).prefix
        if not prefix.startswith("/") or prefix.endswith("/") and prefix != "/":
            raise StartupError(
                f"{where}: [{section}] prefix must start with '/' and not end with one, "
                f"got {prefix!r}"
            )
    if config.realtime.capture not in ("api", "database"):
        raise StartupError(f"{where}: [realtime] capture must be api or database, "
                           f"got {config.realtime.capture!r}")
    if config.realtime.heartbeat_interval <= 0:
        raise StartupError(f"{where}: [realtime] heartbeat_interval must be greater than 0")
    if config.realtime.max_message_bytes < 1:
        raise StartupError(f"{where}: [realtime] max_message_bytes must be at least 1")


# {section: {key: text}}: values as given, before conversion (or where each came from).
_BySection = dict[str, dict[str, str]]


def load_config(
    path: str | None,
    overrides: dict[tuple[str, str], str] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Read `path`, then `PYLIGHT_<SECTION>_<KEY>` variables, then `overrides` (the CLI)."""
    environ = os.environ if environ is None else environ
    source = path or "<defaults>"
    raw, tables, plugin_sections = _sort_sections(_read_file(path), source)
    # Each later source wins over the earlier ones, key by key; `origins` remembers
    # which one a value came from so that an error blames the right place.
    origins: _BySection = {}
    _layer_environment(raw, origins, environ)
    _layer_overrides(raw, origins, overrides or {})
    built = {
        section: _build(cls, raw.get(section, {}), f"{source} [{section}]", origins.get(section))
        for section, cls in SECTIONS.items()
    }
    table_settings = {
        name: _build(TableSettings, values, f"{source} [table:{name}]")
        for name, values in tables.items()
    }
    built["api"] = _page_size_within_max(built["api"], raw.get("api", {}))
    config = Config(
        **built, tables=table_settings, plugin_sections=plugin_sections, source=source
    )
    _check(config)
    return config


def _read_file(path: str | None) -> configparser.ConfigParser:
    """The parsed ini file (empty without a `path`), or a StartupError an operator can act on."""
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#"), strict=True
    )
    if path is None:
        return parser
    # Checked before open(): a missing path (or a directory) gets the hint to pass
    # --conf, rather than an OSError's text.
    if not os.path.isfile(path):
        raise StartupError(f"config file {path} not found (pass --conf with an existing file)")
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh, source=path)
    except configparser.Error as exc:
        raise StartupError(f"config file {path} is malformed: {_parse_error(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"config file {path} cannot be read: {exc}") from None
    return parser


def _sort_sections(parser: configparser.ConfigParser,
                   source: str) -> tuple[_BySection, _BySection, _BySection]:
    """The file's sections as (settings sections, `[table:NAME]`s, `[plugin:NAME]`s).

    An unknown section is an error rather than ignored: it is nearly always a typo,
    and ignoring it would silently drop every setting in it.
    """
    raw: _BySection = {}
    tables: _BySection = {}
    plugin_sections: _BySection = {}
    for section in parser.sections():
        values = dict(parser.items(section))
        if section in SECTIONS:
            raw[section] = values
        elif section.startswith("table:") and section[6:].strip():
            tables[section[6:].strip()] = values
        elif section.startswith("plugin:") and section[7:].strip():
            plugin_sections[section[7:].strip()] = values
        else:
            known = ", ".join(f"[{name}]" for name in SECTIONS)
            raise StartupError(
                f"{source}: unknown section [{section}] "
                f"(known: {known}, [table:NAME], [plugin:NAME])"
            )
    return raw, tables, plugin_sections


def _layer_environment(raw: _BySection, origins: _BySection,
                       environ: Mapping[str, str]) -> None:
    """`PYLIGHT_<SECTION>_<KEY>` variables over the file's values.

    A ``PYLIGHT_`` variable that names no setting is refused, as an unknown key in
    the file is: it is nearly always a typo (``PYLIGHT_DATABASE_ULR``), and
    ignoring it would silently serve something else than the operator asked for.
    """
    known = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            known[f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"] = (section, f.name)
    for env_name in environ:
        if env_name.startswith(ENV_PREFIX) and env_name not in known and not env_name.startswith(
                NOT_SETTINGS):
            raise StartupError(_unknown_variable(env_name, list(known)))
    for env_name, (section, key) in known.items():
        if env_name in environ:
            raw.setdefault(section, {})[key] = environ[env_name]
            origins.setdefault(section, {})[key] = f"environment variable {env_name}"


ENV_PREFIX = "PYLIGHT_"
# Variables Pylight's own test suite reads (see the README on running the tests):
# not settings, and not mistakes when exported in a developer's shell.
NOT_SETTINGS = ("PYLIGHT_REQUIRE_SERVICES", "PYLIGHT_TEST_", "PYLIGHT_PROPERTY_SCALE",
                "PYLIGHT_FUZZ_")


def _unknown_variable(env_name: str, known: list[str]) -> str:
    # A key without its section (PYLIGHT_PORT) is the setting of that name; otherwise
    # the nearest name, compared without the prefix that makes every name look alike.
    given = env_name[len(ENV_PREFIX):]
    names = [name[len(ENV_PREFIX):] for name in known]
    closest = [name for name in names if name.endswith("_" + given)][:1] or (
        difflib.get_close_matches(given, names, n=1, cutoff=0.6))
    hint = f"did you mean PYLIGHT_{closest[0]}? " if closest else ""
    if env_name.startswith("PYLIGHT_PLUGIN_"):
        hint += "[plugin:NAME] sections are read from the file only; "
    return (f"environment variable {env_name} names no Pylight setting; {hint}settings are "
            "PYLIGHT_<SECTION>_<KEY>, listed by --help-config (unset or rename it)")


def _layer_overrides(raw: _BySection, origins: _BySection,
                     overrides: dict[tuple[str, str], str]) -> None:
    """Command-line options over everything else: the operator typed them last."""
    for (section, key), value in overrides.items():
        raw.setdefault(section, {})[key] = value
        origins.setdefault(section, {})[key] = f"command line --{key.replace('_', '-')}"


def _page_size_within_max(api: ApiSettings, given: dict[str, str]) -> ApiSettings:
    """When only max_limit was set, below the default page size, the page size follows
    it down: the operator asked for smaller pages, not for a start-up error. An explicit
    default_limit above max_limit is left for _check to refuse."""
    if "default_limit" not in given and api.default_limit > api.max_limit:
        return dataclasses.replace(api, default_limit=api.max_limit)
    return api


def reference() -> str:
    """Every setting with its default and help, for the README and `--help-config`."""
    lines = []
    for section, cls in [*SECTIONS.items(), ("table:NAME", TableSettings)]:
        lines.append(f"[{section}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if isinstance(default, list):
                default = ", ".join(default)
            elif isinstance(default, bool):
                default = str(default).lower()
            lines.append(f"{f.name} = {default}    ; {f.metadata['help']}")
        lines.append("")
    return "\n".join(lines)
