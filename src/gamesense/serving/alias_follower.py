"""Follow a registry alias from a running server: hot reload without a restart."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class AliasFollower:
    """Holds a served model and keeps it in step with a registry alias (any server can use it).

    Requests read :attr:`model` (an atomic attribute swap on reload), so they never wait for the registry;
    a background thread asks ``resolver`` which version the alias points at every ``interval_s`` seconds
    and loads the new one when it moved. A failed reload keeps the old model and is reported in
    :attr:`last_error`.

    Args:
        loader: ``loader(version) -> model`` where the model has ``.name`` and ``.version``.
        resolver: ``resolver() -> version or None``: which version the alias points at now.
        interval_s: polling period of the background thread.
    """

    def __init__(self, loader: Callable[[str], Any], resolver: Callable[[], str | None], interval_s: float = 5.0):
        self.loader, self.resolver, self.interval_s = loader, resolver, interval_s
        self.model = None
        self.last_error: str | None = None
        self.last_check = 0.0
        self.on_reload: Callable[[Any], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Check the alias now; load and swap when it moved. Returns True when a new model was loaded."""
        with self._lock:
            self.last_check = time.time()
            try:
                version = self.resolver()
                if version is None:
                    self.last_error = "alias not set: no model to serve yet"
                    return False
                if self.model is not None and str(self.model.version) == str(version):
                    return False
                model = self.loader(str(version))
            except Exception as err:  # keep serving the old model; report on /healthz
                self.last_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                log.warning("model refresh failed: %s", self.last_error)
                return False
            self.model, self.last_error = model, None
        if self.on_reload:
            self.on_reload(model)
        log.info("serving %s version %s", model.name, model.version)
        return True

    def start(self) -> None:
        """Load now and start the polling thread (daemon)."""
        self.refresh()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="model-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()


def registry_follower(model_name: str, alias: str, loader: Callable[[str], Any], tracking_uri: str | None = None,
                      interval_s: float = 5.0) -> AliasFollower:  # fmt: skip
    """An :class:`AliasFollower` of ``models:/<model_name>@<alias>`` in the MLflow registry.

    Args:
        loader: ``loader(version) -> model`` (e.g. a tabular model or an LLM adapter loader).
    """
    from gamesense.registry.mlflow_store import get_version_by_alias, setup_tracking

    setup_tracking(tracking_uri)

    def resolver() -> str | None:
        mv = get_version_by_alias(model_name, alias)
        return str(mv.version) if mv is not None else None

    return AliasFollower(loader, resolver, interval_s)
