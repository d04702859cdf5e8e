"""Snake as a seeded Gymnasium environment (``SnakeEnv``), plus the ``GameState`` snapshot agents and
prompts read.

Board
    ``N x N`` cells with ``N`` in ``[MIN_GRID, MAX_GRID]`` = ``[6, 32]``. A cell is ``(row, col)``: row 0 is
    the top row, col 0 the left column. ``UP`` decreases the row, ``RIGHT`` increases the column.
    Internally a cell is the flat index ``row * N + col``.

Start (deterministic)
    Length 3, horizontal in row ``N // 2``: head at ``(N // 2, N // 2)``, body extending to the left,
    heading ``RIGHT``. One apple, drawn uniformly over the free cells with ``env.np_random`` (so the apple
    sequence depends only on the ``reset`` seed and the moves played).

One step (one action), rules in this order
    1. Target cell = the neck (reversing): death, outcome ``"self"`` (it is a collision with the body).
    2. Target outside the board: death, outcome ``"wall"``.
    3. Target on the body: death ``"self"``, except the tail cell: the tail moves first, so chasing
       the tail is allowed. The tail only stays put when the snake eats on that step, and then the head
       is on the apple, which is never placed on the snake, so the exception cannot hit a staying tail.
    4. The snake moves. If it ate: score and length +1, ``steps_since_apple`` back to 0, then either
       the board is full (outcome ``"won"``, no apple any more) or a new apple is drawn.
       Otherwise ``steps_since_apple`` +1 and, at ``4 * N * N``, the outcome is ``"starved"``.

    On death the snake is left where it was (the head does not enter the wall or the body); the fatal
    action still counts in ``steps``.

Reward
    ``+1.0`` for eating an apple (the winning one included), ``-1.0`` for dying (``"wall"``,
    ``"self"``), ``0.0`` otherwise, starvation included (a stall, not a crash).
    ``terminated`` is True once there is an outcome; ``truncated`` is always False (step caps belong
    to the caller, e.g. ``gymnasium.wrappers.TimeLimit`` or ``play_game(max_steps=...)``).

Observation
    ``uint8`` array of shape ``(N, N)`` (a fresh copy each step): ``EMPTY=0``, ``BODY=1`` (tail
    included), ``HEAD=2``, ``APPLE=3``. ``info`` = ``{"score", "length", "steps", "outcome"}``.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

MIN_GRID = 6
MAX_GRID = 32
START_LENGTH = 3

# Observation codes.
EMPTY = 0
BODY = 1
HEAD = 2
APPLE = 3

OUTCOMES: tuple[str, ...] = ("wall", "self", "starved", "won")
REWARD_APPLE = 1.0
REWARD_DEATH = -1.0

Cell = tuple[int, int]


class Move(IntEnum):
    """The four actions; the integer value is the Gymnasium action, the name is what prompts use."""

    UP = 0
    DOWN = 1
    LEFT = 2
    RIGHT = 3

    @property
    def delta(self) -> Cell:
        """``(d_row, d_col)`` of one step in this direction."""
        return _DELTAS[self]

    @property
    def opposite(self) -> Move:
        """The reverse direction (moving there from a straight snake hits the neck)."""
        return _OPPOSITES[self]

    @classmethod
    def parse(cls, value: Move | int | str) -> Move:
        """A ``Move`` from a ``Move``, its integer value, or its name in any case (``" up "`` works).

        Raises:
            ValueError: anything else (e.g. ``"NORTH"``, ``4``, ``True``).
        """
        if isinstance(value, Move):
            return value
        if isinstance(value, str):
            name = value.strip().upper()
            if name in cls.__members__:
                return cls[name]
            raise ValueError(f"unknown move {value!r}; expected one of {', '.join(MOVE_NAMES)}")
        if not isinstance(value, bool):
            try:
                index = operator.index(value)
            except TypeError:
                index = -1
            if 0 <= index < len(_MOVES):
                return _MOVES[index]
        raise ValueError(f"unknown move {value!r}; expected 0-3 or one of {', '.join(MOVE_NAMES)}")


_MOVES: tuple[Move, ...] = tuple(Move)
MOVE_NAMES: tuple[str, ...] = tuple(m.name for m in Move)
_DELTAS: dict[Move, Cell] = {Move.UP: (-1, 0), Move.DOWN: (1, 0), Move.LEFT: (0, -1), Move.RIGHT: (0, 1)}
_OPPOSITES: dict[Move, Move] = {Move.UP: Move.DOWN, Move.DOWN: Move.UP, Move.LEFT: Move.RIGHT, Move.RIGHT: Move.LEFT}
_MOVE_BY_DELTA: dict[Cell, Move] = {delta: move for move, delta in _DELTAS.items()}


def validate_grid_size(grid_size: Any, name: str = "grid_size") -> int:
    """Return ``grid_size`` if it is an int in ``[MIN_GRID, MAX_GRID]``.

    Raises:
        ValueError: otherwise; the message names the argument (``name``).
    """
    if isinstance(grid_size, bool) or not isinstance(grid_size, (int, np.integer)):
        raise ValueError(f"{name} must be an int in [{MIN_GRID}, {MAX_GRID}], got {grid_size!r}")
    if not MIN_GRID <= grid_size <= MAX_GRID:
        raise ValueError(f"{name} must be in [{MIN_GRID}, {MAX_GRID}], got {grid_size}")
    return int(grid_size)


def max_steps_without_apple(grid_size: int) -> int:
    """Steps without eating after which the game ends as ``"starved"``: ``4 * N * N``."""
    return 4 * grid_size * grid_size


# --------------------------------------------------------------------------- state snapshot


@dataclass(frozen=True, slots=True)
class GameState:
    """Immutable snapshot of a game: what a prompt or an agent needs to choose the next move.

    Attributes:
        head: ``(row, col)`` of the head; equals ``body[0]``.
        body: cells from head to tail, head included (a tuple, so the snapshot stays immutable);
            consecutive cells are 4-neighbours.
        apple: ``(row, col)`` of the apple, ``None`` once the board is full.
        direction: the last move played, i.e. from the neck to the head (``RIGHT`` at the start).
        grid_size: ``N`` of the ``N x N`` board.
        score: apples eaten.
        steps: actions played so far.
        steps_since_apple: actions since the last apple (or the start); ``"starved"`` at ``4 * N * N``.
        outcome: ``None`` while the game runs, else one of ``OUTCOMES``.
    """

    head: Cell
    body: tuple[Cell, ...]
    apple: Cell | None
    direction: Move
    grid_size: int
    score: int = 0
    steps: int = 0
    steps_since_apple: int = 0
    outcome: str | None = None

    @property
    def length(self) -> int:
        """Number of cells of the snake."""
        return len(self.body)

    @property
    def tail(self) -> Cell:
        """Last body cell (``(row, col)``)."""
        return self.body[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict: cells as ``[row, col]`` lists, ``direction`` as its name.

        Keys: ``head, body, apple, direction, grid_size, score, steps, steps_since_apple, outcome``.
        ``GameState.from_dict`` inverts it.
        """
        return {
            "head": list(self.head),
            "body": [list(cell) for cell in self.body],
            "apple": None if self.apple is None else list(self.apple),
            "direction": self.direction.name,
            "grid_size": self.grid_size,
            "score": self.score,
            "steps": self.steps,
            "steps_since_apple": self.steps_since_apple,
            "outcome": self.outcome,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GameState:
        """Build and check a state from a ``to_dict``-style mapping.

        Required keys: ``head, body, apple, direction, grid_size``; ``score``, ``steps``,
        ``steps_since_apple`` default to 0 and ``outcome`` to None. Cells may be lists or tuples;
        ``direction`` a name or an int.

        Raises:
            ValueError: a missing key, a value of the wrong type, or a state that breaks the board
                invariants (see ``check_state``).
        """
        missing = [key for key in ("head", "body", "apple", "direction", "grid_size") if key not in data]
        if missing:
            raise ValueError(f"game state is missing {', '.join(missing)}")
        try:
            state = cls(
                head=_cell(data["head"], "head"),
                body=tuple(_cell(cell, f"body[{i}]") for i, cell in enumerate(data["body"])),
                apple=None if data["apple"] is None else _cell(data["apple"], "apple"),
                direction=Move.parse(data["direction"]),
                grid_size=validate_grid_size(data["grid_size"]),
                score=_count(data.get("score", 0), "score"),
                steps=_count(data.get("steps", 0), "steps"),
                steps_since_apple=_count(data.get("steps_since_apple", 0), "steps_since_apple"),
                outcome=data.get("outcome"),
            )
        except TypeError as exc:  # e.g. body is not iterable
            raise ValueError(f"malformed game state: {exc}") from exc
        check_state(state)
        return state


def _cell(value: Any, what: str) -> Cell:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"{what} must be a [row, col] pair of ints, got {value!r}")
    return (value[0], value[1])


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be an int >= 0, got {value!r}")
    return value


