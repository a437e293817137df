"""Who is calling and what they may do: the authentication, authorisation and row-filter hooks.

Without an auth plugin every hook list is empty and every check here is a
no-op, so an open server pays nothing for it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from pylight import query as ql
from pylight.errors import ApiError, forbidden, unauthorized

if TYPE_CHECKING:
    import pluggy
    from tornado.httputil import HTTPServerRequest

    from pylight.backend import Backend
    from pylight.schema import TableInfo

ACTIONS = ("read", "create", "update", "delete")
_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)


@dataclass
class Identity:
    """An authenticated caller.

    ``subject`` names it in messages and logs (a key's name, a token's ``sub``);
    ``expires_at`` (epoch seconds) closes a WebSocket that is not given a fresh
    token in time; ``claims`` and ``data`` are the plugin's own.
    """

    subject: str
    provider: str
    expires_at: float | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


def request_token(request: HTTPServerRequest) -> str | None:
    """The bearer token of a request: the Authorization header, else ``?token=`` (browsers)."""
    match = _BEARER.match(request.headers.get("Authorization", ""))
    if match:
        return match.group(1)
    values = request.query_arguments.get("token")
    if values:
        return values[-1].decode("utf-8", "replace")
    return None


async def _settle(results: Iterable[Any]) -> list[Any]:
    settled = []
    for result in results:
        settled.append(await result if inspect.isawaitable(result) else result)
    return settled


class Auth:
    def __init__(self, pm: pluggy.PluginManager, app: Any, backend: Backend) -> None:
        """``app`` is only handed on to the hooks (their ``app`` argument); ``backend``
        evaluates row filters the way the database compares values."""
        self.pm = pm
        self.app = app
        self.backend = backend
        self.refresh()

    def add_provider(self, provider: Any, name: str) -> None:
        """Register ``provider``'s auth hooks for this server (once), e.g. from
        ``pylight_startup`` when the plugin's ini section asks for it."""
        if not self.pm.has_plugin(name):
            self.pm.register(provider, name=name)
            self.refresh()

    def refresh(self) -> None:
        """Look again at which auth hooks are implemented.

        Plain attributes, not properties: they are read once per notification
        per subscriber. A plugin that registers auth hooks after the server was
        made (the bundled apikeys and jwt plugins do so from ``pylight_startup``
        when their ``[plugin:NAME]`` section is present, so an open server has
        none and pays nothing) calls this afterwards.
        """
        hooks = self.pm.hook
        self.authenticates = bool(hooks.pylight_authenticate.get_hookimpls())
        self.authorizes = bool(hooks.pylight_authorize.get_hookimpls())
        self.filters_rows = bool(hooks.pylight_row_filter.get_hookimpls())
        self.enabled = self.authenticates or self.authorizes or self.filters_rows

    async def authenticate(self, request: HTTPServerRequest, token: str | None = None
                           ) -> Identity | None:
        """The caller's identity (None: anonymous); a plugin raises 401 for a bad credential."""
        if not self.authenticates:
            return None
        if token is None:
            token = request_token(request)
        hook = self.pm.hook
        results = await _settle(hook.pylight_authenticate(request=request, token=token,
                                                          app=self.app))
        return next((r for r in results if r is not None), None)

    def _denied(self, identity: Identity | None, action: str, table: str) -> ApiError:
        if identity is None:
            return unauthorized(f"authentication required to {action} {table!r}")
        return forbidden(
            f"{identity.provider} {identity.subject!r} lacks the {action!r} permission on "
            f"table {table!r}", permission=action, table=table)

    async def authorize(self, identity: Identity | None, action: str, table: str,
                        record: dict[str, Any] | None = None) -> None:
        """Raise 401/403 unless every authorisation hook allows ``action``."""
        if not self.authorizes:
            return
        results = await _settle(self._verdicts(identity, action, table, record))
        if False in results:
            raise self._denied(identity, action, table)

    def may_read(self, identity: Identity | None, table: str,
                 record: dict[str, Any] | None) -> Any:
        """For a notification: True/False, or an awaitable of it when a hook is async."""
        if not self.authorizes:
            return True
        results = self._verdicts(identity, "read", table, record)
        if any(inspect.isawaitable(r) for r in results):
            async def settle() -> bool:
                return False not in await _settle(results)
            return settle()
        return False not in results

    def _verdicts(self, identity: Identity | None, action: str, table: str,
                  record: dict[str, Any] | None) -> list[Any]:
        hook = self.pm.hook
        return hook.pylight_authorize(identity=identity, action=action, table=table,
                                      record=record, app=self.app)

    def row_filter(self, identity: Identity | None, table: TableInfo) -> ql.Group | None:
        """The rows ``identity`` may see in ``table``, as a filter (None: all)."""
        if not self.filters_rows:
            return None
        hook = self.pm.hook
        texts = [t for t in hook.pylight_row_filter(identity=identity, table=table.name,
                                                     app=self.app) if t]
        if not texts:
            return None
        members = []
        for text in texts:
            arguments = parse_qs(text, keep_blank_values=True)
            members.extend(ql.parse_filters(table, arguments).members)
        return ql.Group(tuple(members))

    def matcher(self, identity: Identity | None, table: TableInfo) -> ql.Matcher | None:
        """Whether a row is one ``identity`` may see in ``table`` (None: every row is)."""
        return self.matcher_of(table, self.row_filter(identity, table))

    def matcher_of(self, table: TableInfo, where: ql.Group | None) -> ql.Matcher | None:
        """``where`` evaluated in Python the way the database compares (None: no filter)."""
        if where is None or not where.members:
            return None
        return ql.Matcher(table, where, self.backend)


