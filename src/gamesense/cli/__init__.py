"""The ``gamesense`` command line (Typer)."""

from gamesense.cli.main import app

__all__ = ["app"]
