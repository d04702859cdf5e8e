"""Training methods, found by name through one registry: one module per method, TRL's layout.

A method named ``X`` is, in order: one registered with :func:`register_method` (tests, notebooks), the
``METHOD`` of the module ``gamesense.training.methods.X``, or an installed plugin's entry point ``X`` in the group
``gamesense.training_methods``. Adding a method (KTO, ORPO, an environment-RL stage) therefore means one module
here with a :class:`~gamesense.training.methods.base.TrainingMethod` subclass; recipes then list it in
``stages`` and give it a section of its name, validated against its TRL config class.
"""

from __future__ import annotations

from gamesense.plugins import PluginRegistry
from gamesense.training.methods.base import TrainingMethod

ENTRY_POINT_GROUP = "gamesense.training_methods"
_METHODS: PluginRegistry[TrainingMethod] = PluginRegistry(__name__, __path__, "METHOD",
                                                          lambda obj: isinstance(obj, TrainingMethod),
                                                          ENTRY_POINT_GROUP)  # fmt: skip


def register_method(method: TrainingMethod) -> TrainingMethod:
    """Register a method instance under ``method.name``.

    Raises:
        TypeError: not a :class:`TrainingMethod`.
    """
    return _METHODS.register(getattr(method, "name", ""), method)


def known_methods() -> list[str]:
    """Names of every findable method (registered, modules here defining ``METHOD``, entry points), sorted."""
    return _METHODS.names()


def find_method(name: str) -> TrainingMethod | None:
    """The method called ``name``, or None."""
    return _METHODS.find(name)


def get_method(name: str) -> TrainingMethod:
    """The method called ``name``.

    Raises:
        LookupError: unknown method (the message lists the known ones).
    """
    method = find_method(name)
    if method is None:
        raise LookupError(f"unknown training method {name!r}; known: {', '.join(known_methods())}")
    return method
