"""Helpers shared by the CLI modules."""

from __future__ import annotations

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