def check_state(state: GameState, require_apple: bool = True) -> None:
    """Check the invariants every reachable state satisfies.

    Checks: grid size in range; at least 2 body cells (the direction needs a neck), all on the board,
    distinct, 4-connected from head to tail; ``head == body[0]``; ``direction`` points from the neck to
    the head; the apple on the board and off the snake, and ``None`` only when the snake fills the board
    (unless ``require_apple`` is False); ``outcome`` None or one of ``OUTCOMES``.

    Raises:
        ValueError: the first broken invariant, naming the offending cell.
    """
    n = validate_grid_size(state.grid_size)
    body = state.body
    if len(body) < 2:
        raise ValueError(f"body must have at least 2 cells, got {len(body)}")
    for i, (row, col) in enumerate(body):
        if not (0 <= row < n and 0 <= col < n):
            raise ValueError(f"body[{i}] {(row, col)} is outside the {n}x{n} board")
    if tuple(state.head) != body[0]:
        raise ValueError(f"head {state.head} is not body[0] {body[0]}")
    if len(set(body)) != len(body):
        raise ValueError("body has repeated cells")
    for i in range(len(body) - 1):
        (r0, c0), (r1, c1) = body[i], body[i + 1]
        if abs(r0 - r1) + abs(c0 - c1) != 1:
            raise ValueError(f"body is not contiguous: body[{i}] {body[i]} -> body[{i + 1}] {body[i + 1]}")
    delta = (body[0][0] - body[1][0], body[0][1] - body[1][1])
    if _MOVE_BY_DELTA[delta] != state.direction:
        raise ValueError(f"direction {state.direction.name} does not match neck -> head ({_MOVE_BY_DELTA[delta].name})")
    if state.apple is None:
        if require_apple and len(body) < n * n:
            raise ValueError("apple is missing while the board is not full")
    else:
        row, col = state.apple
        if not (0 <= row < n and 0 <= col < n):
            raise ValueError(f"apple {state.apple} is outside the {n}x{n} board")
        if tuple(state.apple) in set(body):
            raise ValueError(f"apple {state.apple} is on the snake")
    if state.outcome is not None and state.outcome not in OUTCOMES:
        raise ValueError(f"outcome must be None or one of {', '.join(OUTCOMES)}, got {state.outcome!r}")


