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
    from tornado.httputil import HTTPServerRequest

    from pylight.app import Pylight
    from pylight.auth import Identity
    from pylight.backend import Backend
    from pylight.changes import Change
    from pylight.publisher import Bus

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

    A plugin configured by its ``[plugin:NAME]`` section may register its
    auth hook implementations here with ``app.auth.add_provider(obj, name)``,
    so that without the section it adds nothing and an open server pays
    nothing for auth. The bundled apikeys and jwt plugins do this.

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
def pylight_change_bus(app: Pylight) -> Bus | None:
    """Offer a bus that carries committed changes between Pylight processes.

    Called once while the server is built, after the database has been
    reflected. Return None unless your configuration asks for a bus (the
    bundled Redis bus answers only with ``[bus] url``). A bus (see
    :class:`pylight.publisher.Bus`) has ``relay(change)``, called on the event
    loop in commit order for every change this process publishes, and
    ``start()`` / ``stop()``, which the server runs as it starts and stops.
    The bus numbers each change the same way on every process and hands it
    to each process's ``app.hub.deliver(change, seq)``, this one included;
    while it cannot, it delivers locally (``app.hub.deliver(change)``). Raise
    :class:`pylight.StartupError` for a configuration it cannot use.

    Returns: a bus or None. First result: the first non-None wins.
    """


@hookspec(firstresult=True)
def pylight_format_notification(change: Change, seq: int, app: Pylight) -> dict[str, Any] | None:
    """Shape the WebSocket message for one committed change.

    Called once per change (not once per subscriber) on the event loop, right
    after the change was given its ``seq``. ``change`` is a
    :class:`pylight.hub.Change` (``table``, ``event``, ``pk``, ``record``,
    ``old``, ``at``) holding JSON values of visible columns only. Return a
    JSON-serialisable dict; it is encoded once and sent to every subscriber
    whose filter matches. When a filtered subscriber's row moved out of its
    filter, Pylight sends the same dict with ``"matches": false`` added. When
    the row moved out of the rows an auth row filter lets a subscriber see,
    the hook is called once more for that change with ``record`` and ``old``
    None and ``pk`` the row's key as it was, and ``"matches": false`` is added
    to what it returns (see :mod:`pylight.messages`).

    ``app`` is the server the change belongs to: a formatter with settings
    reads its ``[plugin:NAME]`` section with ``app.config.plugin_section(NAME)``
    (best once, in ``pylight_startup``, keeping what it built in
    ``app.state[NAME]``), so two servers in one process each format with their
    own. An implementation may leave ``app`` out: ``(change, seq)`` still works.

    The bundled ``pylight_formatter`` plugin (``trylast``) produces the
    contract's default shape; an implementation registered by another plugin
    runs first and replaces it.

    Returns: the message dict. First result: the first non-None wins.
    """


@hookspec
def pylight_authenticate(request: HTTPServerRequest, token: str | None, app: Pylight) -> Any:
    """Identify the caller of an HTTP request or a WebSocket upgrade.

    Called once per HTTP request, once before a WebSocket upgrade (so a
    refusal is a 401 before the 101), and again on an open socket when the
    client sends ``{"type": "auth", "token": ...}``. ``request`` is Tornado's
    ``HTTPServerRequest`` (headers, ``query_arguments``, ``remote_ip``);
    ``token`` is the bearer token Pylight found (``Authorization: Bearer``,
    else ``?token=``, or the refreshed one), or None. Other credentials, such
    as an ``X-API-Key`` header, the plugin reads from ``request`` itself.

    Return a :class:`pylight.auth.Identity` when the credential is yours and
    valid, None when there is no credential of your kind, and raise
    ``pylight.auth.unauthorized("...")`` (a 401) when it is yours but bad
    (wrong signature, expired, wrong audience). May be a coroutine function.

    Returns: an Identity or None. All implementations run and are awaited; the
    first non-None identity is the caller's.
    """


@hookspec
def pylight_authorize(identity: Identity | None, action: str, table: str,
                      record: dict[str, Any] | None, app: Pylight) -> Any:
    """Allow or refuse one action on one table, and where relevant one record.

    ``action`` is ``read``, ``create``, ``update`` or ``delete``; ``identity``
    is what ``pylight_authenticate`` gave (None: anonymous). Called before a
    REST request touches the database with ``record`` None (may the caller do
    this on the table at all?), then for a create with each body's values,
    and for a read of one row, an update or a delete with the stored row (a
    write by filter or an upsert asks about each stored row it would change,
    before it, and changes nothing if one is refused; an upsert that may
    update asks ``update`` of the table as well as ``create``);
    and for every change notification before it reaches each subscriber
    (action ``read``, ``record`` the changed row), so two subscribers of one
    table may receive different changes.

    Return False to refuse (the client gets 401 when anonymous, else 403
    naming the missing permission), True or None to have no objection. May be
    a coroutine function; keep it cheap, it runs once per change per
    subscriber.

    Returns: True, False or None. All implementations run; any False refuses.
    """


@hookspec
def pylight_row_filter(identity: Identity | None, table: str, app: Pylight) -> str | None:
    """Restrict which rows of ``table`` the caller sees, as a query-language filter.

    Return a query string in the REST query language, e.g.
    ``"user_id=eq.7"`` or ``"or=(owner.eq.7,public.is.true)"``, or None for
    no restriction. The filter is ANDed into every REST read (a row outside
    it is a 404), checked on every row a create or update stores (a 403 and
    nothing is written otherwise), and ANDed into the subscriber's filter on
    ``/ws/<table>``, so a user sees only their own rows over REST and
    WebSocket alike. Called on the event loop; must not block.

    Returns: a filter string or None. All implementations run; their filters
    are ANDed.
    """
