"""Helpers shared by test modules that need real parts beyond the fixtures in conftest.py: a GameSense working
directory for a module-scoped fixture, and an app behind a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def isolated_workdir(root: Path) -> Iterator[Path]:
    """``GAMESENSE_WORKDIR=<root>/work`` (MLflow and ZenML stores inside it, no outside tracking URI) for the
    block, for fixtures wider than one test (the ``workdir`` fixture does the same per test)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GAMESENSE_WORKDIR", str(root / "work"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield root / "work"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_on_localhost(app, start_timeout_s: float = 30.0) -> Iterator[str]:
    """``app`` served by uvicorn on a free port of 127.0.0.1 in a daemon thread; yields the base URL
    (``http://127.0.0.1:<port>``) once the server has started (or ``start_timeout_s`` passed) and stops it
    after the block."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + start_timeout_s
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
