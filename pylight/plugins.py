"""Builds the plugin manager: hook specifications, entry points and `[plugins] load`."""

from __future__ import annotations

import importlib
from collections.abc import Iterable

import pluggy

from pylight import hookspecs
from pylight.errors import StartupError

PROJECT = "pylight"


def make_plugin_manager(load: Iterable[str] = (), entry_points: bool = True) -> pluggy.PluginManager:
    """The one place a plugin manager is made.

    Plugins come from the ``pylight`` entry-point group (the bundled backends
    and formatter among them) and from the modules named in ``[plugins] load``.
    ``check_pending()`` turns a misspelled hook implementation into a start-up
    error instead of a hook that silently never runs.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    if entry_points:
        try:
            pm.load_setuptools_entrypoints(PROJECT)
        except Exception as exc:  # a broken installed plugin must not be a traceback
            raise StartupError(f"an installed pylight plugin failed to load: {exc}") from None
    for name in load:
        if pm.has_plugin(name):
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise StartupError(
                f"[plugins] load: cannot import plugin module {name!r} ({exc}); "
                "check the name and that it is installed"
            ) from None
        except Exception as exc:  # the module itself is broken: still one line, no traceback
            raise StartupError(
                f"[plugins] load: plugin module {name!r} failed while importing: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if pm.is_registered(module):
            # Already loaded through its entry point (e.g. a bundled backend
            # named in `load` too); pluggy would refuse a second registration.
            continue
        try:
            pm.register(module, name=name)
        except pluggy.PluginValidationError as exc:
            # e.g. a hook implementation taking an argument its spec does not have
            raise StartupError(f"[plugins] load: plugin module {name!r} is invalid: {exc}") from None
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        # Name the plugin and the hooks, not the module's repr twice.
        plugin = pm.get_name(exc.plugin) or repr(exc.plugin)
        unknown = sorted(
            hook.name for hook in pm.get_hookcallers(exc.plugin) or []
            if not hook.has_spec()
        )
        raise StartupError(
            f"plugin {plugin} implements unknown hook(s) {', '.join(unknown) or '?'} "
            "(misspelled? the known hooks are listed in pylight/hookspecs.py)"
        ) from None
    return pm

