"""``gamesense snake record`` and ``gamesense snake play``: record an expert's games, watch any player play."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from gamesense.tasks.base import CommandHost
from gamesense.tasks.snake.game import MAX_GRID, MIN_GRID
from gamesense.tasks.snake.trajectories import AGENT_NAMES, RECORD_OUTCOMES, record_games, summarize


def _summary_table(title: str, rows: dict[str, dict]):
    from rich.table import Table

    table = Table(title=title)
    for col in ("player", "games", "mean score", "median score", "mean steps", *RECORD_OUTCOMES, "moves/s"):
        table.add_column(col, justify="right" if col != "player" else "left")
    for name, s in rows.items():
        outcomes = [f"{s['outcomes'].get(o, 0)}" for o in RECORD_OUTCOMES]
        table.add_row(name, str(s["games"]), f"{s['mean_score']:.2f}", f"{s['median_score']:.1f}", f"{s['mean_steps']:.0f}",
                      *outcomes, f"{s['moves_per_s']:,.0f}" if s.get("moves_per_s") else "-")  # fmt: skip
    return table


def build(host: CommandHost) -> typer.Typer:
    """The ``snake`` command group."""
    app = typer.Typer(help="Snake: record an expert's games as trajectories, let a model or agent play.", no_args_is_help=True)

    @app.command()
    def record(
        agent: str = typer.Option("heuristic", help=f"scripted player: {', '.join(AGENT_NAMES)}"),
        grid: int = typer.Option(10, min=MIN_GRID, max=MAX_GRID, help="board size N (N x N)"),
        games: int = typer.Option(400, min=1, help="games to play (game i uses seed SEED+i)"),
        seed: int = typer.Option(0, help="first seed"),
        out: Path = typer.Option(..., "--out", "-o", help="trajectory JSONL to write (one game per line)"),
        max_steps: Optional[int] = typer.Option(None, min=1, help="cap on moves per game (default: play to the end)"),
    ) -> None:
        """Play games with a scripted agent and write them as trajectories JSONL (the schema is in
        ``gamesense.tasks.snake.trajectories``), with a progress bar and a summary table."""
        from rich.console import Console

        try:
            summary = record_games(agent, grid, games, seed, out, max_steps=max_steps)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
        Console().print(_summary_table(f"{games} games on {grid}x{grid} -> {out}", {agent: summary}))

    @app.command()
    def play(
        model: str = typer.Option(..., "--model", "-m", help=f"a model reference (base id/path, adapter dir, "
                                  f"models:/NAME@ALIAS) or a scripted agent: {', '.join(AGENT_NAMES)}"),  # fmt: skip
        grid: list[int] = typer.Option([10], "--grid", "-g", help="board size (repeatable)"),
        games: int = typer.Option(20, min=1, help="games per board size"),
        seed: Optional[int] = typer.Option(None, help="first seed (default: the recipe's evaluation seed)"),
        max_steps: Optional[int] = typer.Option(None, min=1, help="cap on moves per game (default: the recipe's)"),
        gif: Optional[Path] = typer.Option(None, help="write the first game as an animated GIF here"),
        recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="recipe of the prompt format (default: snake)"),
        overrides: Optional[list[str]] = typer.Option(None, "--set", "-s", help="override a recipe key"),
    ) -> None:
        """Let a model (or a scripted agent) play games from fixed seeds; prints scores, outcomes and moves/s."""
        from rich.console import Console

        from gamesense.tasks.snake.render import save_gif

        if any(not MIN_GRID <= g <= MAX_GRID for g in grid):
            raise typer.BadParameter(f"board sizes must be in [{MIN_GRID}, {MAX_GRID}], got {grid}", param_hint="--grid")
        config, task = host.recipe_and_task(recipe or "snake", overrides)
        player = model if model in AGENT_NAMES else host.load_policy(model, config, task)
        first = task.options.rollout.seed if seed is None else seed
        plan = [(g, first + i) for g in grid for i in range(games)]
        results, seconds = task.play(player, plan, max_steps, keep_states=[0] if gif else ())
        moves_per_s = sum(r.steps for r in results) / seconds if seconds else None  # all boards were played together
        rows = {f"{model} {g}x{g}": {**summarize([r for r in results if r.grid == g]), "moves_per_s": moves_per_s}
                for g in grid}  # fmt: skip
        cap = max_steps or task.options.rollout.max_steps
        Console().print(_summary_table(f"Snake, games capped at {cap} moves", rows))
        if gif:
            typer.echo(f"GIF of seed {results[0].seed} on {results[0].grid}x{results[0].grid}: {save_gif(results[0].states, gif)}")

    return app
