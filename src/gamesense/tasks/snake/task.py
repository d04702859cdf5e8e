"""Snake as a task plugin: expert trajectories -> (state -> move) SFT records -> the model plays the game.

Data: trajectory JSONL files (:mod:`gamesense.tasks.snake.trajectories`). A recipe may name files that do
not exist yet: the task records them with the scripted expert (``task_options.record``), so
``gamesense finetune --recipe snake`` runs from nothing.

Training: every recorded move is one example, the prompt being the board as text (:func:`board_text`) and
the completion the move's name; identical
(position, move) pairs are kept once; the loss is on the move only (completion-only loss).

Evaluation, both in one table:

- static: move accuracy against the expert on held-out trajectories (greedy decoding, parsed to a move);
- rollout: games on several board sizes from fixed seeds, the model choosing each move by comparing its
  scores of the four move names (one forward pass per move, batched across the games in play: no
  free-form decoding, so no unparseable moves). Deadly moves can be masked (``mask_deadly_moves``), as
  the random agent does. Every game is capped at ``max_steps`` moves (outcome ``truncated``) for every
  player alike, so scores compare at equal horizons. Per board ``N``: mean/median score (apples), mean
  length and steps, outcome shares, score as % of the expert's on the same seeds; ``score`` (the gate
  metric) is the mean score on the training board.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from tqdm.auto import tqdm

from gamesense.tasks.base import DataError, LoadReport, Policy, Record, RolloutResult, Task, TaskOptions
from gamesense.tasks.snake.game import MAX_GRID, MIN_GRID, GameState, Move, SnakeEnv, safe_moves
from gamesense.tasks.snake.render import text_view
from gamesense.tasks.snake.trajectories import (
    AGENT_NAMES,
    RECORD_OUTCOMES,
    TRUNCATED,
    load_trajectories,
    make_agent,
    record_games,
)

TASK_NAME = "snake"
MOVE_NAMES: tuple[str, ...] = tuple(m.name for m in Move)
#: seed offset of the held-out (evaluation) games recorded by the task, far from the training seeds
EVAL_SEED_OFFSET = 100_000


class RecordOptions(TaskOptions):
    """How the task records a trajectory file a recipe names that does not exist yet."""

    agent: str = Field(description="scripted expert: random, heuristic or hamiltonian")
    grid: int = Field(ge=MIN_GRID, le=MAX_GRID, description="board size N of the recorded games (the training board)")
    train_games: int = Field(ge=1, description="games recorded for data.train_file (seeds seed, seed+1, ...)")
    eval_games: int = Field(ge=1, description=f"games recorded for data.eval_file (seeds seed+{EVAL_SEED_OFFSET}, ...)")
    seed: int = Field(description="first seed")
    max_steps: int | None = Field(ge=1, description="cap on moves per recorded game (null: play to the end)")

    @field_validator("agent")
    @classmethod
    def _known_agent(cls, value: str) -> str:
        if value not in AGENT_NAMES:
            raise ValueError(f"expected one of {', '.join(AGENT_NAMES)}")
        return value


class RolloutOptions(TaskOptions):
    """The games every player is scored on."""

    grids: list[int] = Field(min_length=1, description="board sizes played")
    games: int = Field(ge=1, description="games per board size (seeds seed, seed+1, ...)")
    seed: int = Field(description="first seed of the evaluation games")
    max_steps: int = Field(ge=1, description="cap on moves per game, for every player (outcome truncated)")
    mask_deadly_moves: bool = Field(description="choose among the moves that do not die at once (all four if none)")
    gifs: bool = Field(description="write one GIF per board size (the first game) for MLflow")

    @field_validator("grids")
    @classmethod
    def _grid_range(cls, value: list[int]) -> list[int]:
        bad = [g for g in value if not MIN_GRID <= g <= MAX_GRID]
        if bad:
            raise ValueError(f"board sizes must be in [{MIN_GRID}, {MAX_GRID}], got {bad}")
        return value


class SnakeOptions(TaskOptions):
    """``task_options`` of the Snake task."""

    system_prompt: str = Field(description="instruction in the system turn; the board follows in the user turn")
    record: RecordOptions
    train_moves: int = Field(ge=1, description="SFT examples: distinct (position, move) pairs sampled from the training games")
    eval_moves: int = Field(ge=1, description="held-out positions scored for move accuracy")
    rollout: RolloutOptions


@dataclass(frozen=True, slots=True)
class SnakeMove:
    """One recorded decision: the position, the expert's move, and where it came from (file line, seed)."""

    state: GameState
    move: Move
    line: int
    seed: int


def state_key(state: GameState) -> tuple:
    """Identity of a position for de-duplication (score and step counters left out: they do not change the
    right move)."""
    return state.body, state.apple, state.direction, state.grid_size


