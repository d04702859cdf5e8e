"""Helpers shared by the CLI modules."""

from __future__ import annotations

import logging
from typing import NoReturn

import typer


def fail(err: Exception | str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` (one line, red, on stderr) and exit with ``code`` (2: bad input)."""
    typer.secho(f"error: {err}", fg="red", err=True)
    raise typer.Exit(code) from None


def load_recipe_or_exit(recipe: str, model_cls, overrides: list[str] | None):
    """Load and validate a recipe; a bad one exits with code 2 and the one-line :class:`RecipeError`."""
    from gamesense.config import RecipeError, load_recipe

    try:
        return load_recipe(recipe, model_cls, overrides or [])
    except RecipeError as err:
        typer.secho(str(err), fg="red", err=True)
        raise typer.Exit(2) from None


def show_progress_logs() -> None:
    """Send GameSense's INFO messages (thread plan, cached steps, set-aside rows) to stderr, whatever other
    libraries (ZenML, MLflow) did to the root logger, and quiet the chattiest libraries."""
    logger = logging.getLogger("gamesense")
    logger.setLevel(logging.INFO)
    if not any(getattr(h, "_gamesense", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._gamesense = True
        logger.addHandler(handler)
        logger.propagate = False
    for noisy in ("httpx", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
