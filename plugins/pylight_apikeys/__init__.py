"""API keys with per-table permissions, configured by the ``[plugin:apikeys]`` section.

Without a ``[plugin:apikeys]`` section this plugin does nothing at all: it
registers no auth hook, so an open server is unaffected. With one, every
request and every WebSocket upgrade needs a known key; a request without one
is anonymous and refused with 401, an unknown key is a 401, and an action the
key lacks is a 403 naming the missing permission.

Configuration (names are case-insensitive; ``*`` is any table or any action)::

    [plugin:apikeys]
    reader.key = 3f6c1a0d9b...                ; the secret, sent by the client
    reader.permissions = products: read
    backend.key = 9a7e44c2f1...
    backend.permissions = products: read, create, update, delete; orders: *
    ops.key = 0c55d7e8aa...
    ops.permissions = *: read
    file = /etc/pylight/apikeys.ini           ; optional: more keys, same format

Each key is a ``NAME.key = <secret>`` line and a ``NAME.permissions = ...``
line; permissions are ``table: action, action; table: action`` with the
actions ``read``, ``create``, ``update`` and ``delete``. ``file`` names a file
holding more ``NAME.key`` / ``NAME.permissions`` lines in the same format (a
section header is optional); a relative path resolves against the working
directory. Keys are read at start-up; a malformed line, a key without
permissions, a table that is not exposed, two names sharing a secret or a
name defined twice stops start-up with one line.

Clients send a key as ``Authorization: Bearer <key>``, as ``X-API-Key: <key>``
or, where headers cannot be set (a browser's WebSocket), as ``?token=<key>``
(never logged). A bearer token shaped like a JWT that is no configured key is
left to a JWT plugin. Secrets are compared in constant time
(``hmac.compare_digest``); an identity's ``subject`` is the key's NAME, never
its secret.
"""

from __future__ import annotations

import configparser
import hmac
import os
import re
from typing import Any

from pylight import StartupError, hookimpl
from pylight.auth import Identity, Permissions, unauthorized

SECTION = "apikeys"
PROVIDER = "apikeys"
HEADER = "X-API-Key"


_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def looks_like_jwt(token: str) -> bool:
    return _JWT_SHAPE.fullmatch(token) is not None


class ApiKeys:
    """The hooks of a configured ``[plugin:apikeys]``, registered for one server."""

    def __init__(self, keys: dict[str, tuple[bytes, Permissions]]) -> None:
        self.keys = keys
        self._secrets = [(name, secret) for name, (secret, _) in keys.items()]

    def lookup(self, presented: str) -> str | None:
        """The NAME of the key ``presented`` is, compared in constant time against every key."""
        candidate = presented.encode("utf-8", "surrogatepass")
        found = None
        for name, secret in self._secrets:
            if hmac.compare_digest(candidate, secret):
                found = name
        return found

    @hookimpl
    def pylight_authenticate(self, request: Any, token: str | None, app: Any) -> Identity | None:
        if token is not None:
            name = self.lookup(token)
            if name is not None:
                return self.identity(name)
            if not looks_like_jwt(token):
                raise unauthorized("unknown API key")
            # a JWT: some other plugin's credential; an X-API-Key may still be ours
        header = (request.headers.get(HEADER) or "").strip()
        if not header:
            return None
        name = self.lookup(header)
        if name is None:
            raise unauthorized("unknown API key")
        return self.identity(name)

    def identity(self, name: str) -> Identity:
        return Identity(subject=name, provider=PROVIDER, data={"permissions": self.keys[name][1]})

    @hookimpl
    def pylight_authorize(self, identity: Identity | None, action: str, table: str,
                          record: dict[str, Any] | None, app: Any) -> bool | None:
        if identity is None:
            return False  # with API keys enabled, anonymous callers may do nothing
        if identity.provider != PROVIDER:
            return None  # another plugin's identity: its plugin decides
        return self.keys[identity.subject][1].allows(table, action)


def _entries(items: dict[str, str], where: str, keys: dict[str, dict[str, str]]) -> None:
    for option, value in items.items():
        name, dot, attribute = option.rpartition(".")
        if not dot or not name or attribute not in ("key", "permissions"):
            raise StartupError(f"{where}: unknown setting {option!r}; expected NAME.key = <secret> "
                               "and NAME.permissions = table: action, ... (or file = path)")
        entry = keys.setdefault(name, {"where": where})
        if entry["where"] != where:
            raise StartupError(f"{where}: key {name!r} is already defined in {entry['where']}")
        entry[attribute] = value


def _read_file(path: str) -> dict[str, str]:
    where = f"[plugin:{SECTION}] file {path!r}"
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"),
                                       strict=True)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise StartupError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    try:
        parser.read_string(f"[{SECTION}]\n{text}", source=path)
    except configparser.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise StartupError(f"{where}: malformed ({first})") from None
    items: dict[str, str] = {}
    for section in parser.sections():
        items.update(parser.items(section))
    if "file" in items:
        raise StartupError(f"{where}: a key file may not name another file")
    return items


def load_keys(settings: dict[str, str], tables: Any) -> dict[str, tuple[bytes, Permissions]]:
    """Validate the section (and its file) into {NAME: (secret, permissions)}; StartupError if bad."""
    section = f"[plugin:{SECTION}]"
    settings = dict(settings)
    path = settings.pop("file", "").strip()
    entries: dict[str, dict[str, str]] = {}
    _entries(settings, section, entries)
    if path:
        _entries(_read_file(os.path.abspath(path)), f"{section} file {path!r}", entries)
    if not entries:
        raise StartupError(f"{section} defines no keys; add NAME.key = <secret> and "
                           "NAME.permissions = table: action, ... (or file = path)")
    keys: dict[str, tuple[bytes, Permissions]] = {}
    owners: dict[bytes, str] = {}
    for name, entry in entries.items():
        where = entry["where"]
        secret = entry.get("key", "").strip()
        if not secret:
            raise StartupError(f"{where}: key {name!r} needs {name}.key = <secret>")
        if "permissions" not in entry:
            raise StartupError(f"{where}: key {name!r} needs {name}.permissions = "
                               "table: action, ... (e.g. products: read)")
        try:
            permissions = Permissions.parse(entry["permissions"], tables)
        except ValueError as exc:
            raise StartupError(f"{where}: {name}.permissions: {exc}") from None
        raw = secret.encode("utf-8", "surrogatepass")
        if raw in owners:
            raise StartupError(f"{where}: keys {owners[raw]!r} and {name!r} share one secret; "
                               "give each its own")
        owners[raw] = name
        keys[name] = (raw, permissions)
    return keys


@hookimpl
def pylight_startup(app: Any) -> None:
    """Validate ``[plugin:apikeys]`` and, when present, register its hooks for this server."""
    settings = app.config.plugin_section(SECTION)
    if not settings:
        return  # no section: the plugin stays inert
    app.auth.add_provider(ApiKeys(load_keys(settings, app.tables)), f"{SECTION}.keys")
