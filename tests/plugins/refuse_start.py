"""A start-up hook that stops start-up with StartupError, the documented way."""

from __future__ import annotations

from typing import Any

from pylight import StartupError, hookimpl


@hookimpl
def pylight_startup(app: Any) -> None:
    raise StartupError("refuse_start plugin: the licence key is missing ([plugin:refuse_start] key)")
