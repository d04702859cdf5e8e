"""Where GameSense keeps things on disk.

- ``GAMESENSE_HOME`` (default ``~/.cache/gamesense``): caches shared by all projects, e.g. the base model
  converted from GGUF to safetensors.
- ``GAMESENSE_WORKDIR`` (default ``./.gamesense`` in the current directory): one project's runs: the MLflow
  SQLite store and artifacts, the ZenML local store, checkpoints, predictions, reports.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from gamesense.config import resolve_data_path


def home_dir() -> Path:
    """Cache directory shared across projects (``GAMESENSE_HOME`` or ``~/.cache/gamesense``), created on demand."""
    path = Path(os.environ.get("GAMESENSE_HOME") or Path.home() / ".cache" / "gamesense").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def work_dir() -> Path:
    """The project's working directory (``GAMESENSE_WORKDIR`` or ``./.gamesense``), created on demand."""
    path = Path(os.environ.get("GAMESENSE_WORKDIR") or Path.cwd() / ".gamesense").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


WORKDIR_PLACEHOLDER = "{workdir}"


def data_path(path: str | Path) -> Path:
    """A recipe's data path on disk: ``{workdir}`` replaced by :func:`work_dir` (for files a task writes
    itself), then resolved like :func:`gamesense.config.resolve_data_path`."""
    text = str(path)
    if WORKDIR_PLACEHOLDER in text:
        text = text.replace(WORKDIR_PLACEHOLDER, str(work_dir()))
    return resolve_data_path(text)


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name one file (also through links), e.g. an ``--output`` that would overwrite its
    input; False when ``a`` does not exist yet and names another path."""
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def process_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` runs on this machine (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file renamed into place, so a reader (another
    thread or process) sees the old file or the whole new one, never half of it; parent folders are created.

    Raises:
        OSError: the folder or file cannot be written (the temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