def safe_moves(state: GameState) -> list[Move]:
    """Moves that do not end the game at once: no wall, no reversal, no body cell except the tail
    (which moves away; the snake cannot eat on the tail cell since the apple is never on the snake).

    Returns:
        The safe moves in ``Move`` order; empty if every move dies.
    """
    n = state.grid_size
    row, col = state.head
    body = state.body
    neck = body[1] if len(body) > 1 else None
    tail = body[-1]
    occupied = set(body)
    moves = []
    for move in _MOVES:
        d_row, d_col = _DELTAS[move]
        target = (row + d_row, col + d_col)
        if not (0 <= target[0] < n and 0 <= target[1] < n) or target == neck:
            continue
        if target in occupied and target != tail:
            continue
        moves.append(move)
    return moves


# --------------------------------------------------------------------------- environment


def _step_table(n: int) -> tuple[tuple[int, int, int, int], ...]:
    """For each flat cell, the flat target of UP, DOWN, LEFT, RIGHT (``-1`` = outside the board)."""
    table = []
    for cell in range(n * n):
        row, col = divmod(cell, n)
        table.append(
            (
                cell - n if row > 0 else -1,
                cell + n if row < n - 1 else -1,
                cell - 1 if col > 0 else -1,
                cell + 1 if col < n - 1 else -1,
            )
        )
    return tuple(table)


