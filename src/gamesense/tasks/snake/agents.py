"""Scripted Snake agents: baselines and references for the LLM agent.

Every agent has a ``name`` and ``act(state: GameState) -> Move``, and is deterministic given its own
seed (the game's randomness lives in the environment). An agent may also expose ``last_reasoning``
(``str | None``), which ``trajectories.play_game`` stores with the move; these scripted ones do not.

Search works on flat cell indices (``row * N + col``) with cached neighbour tables, ``bytearray``
masks and ``deque`` queues: a 16x16 BFS costs tens of microseconds.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol, runtime_checkable

from gamesense.tasks.snake.game import GameState, Move, safe_moves, validate_grid_size

_MOVES: tuple[Move, ...] = tuple(Move)


@runtime_checkable
class Agent(Protocol):
    """What ``play_game`` needs from an agent."""

    name: str

    def act(self, state: GameState) -> Move:
        """The move to play in ``state`` (a running game)."""
        ...


# --------------------------------------------------------------------------- flat-grid search


@lru_cache(maxsize=None)
def _neighbours(n: int) -> tuple[tuple[tuple[Move, int], ...], ...]:
    """For each flat cell of an ``n x n`` board, its in-board ``(move, neighbour)`` pairs in ``Move`` order."""
    table = []
    for cell in range(n * n):
        row, col = divmod(cell, n)
        pairs = []
        if row > 0:
            pairs.append((Move.UP, cell - n))
        if row < n - 1:
            pairs.append((Move.DOWN, cell + n))
        if col > 0:
            pairs.append((Move.LEFT, cell - 1))
        if col < n - 1:
            pairs.append((Move.RIGHT, cell + 1))
        table.append(tuple(pairs))
    return tuple(table)


def _blocked(n: int, cells: Sequence[int]) -> bytearray:
    mask = bytearray(n * n)
    for cell in cells:
        mask[cell] = 1
    return mask


def _shortest_path(start: int, goal: int, blocked: bytearray, nbrs) -> list[int] | None:
    """Cells from ``start`` (excluded) to ``goal`` (included) avoiding ``blocked`` cells (``goal`` may be
    blocked); None if unreachable. Ties go to the earlier move in ``Move`` order."""
    parent = [-1] * len(blocked)
    seen = bytearray(blocked)
    seen[start] = 1
    queue = deque((start,))
    while queue:
        cell = queue.popleft()
        for _, nxt in nbrs[cell]:
            if nxt == goal:
                path = [goal]
                while cell != start:
                    path.append(cell)
                    cell = parent[cell]
                path.reverse()
                return path
            if not seen[nxt]:
                seen[nxt] = 1
                parent[nxt] = cell
                queue.append(nxt)
    return None


def _distance(start: int, goal: int, blocked: bytearray, nbrs) -> int | None:
    """BFS length of the shortest path from ``start`` to ``goal`` (``goal`` may be blocked); None if none."""
    if start == goal:
        return 0
    seen = bytearray(blocked)
    seen[start] = 1
    queue = deque(((start, 0),))
    while queue:
        cell, dist = queue.popleft()
        for _, nxt in nbrs[cell]:
            if nxt == goal:
                return dist + 1
            if not seen[nxt]:
                seen[nxt] = 1
                queue.append((nxt, dist + 1))
    return None


def _area(start: int, blocked: bytearray, nbrs) -> int:
    """Free cells reachable from ``start`` (itself included)."""
    seen = bytearray(blocked)
    seen[start] = 1
    stack = [start]
    count = 0
    while stack:
        cell = stack.pop()
        count += 1
        for _, nxt in nbrs[cell]:
            if not seen[nxt]:
                seen[nxt] = 1
                stack.append(nxt)
    return count


def _tail_reachable(n: int, body: Sequence[int], nbrs) -> bool:
    """Whether the head can walk to the tail with every other body cell as a fixed wall (a
    conservative test: the body only frees cells as it moves)."""
    return _distance(body[0], body[-1], _blocked(n, body[:-1]), nbrs) is not None


def _flat_state(state: GameState) -> tuple[int, list[int], int]:
    n = state.grid_size
    body = [row * n + col for row, col in state.body]
    apple = -1 if state.apple is None else state.apple[0] * n + state.apple[1]
    return n, body, apple


# --------------------------------------------------------------------------- agents


class RandomAgent:
    """Uniform over the moves that do not die at once (``game.safe_moves``); uniform over all four
    when every move dies.

    Args:
        seed: seed of the agent's own ``random.Random``.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._rng = random.Random(seed)

    def act(self, state: GameState) -> Move:
        """A random safe move."""
        return self._rng.choice(safe_moves(state) or _MOVES)


