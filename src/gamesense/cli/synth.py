"""``gamesense synth ...``: build training data with a teacher model. The commands come from the tasks
(:meth:`gamesense.tasks.base.Task.synth_commands`), so this group names no task."""

from __future__ import annotations

import typer

from gamesense.tasks.base import CommandHost


def build(host: CommandHost) -> typer.Typer:
    """The ``synth`` group with every task's synth commands.

    Raises:
        ValueError: two tasks bring a synth command of the same name.
    """
    from gamesense.tasks import get_task_class, known_tasks

    app = typer.Typer(help="Build training data with a teacher model (any OpenAI-compatible server), e.g. question-"
                      "answer pairs from game guides.", no_args_is_help=True)  # fmt: skip

    @app.callback()
    def _group() -> None:  # a group even with one command: `gamesense synth qa`, not `gamesense synth`
        pass

    owners: dict[str, str] = {}
    for name in known_tasks():
        for command, function in (get_task_class(name).synth_commands(host) or {}).items():
            if command in owners:
                raise ValueError(f"synth command {command!r} comes from both task {owners[command]!r} and {name!r}")
            owners[command] = name
            app.command(command)(function)
    return app
