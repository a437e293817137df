"""Every Pylight hook: the plugin author's reference.

Hooks are called with keyword arguments, from exactly one place in the code.
A hook marked *first result* stops at the first implementation that returns
something other than None; all others collect every implementation's result
in a list (most recently registered plugin first). Built-in behaviour is
provided by bundled plugins registered through the ``pylight`` entry-point
group, exactly as a third-party plugin is, so any of it can be replaced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pylight.app import Pylight
    from pylight.backend import Backend
    from pylight.hub import Change

hookspec = pluggy.HookspecMarker("pylight")


@hookspec
def pylight_database_backends() -> list[Backend]:
    """Offer database backends.

    Called once at start-up, before the database is opened. Return a list of
    :class:`pylight.backend.Backend` instances; each names the URL schemes it
    serves in ``Backend.schemes`` (``("postgresql", "postgres")``) and knows how
    to open a pooled peewee database for such a URL, how to reflect its column
    types and how to map its driver's errors to API errors. When two plugins
    claim one scheme, the most recently registered one (an outside plugin over
    a bundled one) wins.

    Returns: a list of backends (may be empty). All results are collected.
    """


@hookspec
def pylight_routes(app: Pylight) -> list[tuple[Any, ...]]:
    """Add HTTP or WebSocket routes.

    Called once while the Tornado application is built, after the database
    has been reflected. ``app`` is the running :class:`pylight.app.Pylight`
    (its ``config``, ``tables``, ``hub`` and ``db`` are ready). Return Tornado
    route tuples ``(pattern, HandlerClass, init_kwargs)``; they are matched
    before Pylight's own table routes, so a plugin can serve a path such as
    ``/api/login`` that would otherwise look like a table.

    Returns: a list of routes (may be empty). All results are collected.
    """


@hookspec
def pylight_startup(app: Pylight) -> Any:
    """Run when the server has reflected the database and is about to listen.

    ``app`` is the running :class:`pylight.app.Pylight`. An implementation may
    be a coroutine function; Pylight awaits every awaitable result before it
    starts accepting connections. Raise :class:`pylight.StartupError` to stop
    start-up with one clear line.

    Returns: ignored. All implementations run.
    """


@hookspec
def pylight_shutdown(app: Pylight) -> Any:
    """Run when the server stops (SIGINT/SIGTERM), after it stopped listening.

    An implementation may be a coroutine function; Pylight awaits every
    awaitable result, then closes the database pool.

    Returns: ignored. All implementations run.
    """


@hookspec(firstresult=True)
def pylight_format_notification(change: Change, seq: int) -> dict[str, Any] | None:
    """Shape the WebSocket message for one committed change.

    Called once per change (not once per subscriber) on the event loop, right
    after the change was given its ``seq``. ``change`` is a
    :class:`pylight.hub.Change` (``table``, ``event``, ``pk``, ``record``,
    ``old``, ``at``) holding JSON values of visible columns only. Return a
    JSON-serialisable dict; it is encoded once and sent to every subscriber
    whose filter matches. When a filtered subscriber's row moved out of its
    filter, Pylight sends the same dict with ``"matches": false`` added.

    The bundled ``pylight_formatter`` plugin (``trylast``) produces the
    contract's default shape; an implementation registered by another plugin
    runs first and replaces it.

    Returns: the message dict. First result: the first non-None wins.
    """