class HeuristicAgent:
    """Greedy apple chaser that keeps an escape route to its own tail.

    Rule, re-evaluated at every move ("tail reachable" = the head has a path to the tail when every
    other body cell is a wall; the tail is always allowed since it moves away):

    1. Apple: BFS the shortest path from the head to the apple, body cells blocked except the tail.
       Simulate the snake walking that path (it grows by one on the apple). If the tail is reachable in
       that final position, or the snake then fills the board, AND the tail is reachable right after
       the path's first move, play that first move.
    2. Tail: otherwise, among the safe moves after which the tail is reachable (eating if the move
       lands on the apple), play the one with the longest BFS distance from the new head to the new
       tail (stalls the longest while the body frees space); ties go to ``Move`` order.
    3. Otherwise the safe move whose new head reaches the most free cells; if no move is safe, keep
       the current direction (the game is lost anyway).

    Each move played in 1 or 2 keeps the tail reachable, and from a position where the tail is
    reachable the first step towards it keeps it reachable, so starting from a standard start the
    agent never hits a wall or itself (step 3 only serves positions from elsewhere). It can starve:
    step 2 may circle until the ``4 * N * N`` limit while the apple never becomes safe to take.
    """

    name = "heuristic"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed  # unused: the agent is deterministic; kept for a uniform factory

    def act(self, state: GameState) -> Move:
        """The move chosen by the rule above."""
        n, body, apple = _flat_state(state)
        nbrs = _neighbours(n)
        head, neck, tail = body[0], body[1], body[-1]
        length = len(body)

        if apple >= 0:
            blocked = _blocked(n, body[:-1])
            path = _shortest_path(head, apple, blocked, nbrs)
            if path is not None:
                # Walking k cells and eating at the end: new body = reversed path + old body, length + 1.
                after_path = (path[::-1] + body)[: length + 1]
                if len(after_path) == n * n or _tail_reachable(n, after_path, nbrs):
                    first = path[0]
                    after_first = [first, *body] if first == apple else [first, *body[:-1]]
                    if len(after_first) == n * n or _tail_reachable(n, after_first, nbrs):
                        return _move_between(head, first, n)

        best: tuple[int, int] | None = None  # (distance to tail, -move) of the best tail-keeping move
        safe: list[tuple[Move, list[int]]] = []
        occupied = set(body)
        for move, nxt in nbrs[head]:
            if nxt == neck or (nxt in occupied and nxt != tail):
                continue
            new_body = [nxt, *body] if nxt == apple else [nxt, *body[:-1]]
            if len(new_body) == n * n:
                return move  # eats the last apple: won
            safe.append((move, new_body))
            dist = _distance(nxt, new_body[-1], _blocked(n, new_body[:-1]), nbrs)
            if dist is not None and (best is None or (dist, -move) > best):
                best = (dist, -move)
        if best is not None:
            return _MOVES[-best[1]]
        if safe:
            areas = [(_area(body_[0], _blocked(n, body_[:-1]), nbrs), -move) for move, body_ in safe]
            return _MOVES[-max(areas)[1]]
        return state.direction


class HamiltonianAgent:
    """Follows a fixed Hamiltonian cycle, so it never crashes and eats every apple within ``N * N``
    steps: it always wins (in ``O(N**4)`` steps), an upper bound for the other agents.

    The cycle (even ``N`` only, since odd boards have none): row 0 left to right from col 1, then the
    rows snake through cols ``1..N-1``, the last row runs out to col 0, and col 0 leads back up to
    ``(0, 0)``. The agent walks it in whichever direction does not reverse into the neck; the standard
    start lies on the cycle (cols 1-3 of one row), so the body always trails the head along it. From
    other positions it may crash.

    Args:
        grid_size: optional, to fail early on odd boards.

    Raises:
        ValueError: odd grid size (here, or in ``act``).
    """

    name = "hamiltonian"

    def __init__(self, grid_size: int | None = None, seed: int = 0) -> None:
        self.seed = seed  # unused: deterministic
        if grid_size is not None:
            _hamiltonian_cycle(validate_grid_size(grid_size))

    def act(self, state: GameState) -> Move:
        """Next cell of the cycle from the head."""
        n = state.grid_size
        successor, predecessor = _hamiltonian_cycle(n)
        head = state.head[0] * n + state.head[1]
        neck = state.body[1][0] * n + state.body[1][1]
        nxt = successor[head] if successor[head] != neck else predecessor[head]
        return _move_between(head, nxt, n)


@lru_cache(maxsize=None)
def _hamiltonian_cycle(n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(successor, predecessor)`` flat-index tables of the cycle described in ``HamiltonianAgent``."""
    if n % 2:
        raise ValueError(f"HamiltonianAgent needs an even grid_size, got {n}")
    order = []
    for row in range(n):
        cols = range(1, n) if row % 2 == 0 else range(n - 1, 0, -1)
        order.extend(row * n + col for col in cols)
    order.extend(row * n for row in range(n - 1, -1, -1))  # col 0, bottom to top
    successor = [0] * (n * n)
    predecessor = [0] * (n * n)
    for i, cell in enumerate(order):
        nxt = order[(i + 1) % len(order)]
        successor[cell] = nxt
        predecessor[nxt] = cell
    return tuple(successor), tuple(predecessor)


def _move_between(cell: int, neighbour: int, n: int) -> Move:
    diff = neighbour - cell
    if diff == -n:
        return Move.UP
    if diff == n:
        return Move.DOWN
    return Move.LEFT if diff == -1 else Move.RIGHT
