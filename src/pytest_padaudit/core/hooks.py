"""The project's plugin manager: built-in adapters, entry points, and registered plugins."""

from __future__ import annotations

import inspect
import types
from typing import Any

import pluggy

from ..render import repro
from . import hookspecs
from .hookspecs import hookimpl

__all__ = ["Bridge", "hookimpl", "plugin_manager", "register", "unregister"]
ENTRY_POINT_GROUP = "padaudit"
#: padaudit's own hook names, which a conftest.py may define unmarked.
_HOOK_NAMES = tuple(name for name in vars(hookspecs) if name.startswith("padaudit_"))


class _Manager(pluggy.PluginManager):
    """Accept unmarked ``padaudit_*`` functions as hook implementations, as pytest does."""

    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("padaudit_") and hasattr(hookspecs, name):
            method = getattr(plugin, name, None)
            if inspect.isroutine(method):
                return {}
        return opts


#: The one padaudit plugin manager of the process: ``audit()`` runs outside pytest too, so
#: adapters and ``register()``ed plugins live here, not with a pytest session. A pytest
#: session adds its conftest hooks through its own ``plugin.Bridge`` and removes them at exit.
_manager: _Manager | None = None


def plugin_manager() -> pluggy.PluginManager:
    """Return the shared manager, creating it (and loading entry points) on first use."""
    global _manager
    if _manager is None:
        from ..adapters import BUILTIN_ADAPTERS

        manager = _Manager("padaudit")
        manager.add_hookspecs(hookspecs)
        for adapter in BUILTIN_ADAPTERS:
            manager.register(adapter, name=f"padaudit-builtin-{type(adapter).__name__}")
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        _manager = manager
    return _manager


def register(plugin: object, name: str | None = None) -> str | None:
    """Register a plugin (adapter, batch maker, result hook); later ones are asked first."""
    manager = plugin_manager()
    if manager.is_registered(plugin):
        return manager.get_name(plugin)
    return manager.register(plugin, name=name)


def unregister(plugin: object) -> None:
    """Remove a plugin registered with :func:`register`."""
    manager = plugin_manager()
    if manager.is_registered(plugin):
        manager.unregister(plugin)


class Bridge:
    """Let a conftest.py implement padaudit's own hooks by defining ``padaudit_*`` functions.

    A pytest plugin: the pytest plugin registers one per pytest plugin manager (so per
    session). It registers such conftest modules with padaudit's plugin manager and takes
    them out again when the session ends. It needs nothing of pytest itself.
    """

    def __init__(self) -> None:
        self.plugins: list[object] = []

    def pytest_plugin_registered(self, plugin: object) -> None:
        names = vars(plugin) if isinstance(plugin, types.ModuleType) else dir(plugin)
        if plugin is self or not any(name in names for name in _HOOK_NAMES):
            return
        register(plugin)
        self.plugins.append(plugin)

    def pytest_unconfigure(self) -> None:
        if self.plugins:
            for plugin in self.plugins:
                unregister(plugin)
            self.plugins.clear()


repro.use_plugin_manager(plugin_manager)  # reproduce lines ask the adapters for their objects
