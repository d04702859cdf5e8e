"""Gaming tasks, found by name through one registry.

A task named ``X`` is, in order: one registered with :func:`register_task` (tests, notebooks), the ``TASK``
of the module ``gamesense.tasks.X``, or an installed plugin's entry point ``X`` in the group
``gamesense.tasks``. Adding a task therefore means one module here (see :mod:`gamesense.tasks.base`) and
one recipe in ``recipes/``; nothing else names it.
"""

from __future__ import annotations

from gamesense.plugins import PluginRegistry
from gamesense.tasks.base import Task

ENTRY_POINT_GROUP = "gamesense.tasks"
_TASKS: PluginRegistry[type[Task]] = PluginRegistry(__name__, __path__, "TASK",
                                                    lambda obj: isinstance(obj, type) and issubclass(obj, Task),
                                                    ENTRY_POINT_GROUP)  # fmt: skip


def register_task(cls: type[Task]) -> type[Task]:
    """Register a :class:`Task` subclass under ``cls.name`` (usable as a class decorator).

    Raises:
        TypeError: not a Task subclass.
    """
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"register_task expects a Task subclass, got {cls!r}")
    return _TASKS.register(cls.name, cls)


def known_tasks() -> list[str]:
    """Names of every findable LLM task (registered, built-in modules defining ``TASK``, entry points)."""
    return _TASKS.names()


def get_task_class(name: str) -> type[Task]:
    """The :class:`Task` subclass called ``name``.

    Raises:
        LookupError: unknown task (the message lists the known ones).
    """
    task = _TASKS.find(name)
    if task is None:
        raise LookupError(f"unknown task {name!r}; known: {', '.join(known_tasks())}")
    return task


def get_task(name: str, options: dict | None = None) -> Task:
    """An instance of task ``name`` with its options validated.

    Raises:
        LookupError: unknown task; RecipeError: bad options (names ``task_options.<key>``).
    """
    return get_task_class(name)(options)