def parse_move(text: str) -> str:
    """A generated answer -> a move name (``"UP"`` ...), or ``""`` when its first word is not a move."""
    words = text.strip().split()
    word = words[0].strip(".,:;!\"'").upper() if words else ""
    return word if word in MOVE_NAMES else ""


def board_text(state: GameState) -> str:
    """The board as the model reads it: :func:`~gamesense.tasks.snake.render.text_view` plus two lines a
    small model cannot easily work out from a grid of characters: where the apple lies from the head, and
    which moves do not die at once (the legal-move list a game prompt usually carries), e.g.::

        apple from head: 2 up, 3 left
        safe moves: UP LEFT
    """
    lines = [text_view(state, with_legend=False)]
    if state.apple is not None:
        d_row, d_col = state.apple[0] - state.head[0], state.apple[1] - state.head[1]
        parts = [f"{abs(d_row)} {'up' if d_row < 0 else 'down'}"] if d_row else []
        parts += [f"{abs(d_col)} {'left' if d_col < 0 else 'right'}"] if d_col else []
        lines.append(f"apple from head: {', '.join(parts)}")
    lines.append(f"safe moves: {' '.join(m.name for m in safe_moves(state)) or 'none'}")
    return "\n".join(lines)


def board_prompt(state: GameState, system_prompt: str) -> list[dict[str, str]]:
    """Chat messages asking for the next move: the system prompt, then :func:`board_text`."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": board_text(state)}]


# --- playing many games at once ----------------------------------------------------------------------


@dataclass
class GameResult:
    """How one evaluation game ended."""

    grid: int
    seed: int
    score: int
    length: int
    steps: int
    outcome: str
    states: list[GameState] | None = None


#: chooses the next move for each of a batch of running games
Chooser = Callable[[Sequence[GameState], Sequence[int]], list[Move]]


def play_games(
    games: Sequence[tuple[int, int]],
    choose: Chooser,
    max_steps: int,
    keep_states: Sequence[int] = (),
    progress: bool = False,
    desc: str = "play",
) -> list[GameResult]:
    """Play several games in lockstep: at every round, one call of ``choose`` decides a move for every game
    still running (so a model scores them in one batch).

    Args:
        games: ``(grid_size, seed)`` per game.
        choose: ``(states, game_indices) -> moves``, one move per state.
        max_steps: moves per game at most (then outcome ``truncated``).
        keep_states: indices of games whose every position is kept (for GIFs).

    Returns:
        one :class:`GameResult` per game, in order.
    """
    envs = []
    for grid, seed in games:
        env = SnakeEnv(grid)
        env.reset(seed=seed)
        envs.append(env)
    states: list[list[GameState] | None] = [[env.state()] if i in keep_states else None for i, env in enumerate(envs)]
    running = list(range(len(envs)))
    with tqdm(total=max_steps, desc=desc, unit="round", disable=not progress, leave=False) as bar:
        for _ in range(max_steps):
            if not running:
                break
            moves = choose([envs[i].state() for i in running], running)
            for i, move in zip(running, moves):
                envs[i].step(move)
                if states[i] is not None:
                    states[i].append(envs[i].state())
            running = [i for i in running if envs[i].outcome is None]
            bar.update(1)
            bar.set_postfix(running=len(running), refresh=False)
    results = []
    for i, ((grid, seed), env) in enumerate(zip(games, envs)):
        state = env.state()
        results.append(GameResult(grid, seed, state.score, state.length, state.steps, env.outcome or TRUNCATED, states[i]))
    return results


def game_metrics(results: Sequence[GameResult], train_grid: int) -> dict[str, float]:
    """Per-board metrics of finished games (keys suffixed ``_<N>x<N>``) plus ``score``: the mean score on
    ``train_grid`` (the gate metric; the mean over all games when that board was not played).

    Keys per board: ``score``, ``median_score``, ``length``, ``steps`` (means over games), and the share of
    games per outcome (``wall``, ``self``, ``starved``, ``won``, ``truncated``) in [0, 1].
    """
    metrics: dict[str, float] = {}
    for grid in dict.fromkeys(r.grid for r in results):
        games = [r for r in results if r.grid == grid]
        suffix = f"_{grid}x{grid}"
        scores = [r.score for r in games]
        metrics[f"score{suffix}"] = statistics.fmean(scores)
        metrics[f"median_score{suffix}"] = float(statistics.median(scores))
        metrics[f"length{suffix}"] = statistics.fmean(r.length for r in games)
        metrics[f"steps{suffix}"] = statistics.fmean(r.steps for r in games)
        for outcome in RECORD_OUTCOMES:
            metrics[f"{outcome}{suffix}"] = sum(r.outcome == outcome for r in games) / len(games)
    on_train = [r.score for r in results if r.grid == train_grid] or [r.score for r in results]
    metrics["score"] = statistics.fmean(on_train)
    return metrics


# --- the task ----------------------------------------------------------------------------------------


class SnakeTask(Task):
    """Snake agent: SFT on an expert's moves, scored on move accuracy and by playing games (the mean score
    on the training board gates promotion)."""

    name = TASK_NAME
    Options = SnakeOptions
    evaluation = ("static", "rollout")
    gate_metric = "score"
    metric_order = ("score", "score_vs_expert", "move_accuracy", "valid_move_rate", "moves_per_s")
    stop_strings = ("\n",)

    options: SnakeOptions

    def __init__(self, options=None):
        super().__init__(options)
        self._reference: dict[str, list[GameResult]] = {}

    @classmethod
    def commands(cls, host):
        """``gamesense snake record`` and ``gamesense snake play`` (:mod:`gamesense.tasks.snake.commands`)."""
        from gamesense.tasks.snake.commands import build

        return build(host)

    # --- data

    def create_data(self, split: str, path: Path, progress: bool = True) -> bool:
        """Record ``task_options.record`` games with the expert into ``path`` (``split`` ``train`` or
        ``eval``: the evaluation games use seeds offset by ``EVAL_SEED_OFFSET``)."""
        rec = self.options.record
        games, seed = (rec.train_games, rec.seed) if split == "train" else (rec.eval_games, rec.seed + EVAL_SEED_OFFSET)
        record_games(rec.agent, rec.grid, games, seed, path, progress=progress, max_steps=rec.max_steps)
        return True

    def load(self, path: str | Path, max_rows: int | None = None) -> LoadReport[SnakeMove]:
        """Read a trajectory file; one example per move. ``max_rows`` counts games (lines).

        Raises:
            DataError: missing file or not a file.
        """
        try:
            loaded = load_trajectories(path)
        except (FileNotFoundError, ValueError) as err:
            raise DataError(str(err)) from None
        report: LoadReport[SnakeMove] = LoadReport(str(path), skipped=list(loaded.skipped))
        games = loaded.games[:max_rows] if max_rows else loaded.games
        for line, game in zip(loaded.game_lines, games):
            report.examples.extend(SnakeMove(m.game_state, m.move, line, game.seed) for m in game.moves)
        return report

    def prompt(self, text: str) -> list[dict[str, str]]:
        """Messages for a board already written as text (``gamesense generate``)."""
        return [{"role": "system", "content": self.options.system_prompt}, {"role": "user", "content": text}]

    def _distinct(self, examples: Sequence[SnakeMove], limit: int, seed: int) -> list[SnakeMove]:
        """Distinct (position, move) pairs, then a seeded uniform sample of at most ``limit``, in file order."""
        seen: dict[tuple, SnakeMove] = {}
        for ex in examples:
            seen.setdefault((state_key(ex.state), ex.move), ex)
        unique = list(seen.values())
        if len(unique) <= limit:
            return unique
        keep = sorted(random.Random(seed).sample(range(len(unique)), limit))
        return [unique[i] for i in keep]

    def sft_records(self, examples: Sequence[SnakeMove]) -> list[Record]:
        return [{"prompt": board_prompt(ex.state, self.options.system_prompt),
                 "completion": [{"role": "assistant", "content": ex.move.name}]}
                for ex in self._distinct(examples, self.options.train_moves, seed=0)]  # fmt: skip

    # --- static evaluation: move accuracy

    def eval_records(self, examples: Sequence[SnakeMove]) -> list[Record]:
        return [{"prompt": board_prompt(ex.state, self.options.system_prompt), "reference": ex.move.name,
                 "line": ex.line, "step": ex.state.steps}
                for ex in self._distinct(examples, self.options.eval_moves, seed=1)]  # fmt: skip

    def parse_output(self, text: str) -> str:
        return parse_move(text)

    def compute_metrics(self, predictions: Sequence[str], records: Sequence[Record]) -> dict[str, float]:
        """``move_accuracy`` (share of the expert's moves matched) and ``valid_move_rate`` (answers that name
        a move)."""
        n = max(len(records), 1)
        return {"move_accuracy": sum(p == r["reference"] for p, r in zip(predictions, records)) / n,
                "valid_move_rate": sum(bool(p) for p in predictions) / n, "n": float(len(records))}  # fmt: skip

    def row_scores(self, prediction: str, record: Record) -> dict[str, Any]:
        return {"correct": prediction == record["reference"]}

    # --- rollout evaluation: play the game

    def evaluation_games(self, grids: Sequence[int] | None = None, games: int | None = None) -> list[tuple[int, int]]:
        """``(grid, seed)`` of every evaluation game: ``rollout.games`` seeds per board of ``rollout.grids``."""
        opts = self.options.rollout
        return [(g, opts.seed + i) for g in (grids or opts.grids) for i in range(games or opts.games)]

    def model_chooser(self, policy: Policy) -> Chooser:
        """Moves from a model: the most likely move name among the candidates (the safe moves when
        ``mask_deadly_moves``, else all four)."""
        mask = self.options.rollout.mask_deadly_moves

        def choose(states: Sequence[GameState], _indices: Sequence[int]) -> list[Move]:
            candidates = [(safe_moves(s) or list(Move)) if mask else list(Move) for s in states]
            prompts = [board_prompt(s, self.options.system_prompt) for s in states]
            picks = policy.choose(prompts, [[m.name for m in c] for c in candidates])
            return [c[k] for c, k in zip(candidates, picks)]

        return choose

    def play(self, player: Policy | str, games: Sequence[tuple[int, int]], max_steps: int | None = None,
             keep_states: Sequence[int] = (), progress: bool = True) -> tuple[list[GameResult], float]:  # fmt: skip
        """Play ``games`` with a model policy or a scripted agent (by name).

        Returns:
            the results and the wall-clock seconds spent.
        """
        if isinstance(player, str):
            agents = {i: make_agent(player, seed, grid) for i, (grid, seed) in enumerate(games)}
            choose: Chooser = lambda states, idx: [agents[i].act(s) for s, i in zip(states, idx)]  # noqa: E731
            label = player
        else:
            choose, label = self.model_chooser(player), player.name
        start = time.perf_counter()
        results = play_games(games, choose, max_steps or self.options.rollout.max_steps, keep_states, progress,
                             desc=f"play {label}")  # fmt: skip
        return results, time.perf_counter() - start

    def _reference_games(self, agent: str) -> list[GameResult]:
        if agent not in self._reference:
            self._reference[agent] = self.play(agent, self.evaluation_games(), progress=False)[0]
        return self._reference[agent]

    def _scored(self, results: list[GameResult], seconds: float | None = None) -> dict[str, float]:
        metrics = game_metrics(results, self.options.record.grid)
        expert = game_metrics(self._reference_games(self.options.record.agent), self.options.record.grid)
        for key in [k for k in metrics if k.startswith("score")]:
            if expert.get(key):
                suffix = key.removeprefix("score")
                metrics[f"score_vs_expert{suffix}"] = metrics[key] / expert[key]
        if seconds:
            metrics["moves_per_s"] = sum(r.steps for r in results) / seconds
        return metrics

    def rollout(self, policy: Policy, out_dir: Path, progress: bool = True) -> RolloutResult:
        """Play the evaluation games with ``policy``; metrics as in :func:`game_metrics` plus
        ``score_vs_expert[_NxN]`` (ratio to the expert's mean score on the same seeds) and ``moves_per_s``;
        artifacts: a bar chart of mean score per board (this policy, random, expert) and one GIF per board."""
        from gamesense.plots import plot_grouped_bars
        from gamesense.tasks.snake.render import save_gif

        games = self.evaluation_games()
        per_grid = self.options.rollout.games
        keep = [i * per_grid for i in range(len(self.options.rollout.grids))] if self.options.rollout.gifs else []
        results, seconds = self.play(policy, games, keep_states=keep, progress=progress)
        metrics = self._scored(results, seconds)
        out = Path(out_dir)
        bars = {policy.name: _scores_by_grid(results)}
        for agent in dict.fromkeys(["random", self.options.record.agent]):
            bars[agent] = _scores_by_grid(self._reference_games(agent))
        artifacts = {"scores": plot_grouped_bars(bars, out / "snake_scores.png", title="Snake: mean score per board",
                                                 ylabel=f"apples (games capped at {self.options.rollout.max_steps} moves)")}  # fmt: skip
        for i in keep:
            r = results[i]
            artifacts[f"gif_{r.grid}"] = save_gif(r.states, out / f"snake_{r.grid}x{r.grid}_seed{r.seed}.gif")
        return RolloutResult(metrics=metrics, artifacts=artifacts)

    def reference_results(self, progress: bool = True) -> dict[str, dict[str, float]]:
        """The random agent and the expert on the evaluation games."""
        return {agent: self._scored(self._reference_games(agent)) for agent in dict.fromkeys(["random", self.options.record.agent])}


def _scores_by_grid(results: Sequence[GameResult]) -> dict[str, float]:
    grids = dict.fromkeys(r.grid for r in results)
    return {f"{g}x{g}": statistics.fmean(r.score for r in results if r.grid == g) for g in grids}


TASK = SnakeTask
