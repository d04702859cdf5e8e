"""Snake engine: rules, seeding, scripted agents, trajectory JSONL round trip and loader errors, views."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from gamesense.tasks.snake import render
from gamesense.tasks.snake.agents import HamiltonianAgent, HeuristicAgent, RandomAgent
from gamesense.tasks.snake.game import (
    APPLE,
    BODY,
    HEAD,
    GameState,
    Move,
    SnakeEnv,
    check_state,
    max_steps_without_apple,
    safe_moves,
)
from gamesense.tasks.snake.trajectories import (
    GameRecord,
    load_trajectories,
    make_agent,
    play_game,
    record_games,
)


def make_env(state: GameState, seed: int = 0) -> SnakeEnv:
    env = SnakeEnv(state.grid_size)
    env.reset(seed=seed, options={"state": state})
    return env


def position(body: list[tuple[int, int]], direction: Move, apple=(0, 0), grid_size: int = 6) -> GameState:
    return GameState(head=body[0], body=tuple(body), apple=apple, direction=direction, grid_size=grid_size)


# --------------------------------------------------------------------------- rules


def test_start_position_and_observation():
    env = SnakeEnv(6)
    obs, info = env.reset(seed=0)
    state = env.state()
    assert state.body == ((3, 3), (3, 2), (3, 1)) and state.direction is Move.RIGHT
    assert info == {"score": 0, "length": 3, "steps": 0, "outcome": None}
    assert obs.dtype == np.uint8 and obs.shape == (6, 6)
    assert obs[3, 3] == HEAD and obs[3, 2] == obs[3, 1] == BODY and obs[state.apple] == APPLE
    assert (obs > 0).sum() == 4
    assert env.observation_space.contains(obs)


@pytest.mark.parametrize("bad", [5, 33, 0, 6.0, "8", True])
def test_grid_size_validated(bad):
    with pytest.raises(ValueError, match="grid_size"):
        SnakeEnv(bad)


def test_wall_death():
    env = SnakeEnv(6)
    env.reset(seed=0)
    for _ in range(2):  # (3, 3) -> (3, 5)
        env.step(Move.RIGHT)
    assert env.outcome is None
    _, reward, terminated, truncated, info = env.step(Move.RIGHT)
    assert (reward, terminated, truncated, info["outcome"]) == (-1.0, True, False, "wall")
    assert env.state().head == (3, 5)  # the head does not enter the wall
    with pytest.raises(RuntimeError, match="reset"):
        env.step(Move.UP)


def test_reversal_into_neck_is_self_collision():
    env = SnakeEnv(8)
    env.reset(seed=3)
    _, reward, terminated, _, info = env.step(Move.LEFT)
    assert (reward, terminated, info["outcome"], info["steps"]) == (-1.0, True, "self", 1)


def test_body_collision():
    # U shape: head (2, 2) heading LEFT; DOWN enters (3, 2), a body cell that is not the tail.
    env = make_env(position([(2, 2), (2, 3), (3, 3), (3, 2), (3, 1)], Move.LEFT))
    _, reward, terminated, _, info = env.step(Move.DOWN)
    assert (reward, terminated, info["outcome"]) == (-1.0, True, "self")


def test_moving_into_the_leaving_tail_is_allowed():
    env = make_env(position([(2, 2), (2, 3), (3, 3), (3, 2)], Move.LEFT, apple=(0, 0)))
    assert Move.DOWN in safe_moves(env.state())
    _, reward, terminated, _, _ = env.step(Move.DOWN)
    assert (reward, terminated) == (0.0, False)
    assert env.state().body == ((3, 2), (2, 2), (2, 3), (3, 3))


def test_eating_grows_keeps_tail_and_moves_apple():
    env = make_env(position([(2, 2), (2, 1), (2, 0)], Move.RIGHT, apple=(2, 3)), seed=5)
    _, reward, _, _, info = env.step(Move.RIGHT)
    state = env.state()
    assert reward == 1.0 and info["score"] == 1 and state.steps_since_apple == 0
    assert state.body == ((2, 3), (2, 2), (2, 1), (2, 0))
    assert state.apple is not None and state.apple not in state.body


def test_apple_never_on_snake_sparse_and_dense():
    for seed in range(5):
        env = SnakeEnv(6)
        env.reset(seed=seed)
        agent = HamiltonianAgent(6)  # fills the board: exercises dense apple placement too
        while env.outcome is None:
            state = env.state()
            assert state.apple is None or state.apple not in state.body
            env.step(agent.act(state))
        assert env.outcome == "won"


def test_hamiltonian_wins_small_board():
    record = play_game(0, 6, HamiltonianAgent(6), max_steps=5000, record_states=True)
    assert record.outcome == "won" and record.score == 36 - 3
    final = record.states[-1]
    assert final.length == 36 and final.apple is None and final.outcome == "won"
    with pytest.raises(ValueError, match="even"):
        HamiltonianAgent(7)


def test_starvation_counter():
    # A length-3 snake circling a 2x2 square never eats; find a seed whose apple is outside the square.
    square = {(3, 2), (3, 3), (4, 2), (4, 3)}
    env = SnakeEnv(6)
    for seed in range(100):
        env.reset(seed=seed)
        if env.state().apple not in square:
            break
    loop = [Move.DOWN, Move.LEFT, Move.UP, Move.RIGHT]
    limit = max_steps_without_apple(6)
    for step in range(limit - 1):
        _, reward, terminated, _, _ = env.step(loop[step % 4])
        assert not terminated and reward == 0.0
    assert env.state().steps_since_apple == limit - 1
    _, reward, terminated, _, info = env.step(loop[(limit - 1) % 4])
    assert (reward, terminated, info["outcome"], info["steps"]) == (0.0, True, "starved", limit)


def test_reset_from_state_rejects_bad_positions():
    env = SnakeEnv(6)
    with pytest.raises(ValueError, match="contiguous"):
        env.reset(options={"state": position([(2, 2), (2, 3), (2, 5)], Move.LEFT)})
    with pytest.raises(ValueError, match="on the snake"):
        env.reset(options={"state": position([(2, 2), (2, 3), (2, 4)], Move.LEFT, apple=(2, 4))})
    with pytest.raises(ValueError, match="direction"):
        env.reset(options={"state": position([(2, 2), (2, 3), (2, 4)], Move.RIGHT)})


def test_state_dict_round_trip():
    env = SnakeEnv(8)
    env.reset(seed=1)
    env.step(Move.UP)
    state = env.state()
    data = state.to_dict()
    assert {"head", "body", "apple", "direction", "grid_size"} <= data.keys()
    assert isinstance(data["body"][0], list) and data["direction"] == "UP"
    assert GameState.from_dict(json.loads(json.dumps(data))) == state


def test_move_parse():
    assert Move.parse(" up ") is Move.UP and Move.parse(3) is Move.RIGHT and Move.parse(Move.LEFT) is Move.LEFT
    for bad in ("NORTH", 4, -1, True, None):
        with pytest.raises(ValueError):
            Move.parse(bad)


# --------------------------------------------------------------------------- seeding


def trace(seed: int, grid: int = 8) -> list[dict]:
    record = play_game(seed, grid, RandomAgent(seed=123), max_steps=300)
    return [move.to_dict() for move in record.moves]


def test_same_seed_same_game_and_different_seeds_differ():
    assert trace(4) == trace(4)
    first_apples = set()
    for seed in range(6):
        env = SnakeEnv(8)
        env.reset(seed=seed)
        first_apples.add(env.state().apple)
    assert len(first_apples) > 1
    assert trace(4) != trace(5)


# --------------------------------------------------------------------------- agents


@pytest.mark.parametrize("grid", [6, 8])
def test_heuristic_never_crashes(grid):
    outcomes = [play_game(seed, grid, HeuristicAgent(), max_steps=1500).outcome for seed in range(20)]
    assert not {"wall", "self"} & set(outcomes), outcomes


def test_random_agent_avoids_fatal_moves_when_it_can():
    for seed in range(10):
        agent = RandomAgent(seed)
        record = play_game(seed, 8, agent, max_steps=400)
        for move in record.moves:
            safe = safe_moves(move.game_state)
            if safe:
                assert move.move in safe


def test_make_agent():
    assert [make_agent(name, 1).name for name in ("random", "heuristic", "hamiltonian")] == [
        "random",
        "heuristic",
        "hamiltonian",
    ]
    with pytest.raises(ValueError, match="unknown agent"):
        make_agent("greedy")


# --------------------------------------------------------------------------- trajectories


def test_record_and_load_round_trip(tmp_path):
    path = tmp_path / "out" / "games.jsonl"
    summary = record_games("heuristic", 6, 3, seed=10, out_path=path, progress=False, max_steps=200)
    assert summary["games"] == 3 and sum(summary["outcomes"].values()) == 3
    report = load_trajectories(path)
    assert report.skipped == [] and report.lines == 3 and len(path.read_text().splitlines()) == 3
    assert summary["moves"] == sum(game.steps for game in report.games) > 0
    expected = [play_game(10 + i, 6, make_agent("heuristic", 10 + i), max_steps=200) for i in range(3)]
    assert [game.to_dict() for game in report.games] == [game.to_dict() for game in expected]
    assert isinstance(report.games[0], GameRecord) and report.games[0].moves[0].move in Move


def test_loader_reports_bad_lines(tmp_path):
    good = play_game(0, 6, HeuristicAgent(), max_steps=5).to_dict()

    def variant(edit) -> str:
        data = json.loads(json.dumps(good))
        edit(data)
        return json.dumps(data)

    lines = [
        json.dumps(good),  # 1 ok
        '{"grid_size": 6, "seed": ',  # 2 bad JSON
        variant(lambda d: d.pop("seed")),  # 3 missing field
        variant(lambda d: d["moves"][1].update(move="JUMP")),  # 4 illegal move
        variant(lambda d: d["moves"][0]["game_state"].update(apple=[6, 0])),  # 5 outside the board
        variant(lambda d: d["moves"][0]["game_state"]["body"].__setitem__(2, [0, 0])),  # 6 not contiguous
        variant(lambda d: d.update(score="3")),  # 7 wrong type
        "",  # blank: ignored
        variant(lambda d: d["moves"][0].update(extra=1)),  # 9 unknown key
        json.dumps(good),  # 10 ok
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = load_trajectories(path)
    assert len(report.games) == 2 and report.lines == 9
    reasons = dict(report.skipped)
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 9]
    assert "Invalid JSON" in reasons[2]
    assert reasons[3].startswith("seed:")
    assert reasons[4].startswith("moves.1.move:")
    assert "outside the 6x6 board" in reasons[5]
    assert "not contiguous" in reasons[6]
    assert reasons[7].startswith("score:")
    assert reasons[9].startswith("moves.0.extra:")


def test_loader_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_trajectories(tmp_path / "nope.jsonl")


# --------------------------------------------------------------------------- views


def test_text_view():
    state = position([(2, 2), (2, 3), (3, 3), (3, 2)], Move.LEFT, apple=(0, 5))
    text = render.text_view(state)
    lines = text.split("\n")
    assert lines[0] == render.legend()
    assert lines[1:7] == [".....A", "......", "..Ho..", "..to..", "......", "......"]
    assert lines[7:] == ["head: (2, 2) moving LEFT", "length: 4", "apple: (0, 5)"]
    assert render.text_view(state, with_legend=False).split("\n")[0] == ".....A"
    check_state(state)


def test_gif_written_with_one_frame_per_state(tmp_path):
    record = play_game(2, 6, RandomAgent(2), max_steps=12, record_states=True)
    states = record.states
    assert len(states) == record.steps + 1
    path = render.save_gif(states, tmp_path / "game.gif", cell_px=8, fps=10)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == len(states)
        assert gif.size == (6 * 8, 6 * 8 + 12)
    with pytest.raises(ValueError):
        render.save_gif([], tmp_path / "empty.gif")
