"""Model names -> what the engine runs: the base model, or a registry version's LoRA adapter downloaded once.

Registry look-ups (alias -> version, downloads) happen here, called by the API before a request is queued,
never inside the decode loop. Names are parsed by the registry's own parser
(:func:`gamesense.registry.refs.parse_model_name`): ``NAME`` stands for its champion.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from gamesense.models.base import resolve_base_model
from gamesense.registry.mlflow_store import download_version, resolve_version
from gamesense.registry.refs import RegistryRef, is_registry_ref, parse_model_name
from gamesense.serving.llm.requests import Adapter, RequestError
from gamesense.settings import process_alive

log = logging.getLogger(__name__)

#: model names that select the base model (besides the base model's own id)
BASE_NAMES = ("base",)


#: seconds an adapter directory stays on disk after it was last asked for, whatever ``max_cached`` says
PRUNE_AFTER_S = 60.0


def process_cache_dir(root: Path) -> Path:
    """``root/<this process id>``, after deleting the directories that processes which are gone left in ``root``
    (a server's downloads live as long as the server)."""
    root = Path(root)
    if root.is_dir():
        for entry in root.iterdir():
            if entry.is_dir() and not (entry.name.isdigit() and process_alive(int(entry.name))):
                shutil.rmtree(entry, ignore_errors=True)
    return root / str(os.getpid())


class ModelNotFound(LookupError):
    """No served model of that name (HTTP 404, code ``model_not_found``)."""



def adapter_key(name: str, version: str) -> str:
    """PEFT adapter name of a registry model version (a valid module name: letters, digits, ``_``)."""
    return re.sub(r"\W", "_", f"{name}_v{version}")


def same_base(a: str, b: str) -> bool:
    """True when two base-model references name the same model (equal, or resolving to the same local copy)."""
    if a == b:
        return True
    try:
        ra, rb = resolve_base_model(a), resolve_base_model(b)
    except FileNotFoundError:
        return False
    return Path(ra).expanduser().resolve() == Path(rb).expanduser().resolve() if Path(ra).exists() and Path(rb).exists() \
        else ra == rb


@dataclass(frozen=True)
class ServedModel:
    """A registry model the server offers: its name and aliases (for ``/v1/models``)."""

    name: str
    aliases: tuple[str, ...] = ()


class ModelResolver:
    """Maps a request's ``model`` to the base model (None) or an :class:`Adapter` of the registry.

    Names: ``base`` or the base model's id -> base; ``NAME`` -> its champion; ``NAME@ALIAS``;
    ``NAME/VERSION``; ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION``. Alias -> version answers are cached
    for ``alias_ttl_s`` seconds; each version is downloaded once into ``cache_dir``.

    Args:
        base: the served base model reference.
        models: registry model names to serve; None: every registered model with a version tagged with a
            ``task`` and a ``base_model`` that is ``base`` (looked up again at most every ``alias_ttl_s`` when a
            request names a model not seen yet).
        alias_ttl_s: how long an alias -> version answer is reused.
        cache_dir: where adapter versions are downloaded.
        max_cached: most adapter versions kept on disk (None: all); beyond it the least recently asked for, unused
            for :data:`PRUNE_AFTER_S`, is deleted (one in memory stays served; asked for again, it is downloaded
            again).
    """

    def __init__(self, base: str, models: Sequence[str] | None, alias_ttl_s: float, cache_dir: Path,
                 max_cached: int | None = None):  # fmt: skip
        self.base, self.alias_ttl_s, self.cache_dir = base, alias_ttl_s, Path(cache_dir)
        self.max_cached = max_cached
        self._last_used: dict[str, float] = {}
        self.explicit = list(models) if models is not None else None
        self._served: dict[str, ServedModel] = {}
        self._listed_at = float("-inf")
        self._versions: dict[tuple[str, str], tuple[object, float]] = {}
        self._adapters: dict[str, Adapter] = {}
        self._lock = threading.Lock()

    def is_base(self, name: str) -> bool:
        return name in BASE_NAMES or name == self.base

    def served(self, refresh: bool = False) -> dict[str, ServedModel]:
        """The registry models served (name -> :class:`ServedModel`), listed again after ``alias_ttl_s``."""
        with self._lock:
            if not refresh and time.monotonic() - self._listed_at < self.alias_ttl_s:
                return dict(self._served)
            client = MlflowClient()
            found: dict[str, ServedModel] = {}
            if self.explicit is not None:
                for name in self.explicit:
                    try:
                        registered = client.get_registered_model(name)
                    except MlflowException:
                        log.warning("model %s is not in the registry (yet)", name)
                        found[name] = ServedModel(name)
                        continue
                    found[name] = ServedModel(name, tuple(sorted(registered.aliases or {})))
            else:
                for registered in client.search_registered_models():
                    versions = client.search_model_versions(f"name='{registered.name}'")
                    if any((v.tags or {}).get("task") and same_base((v.tags or {}).get("base_model", ""), self.base)
                           for v in versions):  # fmt: skip
                        found[registered.name] = ServedModel(registered.name, tuple(sorted(registered.aliases or {})))
            self._served, self._listed_at = found, time.monotonic()
            return dict(found)

    def parse(self, name: str) -> RegistryRef:
        """The registry reference a model name stands for (a bare name: its champion).

        Raises:
            ModelNotFound: a name of none of the accepted forms.
        """
        try:
            return parse_model_name(name)
        except ValueError as err:
            raise ModelNotFound(str(err) if is_registry_ref(name) else f"the model {name!r} does not exist") from None

    def resolve(self, name: str) -> Adapter | None:
        """The adapter a model name selects now (None: the base model). May call the registry and download.

        Raises:
            ModelNotFound: unknown model, alias or version, or a model this server does not serve.
            RequestError: the version is not a LoRA adapter, or was trained on another base model.
        """
        if self.is_base(name):
            return None
        ref = self.parse(name)
        served = self.served()
        if ref.name not in served and self.explicit is None:
            served = self.served(refresh=time.monotonic() - self._listed_at >= min(self.alias_ttl_s, 1.0))
        if ref.name not in served:
            raise ModelNotFound(f"the model {name!r} does not exist (served: {', '.join(['base', *served]) })")
        key = (ref.name, ref.alias or f"/{ref.version}")
        with self._lock:
            cached = self._versions.get(key)
            if cached is None or (ref.alias and time.monotonic() - cached[1] >= self.alias_ttl_s):
                try:
                    cached = (resolve_version(ref), time.monotonic())
                except LookupError as err:
                    raise ModelNotFound(str(err)) from None
                self._versions[key] = cached
            version = cached[0]
            akey = adapter_key(ref.name, str(version.version))
            self._last_used[akey] = time.monotonic()
            if akey in self._adapters:
                return self._adapters[akey]
            self._prune(keep=akey)
            path = download_version(version, self._fresh_dir(akey))
            config_file = path / "adapter_config.json"
            if not config_file.is_file():
                raise RequestError(f"{ref.name} version {version.version} is not a LoRA adapter (no adapter_config.json)",
                                   param="model", code="model_not_supported")  # fmt: skip
            config = json.loads(config_file.read_text())
            trained_on = str(config.get("base_model_name_or_path") or (version.tags or {}).get("base_model", ""))
            if not same_base(trained_on, self.base):
                raise RequestError(f"{ref.name} version {version.version} is an adapter of {trained_on!r}, and this "
                                   f"server serves the base model {self.base!r}", param="model",
                                   code="model_not_supported")  # fmt: skip
            adapter = Adapter(akey, path, ref.name, str(version.version), int(config.get("r") or 0))
            self._adapters[akey] = adapter
            return adapter

    def _prune(self, keep: str) -> None:
        """Delete the least recently asked-for adapter directories beyond ``max_cached`` (each idle for
        :data:`PRUNE_AFTER_S`, so a request resolved a moment ago still finds its files)."""
        if self.max_cached is None:
            return
        now = time.monotonic()
        idle = sorted((self._last_used.get(k, 0.0), k) for k in self._adapters if k != keep)
        for used, key in idle[: max(0, len(self._adapters) + 1 - self.max_cached)]:
            if now - used < PRUNE_AFTER_S:
                break
            shutil.rmtree(self._adapters.pop(key).path, ignore_errors=True)
            log.info("deleted the downloaded adapter %s (least recently used)", key)

    def close(self) -> None:
        """Delete every downloaded adapter (the server stops)."""
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        self._adapters.clear()

    def _fresh_dir(self, key: str) -> Path:
        path = self.cache_dir / key
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path
