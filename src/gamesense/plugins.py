"""Plugins found by name: one module per plugin in a package, registered objects, or installed entry points.

Gaming tasks (:mod:`gamesense.tasks`) and training methods (:mod:`gamesense.training.methods`) are both found
this way, so adding one means adding one module and nothing else.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

P = TypeVar("P")


class PluginRegistry(Generic[P]):
    """Name -> plugin, looked up in order: registered with :meth:`register`, the ``attribute`` of the module
    ``<package>.<name>``, an entry point ``name`` of ``entry_point_group``.

    Args:
        package: the package holding one module per plugin (``gamesense.tasks``).
        path: that package's ``__path__`` (its modules are listed from it).
        attribute: the module attribute holding the plugin (``TASK``, ``METHOD``).
        accepts: whether an object is a plugin of this kind (``attribute`` of other modules is ignored).
        entry_point_group: entry-point group of installed plugin packages.
        skip: module names that hold no plugin (the interface).
    """

    def __init__(self, package: str, path: Iterable[str], attribute: str, accepts: Callable[[object], bool],
                 entry_point_group: str, skip: tuple[str, ...] = ("base",)):  # fmt: skip
        self.package, self.path, self.attribute, self.accepts = package, list(path), attribute, accepts
        self.entry_point_group, self.skip = entry_point_group, skip
        self._registered: dict[str, P] = {}

    def register(self, name: str, plugin: P) -> P:
        """Register ``plugin`` under ``name`` (tests, notebooks); returns it.

        Raises:
            TypeError: not a plugin of this kind.
        """
        if not self.accepts(plugin):
            raise TypeError(f"not a plugin of {self.package}: {plugin!r}")
        self._registered[name] = plugin
        return plugin

    def _from_module(self, name: str) -> P | None:
        try:
            module = importlib.import_module(f"{self.package}.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"{self.package}.{name}":
                return None
            raise
        plugin = getattr(module, self.attribute, None)
        return plugin if self.accepts(plugin) else None

    def find(self, name: str) -> P | None:
        """The plugin called ``name``, or None."""
        if name in self._registered:
            return self._registered[name]
        if name.isidentifier() and name not in self.skip:
            plugin = self._from_module(name)
            if plugin is not None:
                return plugin
        for ep in importlib.metadata.entry_points(group=self.entry_point_group, name=name):
            return ep.load()
        return None

    def names(self) -> list[str]:
        """Every findable plugin's name (registered, modules defining the attribute, entry points), sorted."""
        names = set(self._registered)
        names.update(info.name for info in pkgutil.iter_modules(self.path)
                     if info.name not in self.skip and self._from_module(info.name) is not None)  # fmt: skip
        names.update(ep.name for ep in importlib.metadata.entry_points(group=self.entry_point_group))
        return sorted(names)
