"""The one parser of registry model references: ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION``."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