class SnakeEnv(gym.Env):
    """Seeded Snake on an ``N x N`` board; the rules, rewards and observation codes are in the module
    docstring.

    Args:
        grid_size: ``N``, an int in ``[6, 32]``.
        render_mode: ``None``, ``"ansi"`` (``render()`` returns ``render.text_view``) or ``"rgb_array"``
            (``render()`` returns a ``uint8`` ``(H, W, 3)`` frame).

    Raises:
        ValueError: ``grid_size`` out of range or not an int; unknown ``render_mode``.

    Action space ``Discrete(4)`` (``Move`` values); observation space ``Box(0, 3, (N, N), uint8)``.
    ``reset(seed=s)`` fixes the apple sequence: same seed and same moves give the same game.
    ``reset(options={"state": GameState or dict})`` starts from a given position instead (its apple
    kept, or drawn if it is None).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 8}

    def __init__(self, grid_size: int = 10, render_mode: str | None = None) -> None:
        self.grid_size = n = validate_grid_size(grid_size)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(4)
        self.observation_space = spaces.Box(low=0, high=APPLE, shape=(n, n), dtype=np.uint8)
        self._cells = n * n
        self._starve_after = max_steps_without_apple(n)
        self._targets = _step_table(n)
        self._coords: tuple[Cell, ...] = tuple(divmod(cell, n) for cell in range(n * n))
        self._grid = np.zeros((n, n), dtype=np.uint8)
        self._flat = self._grid.reshape(-1)  # view: writes go to _grid
        # Snake as flat indices, head first; the set mirrors it for O(1) collision tests.
        self._body: deque[int] = deque()
        self._occupied: set[int] = set()
        self._apple = -1
        self._direction = int(Move.RIGHT)
        self._score = 0
        self._steps = 0
        self._since_apple = 0
        self._outcome: str | None = None
        self._started = False

    # -- gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a game: the standard start, or ``options["state"]`` (a ``GameState`` or its dict).

        Returns:
            ``(observation, info)``.

        Raises:
            ValueError: the given state is malformed, has another grid size, or is already over.
        """
        super().reset(seed=seed)
        n = self.grid_size
        state = (options or {}).get("state")
        if state is None:
            row, col = n // 2, n // 2
            body = [row * n + col - i for i in range(START_LENGTH)]
            apple = None
            self._direction = int(Move.RIGHT)
            self._score = self._steps = self._since_apple = 0
        else:
            if not isinstance(state, GameState):
                state = GameState.from_dict(state)
            check_state(state, require_apple=False)
            if state.grid_size != n:
                raise ValueError(f"state grid_size {state.grid_size} != env grid_size {n}")
            if state.outcome is not None:
                raise ValueError(f"cannot resume a finished game (outcome {state.outcome!r})")
            if state.apple is None and len(state.body) == n * n:
                raise ValueError("cannot resume a finished game (the snake fills the board)")
            body = [r * n + c for r, c in state.body]
            apple = None if state.apple is None else state.apple[0] * n + state.apple[1]
            self._direction = int(state.direction)
            self._score, self._steps, self._since_apple = state.score, state.steps, state.steps_since_apple
        self._body = deque(body)
        self._occupied = set(body)
        self._outcome = None
        self._started = True
        self._flat[:] = EMPTY
        self._flat[body] = BODY
        self._flat[body[0]] = HEAD
        if apple is None:
            self._place_apple()
        else:
            self._apple = apple
            self._flat[apple] = APPLE
        return self._grid.copy(), self._info()

    def step(self, action: int | Move) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Play one action (``Move`` or its int value).

        Returns:
            ``(observation, reward, terminated, truncated, info)``; see the module docstring.

        Raises:
            RuntimeError: before ``reset()`` or after the game ended.
            ValueError: the action is not 0-3.
        """
        if self._outcome is not None or not self._started:
            raise RuntimeError("the game is over or not started: call reset()")
        try:
            targets = self._targets[self._body[0]]
            target = targets[action]
            action = int(action)
        except (TypeError, IndexError):
            raise ValueError(f"action must be an int in [0, 3] (a Move), got {action!r}") from None
        if action < 0:
            raise ValueError(f"action must be an int in [0, 3] (a Move), got {action!r}")
        body = self._body
        occupied = self._occupied
        flat = self._flat
        self._steps += 1
        if target == body[1]:
            return self._die("self")  # reversal into the neck
        if target < 0:
            return self._die("wall")
        if target in occupied and target != body[-1]:
            return self._die("self")
        eats = target == self._apple
        flat[body[0]] = BODY
        if not eats:
            tail = body.pop()  # before adding the head: target may be this very cell
            occupied.remove(tail)
            flat[tail] = EMPTY
        body.appendleft(target)
        occupied.add(target)
        flat[target] = HEAD
        self._direction = action
        reward = 0.0
        if eats:
            reward = REWARD_APPLE
            self._score += 1
            self._since_apple = 0
            if len(body) == self._cells:
                self._apple = -1
                self._outcome = "won"
            else:
                self._place_apple()
        else:
            self._since_apple += 1
            if self._since_apple >= self._starve_after:
                self._outcome = "starved"
        return self._grid.copy(), reward, self._outcome is not None, False, self._info()

    def render(self) -> str | np.ndarray | None:
        """``"ansi"``: the prompt text view; ``"rgb_array"``: a ``uint8 (H, W, 3)`` frame; else None."""
        if self.render_mode is None:
            return None
        from gamesense.tasks.snake import render  # render imports this module

        if self.render_mode == "ansi":
            return render.text_view(self.state())
        return np.asarray(render.render_frame(self.state()).convert("RGB"))

    # -- snapshot and helpers

    def state(self) -> GameState:
        """Snapshot of the current game (O(length)).

        Raises:
            RuntimeError: before ``reset()``.
        """
        if not self._started:
            raise RuntimeError("call reset() first")
        coords = self._coords
        body = tuple(map(coords.__getitem__, self._body))
        return GameState(
            head=body[0],
            body=body,
            apple=coords[self._apple] if self._apple >= 0 else None,
            direction=_MOVES[self._direction],
            grid_size=self.grid_size,
            score=self._score,
            steps=self._steps,
            steps_since_apple=self._since_apple,
            outcome=self._outcome,
        )

    def safe_moves(self) -> list[Move]:
        """Same as ``safe_moves(self.state())`` without building the snapshot (O(1))."""
        body = self._body
        neck, tail = body[1], body[-1]
        occupied = self._occupied
        return [
            move
            for move, target in zip(_MOVES, self._targets[body[0]])
            if target >= 0 and target != neck and (target not in occupied or target == tail)
        ]

    @property
    def outcome(self) -> str | None:
        """``None`` while running, else one of ``OUTCOMES``."""
        return self._outcome

    @property
    def score(self) -> int:
        """Apples eaten in this game."""
        return self._score

    def _info(self) -> dict[str, Any]:
        return {"score": self._score, "length": len(self._body), "steps": self._steps, "outcome": self._outcome}

    def _die(self, outcome: str) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._outcome = outcome
        return self._grid.copy(), REWARD_DEATH, True, False, self._info()

    def _place_apple(self) -> None:
        """Put the apple on a uniformly drawn free cell (the caller guarantees one exists)."""
        occupied = self._occupied
        rng = self.np_random
        if 2 * len(occupied) <= self._cells:
            # At most half the board is taken: rejection sampling needs < 2 draws on average.
            while True:
                cell = int(rng.integers(self._cells))
                if cell not in occupied:
                    break
        else:
            free = [cell for cell in range(self._cells) if cell not in occupied]
            cell = free[int(rng.integers(len(free)))]
        self._apple = cell
        self._flat[cell] = APPLE
