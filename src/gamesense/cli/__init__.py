"""The ``gamesense`` command line (Typer). ``main`` is the console entry point; ``app`` the Typer app (loaded on
first use, so that :func:`main` can set the process up before PyTorch is imported)."""

from gamesense.cli.launch import prepare_process


def main() -> None:
    """Entry point of the ``gamesense`` command: set the process up (:func:`prepare_process`), then run the CLI."""
    prepare_process()
    from gamesense.cli.main import app

    app(prog_name="gamesense")


def __getattr__(name: str):
    if name == "app":
        from gamesense.cli.main import app

        return app
    raise AttributeError(name)


__all__ = ["app", "main"]
