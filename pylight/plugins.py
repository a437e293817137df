"""Builds the plugin manager: hook specifications, entry points and `[plugins] load`."""

from __future__ import annotations

import difflib
import importlib
import re
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
        except pluggy.PluginValidationError as exc:
            raise StartupError(f"an installed pylight plugin is invalid: {invalid(pm, exc)}") from None
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
            raise StartupError(f"[plugins] load: plugin module {name!r} is invalid: "
                               f"{invalid(pm, exc)}") from None
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise StartupError(invalid(pm, exc)) from None
    return pm


def invalid(pm: pluggy.PluginManager, exc: pluggy.PluginValidationError) -> str:
    """pluggy's refusal of a plugin as one line: the plugin, the hook and what to change.

    pluggy's own messages span several lines and name the module by its repr.
    """
    plugin = pm.get_name(exc.plugin) or getattr(exc.plugin, "__name__", None) or repr(exc.plugin)
    unknown = sorted(hook.name for hook in pm.get_hookcallers(exc.plugin) or []
                     if not hook.has_spec())
    if unknown:  # check_pending(): a misspelt hook name
        known = [name for name in dir(hookspecs) if name.startswith("pylight_")]
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        return (f"plugin {plugin} implements unknown hook(s) {', '.join(hints)}; the known "
                "hooks are listed in pylight/hookspecs.py")
    text = str(exc)
    hook = re.search(r"for hook '(\w+)'", text)
    extra = re.search(r"Argument\(s\) \{(.*)\} are declared", text)
    if hook and extra and hasattr(pm.hook, hook.group(1)):
        spec = getattr(pm.hook, hook.group(1)).spec
        takes = ", ".join(spec.argnames) if spec else ""
        return (f"plugin {plugin}: its {hook.group(1)} takes {extra.group(1)}, which the hook "
                f"does not pass (it passes: {takes or 'nothing'}; an implementation may take "
                "any of them, in any order)")
    return f"plugin {plugin}: " + "; ".join(line.strip() for line in text.splitlines() if line.strip())