class Permissions:
    """Which actions an identity may take on which tables: the auth plugins' shared grammar.

    Written ``products: read, create; orders: read`` — ``;`` between tables,
    ``,`` between actions, ``*`` for any table or any action (``*: read``,
    ``orders: *``). Actions are ``read``, ``create``, ``update`` and ``delete``.
    """

    def __init__(self, rules: dict[str, frozenset[str]] | None = None) -> None:
        self.rules = dict(rules or {})

    @classmethod
    def parse(cls, text: str, tables: Iterable[str] | None = None) -> Permissions:
        """Parse the ini form; ValueError with a one-line reason when it is malformed or
        names a table that is not among ``tables`` (when given)."""
        rules: dict[str, set[str]] = {}
        for part in text.split(";"):
            if not part.strip():
                continue
            table, colon, actions = part.partition(":")
            table = table.strip()
            if not colon or not table:
                raise ValueError(f"expected 'table: action, ...', got {part.strip()!r}")
            rules.setdefault(table, set()).update(cls._actions(
                [a.strip() for a in actions.split(",") if a.strip()], table))
        if tables is not None:
            known = set(tables)
            unknown = [t for t in rules if t != "*" and t not in known]
            if unknown:
                raise ValueError(f"names {unknown[0]!r}, which is not an exposed table "
                                 f"(exposed: {', '.join(sorted(known)) or 'none'})")
        return cls({table: frozenset(actions) for table, actions in rules.items()})

    @classmethod
    def from_mapping(cls, mapping: Any) -> Permissions:
        """From a token claim such as ``{"products": ["read"], "orders": "read, create"}``.

        A malformed structure is a ValueError; an action that is not one of
        ours (a token shared with other services may carry ``"admin"``) grants
        nothing and is ignored.
        """
        if not isinstance(mapping, dict):
            raise ValueError("expected an object of table names to lists of actions")
        rules: dict[str, frozenset[str]] = {}
        for table, actions in mapping.items():
            if isinstance(actions, str):
                actions = [a.strip() for a in actions.split(",") if a.strip()]
            if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
                raise ValueError(f"{table!r}: expected a list of actions")
            known = [a for a in actions if a.lower() in ACTIONS or a == "*"]
            rules[str(table)] = frozenset(cls._actions(known, str(table)))
        return cls(rules)

    @staticmethod
    def _actions(actions: list[str], table: str) -> set[str]:
        found = set()
        for action in actions:
            action = action.lower()
            if action != "*" and action not in ACTIONS:
                raise ValueError(f"{table}: unknown action {action!r} "
                                 f"(known: {', '.join(ACTIONS)}, *)")
            found.add(action)
        return found

    def __or__(self, other: Permissions) -> Permissions:
        rules = dict(self.rules)
        for table, actions in other.rules.items():
            rules[table] = rules.get(table, frozenset()) | actions
        return Permissions(rules)

    def allows(self, table: str, action: str) -> bool:
        granted = self.rules.get(table, frozenset()) | self.rules.get("*", frozenset())
        return action in granted or "*" in granted

    def __str__(self) -> str:
        return "; ".join(f"{table}: {', '.join(sorted(actions))}"
                         for table, actions in self.rules.items()) or "(none)"
