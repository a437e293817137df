"""A plugin whose hook implementation takes an argument its hook does not pass:
Pylight must refuse it at start-up, in one line."""

from __future__ import annotations

from typing import Any

from pylight import hookimpl


@hookimpl
def pylight_startup(app: Any, settings: Any) -> None:  # no hook passes `settings`
    raise AssertionError("an invalid hook implementation must never be called")
