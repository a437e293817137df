"""Pylight: a live REST and WebSocket API for an existing database.

Public API for plugin authors: `hookimpl`, the error classes and `__version__`.
"""

from __future__ import annotations

import pluggy

from pylight.errors import ApiError, PylightError, StartupError

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("pylight")

__all__ = ["ApiError", "PylightError", "StartupError", "__version__", "hookimpl"]
