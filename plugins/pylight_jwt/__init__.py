"""Bearer JWT authentication for Pylight (see :mod:`pylight_jwt.tokens` for the settings).

Inert unless a ``[plugin:jwt]`` section is present: PyJWT and cryptography are
imported only then, so a server without it does not carry them.
"""

from __future__ import annotations

import importlib
from typing import Any

from pylight import hookimpl

SECTION = "jwt"


def __getattr__(name: str) -> Any:
    """The plugin's names (load, claim, JwtAuth, ...), as before they moved to .tokens."""
    module = importlib.import_module("pylight_jwt.tokens")
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module 'pylight_jwt' has no attribute {name!r}") from None


@hookimpl
def pylight_startup(app: Any) -> None:
    """Validate ``[plugin:jwt]`` and, when present, register its hooks for this server."""
    settings = app.config.plugin_section(SECTION)
    if not settings:
        return  # no section: the plugin stays inert
    from pylight_jwt.tokens import load

    app.auth.add_provider(load(settings, app.tables), f"{SECTION}.auth")
