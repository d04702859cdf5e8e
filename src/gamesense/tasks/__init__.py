"""Gaming tasks, found by name through one registry.

A task named ``X`` is, in order: one registered with :func:`register_task` (tests, notebooks), the ``TASK``
of the module ``gamesense.tasks.X``, or an installed plugin's entry point ``X`` in the group
``gamesense.tasks``. Adding a task therefore means one module here (see :mod:`gamesense.tasks.base`) and
one recipe in ``recipes/``; nothing else names it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil

from gamesense.tasks.base import Task

_REGISTERED: dict[str, type[Task]] = {}
ENTRY_POINT_GROUP = "gamesense.tasks"


def register_task(cls: type[Task]) -> type[Task]:
    """Register a :class:`Task` subclass under ``cls.name`` (usable as a class decorator).

    Raises:
        TypeError: not a Task subclass.
    """
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"register_task expects a Task subclass, got {cls!r}")
    _REGISTERED[cls.name] = cls
    return cls


def known_tasks() -> list[str]:
    """Names of every findable LLM task (registered, built-in modules defining ``TASK``, entry points)."""
    names = set(_REGISTERED)
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and _module_task(info.name) is not None:
            names.add(info.name)
    names.update(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def _module_task(name: str) -> type[Task] | None:
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{name}":
            return None
        raise
    task = getattr(module, "TASK", None)
    return task if isinstance(task, type) and issubclass(task, Task) else None


def get_task_class(name: str) -> type[Task]:
    """The :class:`Task` subclass called ``name``.

    Raises:
        LookupError: unknown task (the message lists the known ones).
    """
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name.isidentifier():
        task = _module_task(name)
        if task is not None:
            return task
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name):
        return ep.load()
    raise LookupError(f"unknown task {name!r}; known: {', '.join(known_tasks())}")


def get_task(name: str, options: dict | None = None) -> Task:
    """An instance of task ``name`` with its options validated.

    Raises:
        LookupError: unknown task; RecipeError: bad options (names ``task_options.<key>``).
    """
    return get_task_class(name)(options)
