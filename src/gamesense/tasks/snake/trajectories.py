"""Playing, recording and loading Snake games; the JSONL trajectory format.

File format: UTF-8 JSONL, one game per line (blank lines are ignored)::

    {"grid_size": 10, "seed": 7, "agent": "heuristic", "outcome": "starved", "score": 41, "steps": 812,
     "moves": [{"game_state": {...}, "move": "UP", "reasoning": null}, ...]}

Game (every key required, no others):
    ``grid_size`` int in [6, 32]; ``seed`` int (the ``env.reset`` seed); ``agent`` non-empty str;
    ``outcome`` one of ``"wall"``, ``"self"``, ``"starved"``, ``"won"`` or ``"truncated"`` (stopped by
    ``max_steps`` before the game ended); ``score`` int >= 0 (apples eaten); ``steps`` int >= 0, equal
    to the number of moves; ``moves`` list of moves in play order.

Move (``game_state`` and ``move`` required, no other keys):
    ``game_state`` the position the move was chosen in; ``move`` one of ``"UP"``, ``"DOWN"``,
    ``"LEFT"``, ``"RIGHT"``; ``reasoning`` str or null (free text from an LLM agent).

Game state (``GameState.to_dict``; the first five keys required, no other keys):
    ``head`` ``[row, col]``; ``body`` list of ``[row, col]`` from head to tail, head included, at least
    2 cells, distinct, consecutive cells 4-neighbours; ``apple`` ``[row, col]`` or null (only on a full
    board); ``direction`` move name, from the neck to the head; ``grid_size`` equal to the game's;
    optional ``score``, ``steps``, ``steps_since_apple`` (ints >= 0) and ``outcome`` (null or a game
    outcome). Cells must lie on the board, ``head == body[0]``, the apple off the snake.

Values are strict JSON types: ``3`` is an int, ``3.0`` and ``"3"`` are not.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from tqdm.auto import tqdm

from gamesense.tasks.snake.agents import Agent, HamiltonianAgent, HeuristicAgent, RandomAgent
from gamesense.tasks.snake.game import OUTCOMES, GameState, Move, SnakeEnv, check_state, validate_grid_size

TRUNCATED = "truncated"
RECORD_OUTCOMES: tuple[str, ...] = (*OUTCOMES, TRUNCATED)
AGENT_NAMES: tuple[str, ...] = ("random", "heuristic", "hamiltonian")


# --------------------------------------------------------------------------- in-memory records


@dataclass(frozen=True, slots=True)
class MoveRecord:
    """One decision: the position, the move played there, and the agent's reasoning if any."""

    game_state: GameState
    move: Move
    reasoning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"game_state": GameState.to_dict(), "move": name, "reasoning": str | None}``."""
        return {"game_state": self.game_state.to_dict(), "move": self.move.name, "reasoning": self.reasoning}


@dataclass
class GameRecord:
    """One played game (see the module docstring for the serialized form).

    Attributes:
        grid_size: ``N``.
        seed: seed given to ``env.reset``.
        agent: agent name.
        outcome: one of ``RECORD_OUTCOMES``.
        score: apples eaten.
        steps: moves played (``len(moves)``).
        moves: one ``MoveRecord`` per move, in play order.
        states: every position from the start to the final one (``steps + 1`` of them), for GIFs;
            only filled by ``play_game(record_states=True)``, never serialized.
    """

    grid_size: int
    seed: int
    agent: str
    outcome: str
    score: int
    steps: int
    moves: list[MoveRecord]
    states: list[GameState] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict in the trajectory schema (``states`` left out)."""
        return {
            "grid_size": self.grid_size,
            "seed": self.seed,
            "agent": self.agent,
            "outcome": self.outcome,
            "score": self.score,
            "steps": self.steps,
            "moves": [move.to_dict() for move in self.moves],
        }

    def to_json(self) -> str:
        """One compact JSONL line (no trailing newline)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))


# --------------------------------------------------------------------------- schema (validation)

MoveName = Literal["UP", "DOWN", "LEFT", "RIGHT"]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GameStateSchema(_Schema):
    """Validated ``game_state`` object; the board invariants are ``game.check_state``."""

    head: tuple[int, int]
    body: list[tuple[int, int]] = Field(min_length=2)
    apple: tuple[int, int] | None
    direction: MoveName
    grid_size: int = Field(ge=6, le=32)
    score: int = Field(default=0, ge=0)
    steps: int = Field(default=0, ge=0)
    steps_since_apple: int = Field(default=0, ge=0)
    outcome: Literal["wall", "self", "starved", "won"] | None = None

    _state: GameState | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _board_invariants(self) -> GameStateSchema:
        self._state = self._build_state()
        check_state(self._state)
        return self

    def to_state(self) -> GameState:
        """The ``GameState`` this object describes."""
        return self._state if self._state is not None else self._build_state()

    def _build_state(self) -> GameState:
        return GameState(
            head=self.head,  # pydantic already made the cells tuples
            body=tuple(self.body),
            apple=self.apple,
            direction=Move[self.direction],
            grid_size=self.grid_size,
            score=self.score,
            steps=self.steps,
            steps_since_apple=self.steps_since_apple,
            outcome=self.outcome,
        )


class MoveRecordSchema(_Schema):
    """Validated move object."""

    game_state: GameStateSchema
    move: MoveName
    reasoning: str | None = None


class GameRecordSchema(_Schema):
    """Validated game line."""

    grid_size: int = Field(ge=6, le=32)
    seed: int
    agent: str = Field(min_length=1)
    outcome: Literal["wall", "self", "starved", "won", "truncated"]
    score: int = Field(ge=0)
    steps: int = Field(ge=0)
    moves: list[MoveRecordSchema]

    @model_validator(mode="after")
    def _consistent(self) -> GameRecordSchema:
        if self.steps != len(self.moves):
            raise ValueError(f"steps is {self.steps} but there are {len(self.moves)} moves")
        for i, move in enumerate(self.moves):
            if move.game_state.grid_size != self.grid_size:
                raise ValueError(
                    f"moves[{i}].game_state.grid_size is {move.game_state.grid_size}, the game's is {self.grid_size}"
                )
        return self

    def to_record(self) -> GameRecord:
        """The ``GameRecord`` this line describes."""
        return GameRecord(
            grid_size=self.grid_size,
            seed=self.seed,
            agent=self.agent,
            outcome=self.outcome,
            score=self.score,
            steps=self.steps,
            moves=[MoveRecord(m.game_state.to_state(), Move[m.move], m.reasoning) for m in self.moves],
        )


# --------------------------------------------------------------------------- agents and play


def make_agent(name: str, seed: int = 0, grid_size: int | None = None) -> Agent:
    """Build a scripted agent by name: ``"random"``, ``"heuristic"`` or ``"hamiltonian"``.

    Args:
        name: one of ``AGENT_NAMES`` (case-insensitive).
        seed: the agent's own seed (only ``random`` uses it).
        grid_size: optional; lets ``hamiltonian`` reject odd boards here rather than at the first move.

    Raises:
        ValueError: unknown name, or ``hamiltonian`` with an odd ``grid_size``.
    """
    key = name.strip().lower()
    if key == "random":
        return RandomAgent(seed)
    if key == "heuristic":
        return HeuristicAgent(seed)
    if key == "hamiltonian":
        return HamiltonianAgent(grid_size, seed=seed)
    raise ValueError(f"unknown agent {name!r}; expected one of {', '.join(AGENT_NAMES)}")


def play_game(
    env_seed: int, grid_size: int, agent: Agent, max_steps: int | None = None, record_states: bool = False
) -> GameRecord:
    """Play one game from the standard start.

    Args:
        env_seed: ``env.reset`` seed (fixes the apple sequence for given moves).
        grid_size: ``N`` in ``[6, 32]``.
        agent: anything with ``name`` and ``act(GameState) -> Move`` (an int or move name also works);
            an optional ``last_reasoning`` attribute is stored with each move.
        max_steps: stop after this many moves with outcome ``"truncated"``; None = play until the game
            ends (it always does: starvation caps every game at ``4 * N * N`` moves per apple).
        record_states: also keep every position, the final one included, in ``GameRecord.states``.

    Returns:
        The ``GameRecord``.

    Raises:
        ValueError: bad ``grid_size``, negative ``max_steps``, or an agent returning a non-move.
    """
    if max_steps is not None and max_steps < 0:
        raise ValueError(f"max_steps must be >= 0 or None, got {max_steps}")
    env = SnakeEnv(grid_size)
    env.reset(seed=env_seed)
    state = env.state()
    moves: list[MoveRecord] = []
    states = [state] if record_states else None
    outcome = None
    while outcome is None:
        if max_steps is not None and len(moves) >= max_steps:
            outcome = TRUNCATED
            break
        move = Move.parse(agent.act(state))
        moves.append(MoveRecord(state, move, getattr(agent, "last_reasoning", None)))
        env.step(move)
        state = env.state()
        outcome = state.outcome
        if states is not None:
            states.append(state)
    return GameRecord(
        grid_size=env.grid_size,
        seed=env_seed,
        agent=agent.name,
        outcome=outcome,
        score=state.score,
        steps=len(moves),
        moves=moves,
        states=states,
    )


def summarize(records: list[GameRecord], seconds: float | None = None) -> dict[str, Any]:
    """Summary statistics of games (``GameRecord``s, or anything with ``score``, ``steps`` and ``outcome``,
    such as the task's ``GameResult``).

    Returns:
        ``games``, ``moves`` (total), ``mean_score``, ``median_score``, ``max_score``, ``mean_steps``,
        ``outcomes`` (count per ``RECORD_OUTCOMES`` value, zeros included), and with ``seconds``
        (wall-clock seconds spent) ``seconds`` and ``moves_per_s``. Scores are 0 for no games.
    """
    scores = [record.score for record in records]
    moves = sum(record.steps for record in records)
    counts = Counter(record.outcome for record in records)
    summary: dict[str, Any] = {
        "games": len(records),
        "moves": moves,
        "mean_score": statistics.fmean(scores) if scores else 0.0,
        "median_score": statistics.median(scores) if scores else 0.0,
        "max_score": max(scores, default=0),
        "mean_steps": moves / len(records) if records else 0.0,
        "outcomes": {outcome: counts.get(outcome, 0) for outcome in RECORD_OUTCOMES},
    }
    if seconds is not None:
        summary["seconds"] = seconds
        summary["moves_per_s"] = moves / seconds if seconds > 0 else float("inf")
    return summary


def record_games(
    agent_name: str,
    grid: int,
    games: int,
    seed: int,
    out_path: str | Path,
    progress: bool = True,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Play ``games`` games and write them as JSONL, one game per line.

    Game ``i`` uses env seed ``seed + i`` and a fresh agent seeded ``seed + i``, so every line can be
    replayed on its own.

    Args:
        agent_name: one of ``AGENT_NAMES``.
        grid: ``N`` in ``[6, 32]``.
        games: number of games (>= 1).
        seed: first seed.
        out_path: JSONL file to (over)write; parent directories are created.
        progress: show a tqdm progress bar.
        max_steps: per-game move cap (see ``play_game``).

    Returns:
        ``summarize(...)`` of the games plus ``agent``, ``grid_size`` and ``path``.

    Raises:
        ValueError: bad ``grid``, ``games`` or agent name (checked before the file is opened).
    """
    grid = validate_grid_size(grid, "grid")
    if isinstance(games, bool) or not isinstance(games, int) or games < 1:
        raise ValueError(f"games must be an int >= 1, got {games!r}")
    make_agent(agent_name, seed, grid)  # fail before creating the file
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    headers: list[GameRecord] = []
    start = time.perf_counter()
    with path.open("w", encoding="utf-8") as out, tqdm(
        total=games, disable=not progress, desc=f"{agent_name} {grid}x{grid}", unit="game"
    ) as bar:
        for i in range(games):
            record = play_game(seed + i, grid, make_agent(agent_name, seed + i, grid), max_steps)
            out.write(record.to_json() + "\n")
            # Keep only the header in memory: the moves are on disk and may be large.
            record.moves = []
            headers.append(record)
            bar.update(1)
            bar.set_postfix(score=record.score, outcome=record.outcome, refresh=False)
    summary = summarize(headers, time.perf_counter() - start)
    return {"agent": agent_name, "grid_size": grid, "path": str(path), **summary}


# --------------------------------------------------------------------------- loading


@dataclass
class TrajectoryFile:
    """A trajectory file as :func:`load_trajectories` read it: its valid games and the lines set aside.

    Attributes:
        path: the file read.
        games: valid games in file order.
        skipped: ``(line_number, reason)`` of each invalid line, 1-based.
        lines: non-blank lines read (``len(games) + len(skipped)``).
        game_lines: 1-based line number of each game in ``games``.
    """

    path: Path
    games: list[GameRecord]
    skipped: list[tuple[int, str]]
    lines: int
    game_lines: list[int] = field(default_factory=list)


def _reason(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return first["msg"]  # "Invalid JSON: ... at line 1 column 17"
    where = ".".join(str(part) for part in first["loc"]) or "game"
    text = f"{where}: {first['msg']}"
    return text + (f" (+{len(errors) - 1} more errors)" if len(errors) > 1 else "")


def load_trajectories(path: str | Path) -> TrajectoryFile:
    """Read a trajectory JSONL file, validating every line against the schema in the module docstring.

    A line that is not valid JSON or breaks the schema is skipped and reported with its 1-based line
    number and the first problem found (e.g. ``moves.3.move: Input should be 'UP', ...``); the load never
    fails on file content.

    Returns:
        A :class:`TrajectoryFile`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a regular file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"trajectory file not found: {path}")
    if not path.is_file():
        raise ValueError(f"trajectory path is not a file: {path}")
    games: list[GameRecord] = []
    game_lines: list[int] = []
    skipped: list[tuple[int, str]] = []
    lines = 0
    with path.open("rb") as handle:  # bytes: undecodable lines are reported like bad JSON
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            lines += 1
            try:
                games.append(GameRecordSchema.model_validate_json(raw).to_record())
                game_lines.append(number)
            except ValidationError as exc:
                skipped.append((number, _reason(exc)))
    return TrajectoryFile(path=path, games=games, skipped=skipped, lines=lines, game_lines=game_lines)
