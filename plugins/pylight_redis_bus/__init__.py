"""The Redis bus between Pylight processes (see :mod:`pylight_redis_bus.bus`).

Inert unless ``[bus] url`` is set: the Redis client is imported only then, so a
server without a bus does not carry it (a few megabytes, and start-up time).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pylight import hookimpl
from pylight.backend import redact_url, url_scheme
from pylight.errors import StartupError

if TYPE_CHECKING:
    from pylight.app import Pylight
    from pylight_redis_bus.bus import RedisBus

SCHEMES = ("redis", "rediss", "unix")


def __getattr__(name: str) -> Any:
    """The bus's names (RedisBus, encode_change, ...), as before they moved to .bus."""
    module = importlib.import_module("pylight_redis_bus.bus")
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module 'pylight_redis_bus' has no attribute {name!r}") from None


@hookimpl
def pylight_change_bus(app: Pylight) -> RedisBus | None:
    url = app.config.bus.url
    if not url:
        return None
    if url_scheme(url) not in SCHEMES:
        raise StartupError(f"[bus] url {redact_url(url)!r}: expected redis://host:port/db, "
                           "rediss://... or unix:///path.sock")
    if not app.config.bus.prefix:
        raise StartupError("[bus] prefix must not be empty")
    from pylight_redis_bus.bus import RedisBus

    return RedisBus(app)
