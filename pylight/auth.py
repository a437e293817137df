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

from pylight.errors import ApiError

if TYPE_CHECKING:
    import pluggy
    from tornado.httputil import HTTPServerRequest

    from pylight.query import Group, Matcher
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


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {}, {"WWW-Authenticate": "Bearer"})


def forbidden(message: str, **details: Any) -> ApiError:
    return ApiError(403, "forbidden", message, details)


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
    def __init__(self, pm: pluggy.PluginManager, app: Any) -> None:
        self.pm = pm
        self.app = app
        hooks = pm.hook
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

    def row_filter(self, identity: Identity | None, table: TableInfo) -> Group | None:
        """The rows ``identity`` may see in ``table``, as a filter (None: all)."""
        if not self.filters_rows:
            return None
        from pylight import query as ql

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

    def matcher(self, identity: Identity | None, table: TableInfo) -> Matcher | None:
        from pylight import query as ql

        where = self.row_filter(identity, table)
        return ql.Matcher(table, where, self.app.backend) if where is not None else None
