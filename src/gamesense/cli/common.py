"""Helpers shared by the CLI modules."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import NoReturn

import click
import typer
from typer.exceptions import TyperException


def fail(err: Exception | str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` (one line, red, on stderr) and exit with ``code`` (2: bad input); with
    ``--debug`` an exception is raised again instead, with its traceback."""
    if isinstance(err, Exception) and debug_enabled():
        raise err
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


# --- one error boundary for every command ----------------------------------------------------------------

#: errors that mean "the input (a file, a field, a reference) is not usable": one line, exit 2. ValueError
#: covers the task's DataError/SchemaError, pandas' EmptyDataError, UnicodeDecodeError and pydantic errors;
#: LookupError unknown models/aliases; OSError unreadable or unwritable paths.
KNOWN_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, OSError)
_debug = {"on": False}
#: raised on purpose by commands or Typer: let Typer handle them (exit codes, usage messages)
PASS_THROUGH: tuple[type[BaseException], ...] = (typer.Exit, typer.Abort, TyperException, click.exceptions.ClickException,
                                                 KeyboardInterrupt, SystemExit)  # fmt: skip


def set_debug(on: bool) -> None:
    """``--debug``: let errors through with their traceback instead of the one-line message."""
    _debug["on"] = on


def debug_enabled() -> bool:
    """True with ``--debug`` or ``GAMESENSE_DEBUG=1``."""
    return _debug["on"] or os.environ.get("GAMESENSE_DEBUG", "") not in ("", "0")


def error_line(err: BaseException) -> str:
    """The one line a user sees for ``err``: its first non-empty line (the rest is traceback or detail)."""
    text = str(err).strip()
    if callable(getattr(err, "errors", None)) and hasattr(err, "title"):  # pydantic: the first field and why
        first = err.errors()[0]
        text = f"{'.'.join(str(part) for part in first.get('loc', ())) or err.title}: {first.get('msg')}"
    elif isinstance(err, OSError) and err.filename and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    elif isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first or type(err).__name__


def guarded(command: Callable) -> Callable:
    """Wrap a CLI command in the error boundary: known errors (:data:`KNOWN_ERRORS`) print ``error: <one line>``
    and exit 2; anything else prints ``internal error (<type>): <one line>`` and exits 2 as well, so that exit
    code 1 keeps its one meaning (``monitor``: retraining due). ``--debug`` re-raises with the traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PASS_THROUGH:  # exits and usage errors (typer.BadParameter...): Typer reports them itself
            raise
        except KNOWN_ERRORS as err:
            if debug_enabled():
                raise
            fail(error_line(err))
        except Exception as err:
            if debug_enabled():
                raise
            typer.secho(f"internal error ({type(err).__name__}): {error_line(err)}\n"
                        "run again with --debug for the traceback", fg="red", err=True)  # fmt: skip
            raise typer.Exit(2) from None

    return run


def install_error_boundary(app: typer.Typer) -> None:
    """Wrap every command of ``app`` and of its sub-apps (however deep) in :func:`guarded`, once."""
    for info in app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "_guarded", False):
            info.callback = guarded(info.callback)
            info.callback._guarded = True
    for group in app.registered_groups:
        if group.typer_instance is not None:
            install_error_boundary(group.typer_instance)


# --- options both servers share ----------------------------------------------------------------------------

ApiKeyOpt = typer.Option(None, "--api-key", help="accepted API key, sent as Authorization: Bearer KEY (repeatable; "
                         "also --api-keys-file and GAMESENSE_API_KEYS, comma-separated)")  # fmt: skip
ApiKeysFileOpt = typer.Option(None, "--api-keys-file", help="file with one API key per line (# comments)")
NoAuthOpt = typer.Option(False, "--no-auth", help="serve on a non-loopback address without keys (something in front "
                         "of the server checks callers)")  # fmt: skip
PublicOpt = typer.Option(None, "--public", help="path open without a key besides /livez, e.g. /metrics for a scraper "
                         "(repeatable)")  # fmt: skip

#: seconds uvicorn waits for open requests after SIGTERM before it closes them
GRACEFUL_SHUTDOWN_S = 10


def server_api_keys(host: str, keys: list[str] | None, keys_file, no_auth: bool) -> tuple[str, ...]:
    """The API keys a server accepts (:func:`gamesense.serving.access.load_api_keys`); exits 2 with one line for a
    bad keys file or a non-loopback ``host`` without keys and without ``--no-auth``. Keys are never printed."""
    from gamesense.serving.access import bind_refusal, load_api_keys

    try:
        found = load_api_keys(keys or (), keys_file)
    except ValueError as err:
        fail(err)
    refusal = bind_refusal(host, found, no_auth)
    if refusal:
        fail(refusal)
    typer.echo(f"API keys: {len(found)} accepted" if found else "API keys: none (anyone who reaches the port may call it)",
               err=True)  # fmt: skip
    return found
