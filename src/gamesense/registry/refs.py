"""The one parser of registry model references, and the aliases every GameSense model moves through.

Accepted forms: ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` (MLflow's), and where a model name is
expected (the LLM server's ``model`` field, the engagement API) also ``NAME`` (its :data:`CHAMPION`),
``NAME@ALIAS`` and ``NAME/VERSION``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: the alias of the version that serves; a bare model name stands for it
CHAMPION = "champion"
#: the alias of the newest registered version that has not (yet) beaten the champion
CHALLENGER = "challenger"

_REGISTRY_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class RegistryRef:
    """A reference to one registered model version, by alias or by number (exactly one is set)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        """The reference as MLflow writes it."""
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def is_registry_ref(ref: str) -> bool:
    """True for anything that starts like a registry reference (``models:/``), well formed or not."""
    return ref.startswith("models:/")


def parse_model_ref(ref: str) -> RegistryRef:
    """Parse ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

    Raises:
        ValueError: not of either form (the message shows both).
    """
    match = _REGISTRY_REF.match(ref)
    if not match:
        raise ValueError(f"model reference {ref!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return RegistryRef(match["name"], match["alias"], match["version"])


def parse_model_name(name: str, default_alias: str = CHAMPION) -> RegistryRef:
    """Parse a model name as a user or client writes it: ``NAME`` (its ``default_alias``), ``NAME@ALIAS``,
    ``NAME/VERSION``, or either ``models:/`` form.

    >>> parse_model_name("gamesense-viggo"), parse_model_name("gamesense-viggo/3").version
    (RegistryRef(name='gamesense-viggo', alias='champion', version=None), '3')

    Raises:
        ValueError: none of those forms (e.g. a path, or a name with spaces).
    """
    if not is_registry_ref(name) and not re.search(r"[/@\s]", name) and name:
        return RegistryRef(name, alias=default_alias)
    try:
        return parse_model_ref(name if is_registry_ref(name) else f"models:/{name}")
    except ValueError:
        if is_registry_ref(name):
            raise
        raise ValueError(f"model name {name!r}: expected NAME, NAME@ALIAS or NAME/VERSION") from None
