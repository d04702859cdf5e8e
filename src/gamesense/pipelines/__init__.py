"""ZenML pipelines. Call :func:`init_zenml` before importing zenml: it keeps ZenML's local store inside the
project working directory and turns analytics and chatty logging off."""

from __future__ import annotations

import os
from pathlib import Path


def init_zenml() -> Path:
    """Point ZenML at ``<workdir>/zenml`` (unless ``ZENML_CONFIG_PATH`` is already set), disable analytics,
    log at WARN. Idempotent; must run before the first ``import zenml``.

    Returns:
        The ZenML config directory in use.
    """
    from gamesense.settings import work_dir

    path = Path(os.environ.setdefault("ZENML_CONFIG_PATH", str(work_dir() / "zenml")))
    path.mkdir(parents=True, exist_ok=True)
    os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
    os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "WARN")
    os.environ.setdefault("AUTO_OPEN_DASHBOARD", "false")
    return path
