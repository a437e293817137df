"""A plugin whose hook name has a typo: Pylight must refuse it at start-up."""

from __future__ import annotations

from typing import Any

from pylight import hookimpl


@hookimpl
def pylight_statrup(app: Any) -> None:  # sic: pylight_startup
    raise AssertionError("a misspelled hook must never be called")
