"""The Snake task plugin: data, records, scoring games, the model policy, and the whole recipe end to end with
a tiny random model (record -> SFT -> move accuracy + games on two boards -> registry gate -> play)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gamesense.config import RecipeError, load_recipe
from gamesense.training.recipe import LLMRecipe
from gamesense.tasks import get_task
from gamesense.tasks.snake.game import Move
from gamesense.tasks.snake.task import game_metrics, parse_move, play_games
from gamesense.tasks.snake.trajectories import record_games


def small_options(**rollout) -> dict:
    """The snake recipe's options, shrunk to seconds."""
    options = load_recipe("snake", LLMRecipe).task_options
    options["record"].update(train_games=2, eval_games=1, max_steps=30)
    options.update(train_moves=40, eval_moves=10)
    options["rollout"].update({"grids": [6, 8], "games": 2, "max_steps": 15, **rollout})
    return options


def test_options_are_validated_with_the_key_named():
    with pytest.raises(RecipeError, match="task_options.rollout.grids"):
        get_task("snake", small_options(grids=[4]))
    options = small_options()
    options["record"]["agent"] = "oracle"
    with pytest.raises(RecipeError, match="task_options.record.agent"):
        get_task("snake", options)


def test_load_reports_bad_lines_and_records_are_distinct_moves(tmp_path):
    task = get_task("snake", small_options())
    path = tmp_path / "games.jsonl"
    record_games("heuristic", 6, 2, 0, path, progress=False, max_steps=30)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], '{"grid_size": 6}', lines[1], lines[0]]) + "\n")
    report = task.load(path)
    assert [line for line, _ in report.skipped] == [2]
    assert {ex.line for ex in report.examples} == {1, 3, 4} and len(report.examples) == 90
    records = task.sft_records(report.examples)
    assert len(records) == 40  # line 4 repeats line 1: duplicates go first, then the train_moves sample
    assert all(r["completion"][0]["content"] in {"UP", "DOWN", "LEFT", "RIGHT"} for r in records)
    assert len({json.dumps(r["prompt"]) for r in records}) == 40
    assert records[0]["prompt"][0]["content"] == task.options.system_prompt
    assert len(task.load(path, max_rows=1).examples) == 30


def test_board_text_says_where_the_apple_is_and_which_moves_are_safe():
    from gamesense.tasks.snake.game import GameState
    from gamesense.tasks.snake.task import board_text

    state = GameState(head=(0, 2), body=((0, 2), (0, 1), (0, 0)), apple=(3, 0), direction=Move.RIGHT, grid_size=6)
    lines = board_text(state).splitlines()
    assert lines[:6] == ["toH...", "......", "......", "A.....", "......", "......"]
    assert lines[-2:] == ["apple from head: 3 down, 2 left", "safe moves: DOWN RIGHT"]


def test_parse_move():
    assert parse_move(" up\n") == "UP" and parse_move("LEFT.") == "LEFT" and parse_move("go left") == ""


def test_games_are_capped_seeded_and_scored():
    task = get_task("snake", small_options())
    games = task.evaluation_games()
    assert games == [(6, 1000), (6, 1001), (8, 1000), (8, 1001)]
    first, _ = task.play("heuristic", games, progress=False)
    again, _ = task.play("heuristic", games, progress=False)
    assert [(r.score, r.steps) for r in first] == [(r.score, r.steps) for r in again]
    assert all(r.steps <= 15 for r in first) and {r.outcome for r in first} == {"truncated"}  # never dies in 15 moves
    metrics = game_metrics(first, train_grid=6)
    assert metrics["score"] == metrics["score_6x6"] == sum(r.score for r in first[:2]) / 2
    assert sum(metrics[f"{o}_8x8"] for o in ("wall", "self", "starved", "won", "truncated")) == pytest.approx(1.0)
    always_up = play_games([(6, 0)], lambda states, idx: [Move.UP] * len(states), max_steps=50)
    assert always_up[0].outcome == "wall" and always_up[0].steps == 4  # head starts in row 3


def test_model_policy_scores_single_token_moves_like_full_log_probabilities(tiny_model_dir):
    """The one-forward-pass path (left-padded, last position only) ranks moves as the full scoring does."""
    import torch

    from gamesense.config import GenerationSection
    from gamesense.evaluation.policy import ModelPolicy
    from gamesense.models.refs import load_for_inference
    from gamesense.tasks.snake.game import SnakeEnv
    from gamesense.tasks.snake.task import board_prompt

    model = load_for_inference(str(tiny_model_dir), dtype="float32")
    policy = ModelPolicy(model, "tiny", GenerationSection(max_new_tokens=4, batch_size=3))
    prompts = []
    for grid, seed in [(6, 0), (8, 1), (10, 2), (12, 3)]:  # different lengths: padding matters
        env = SnakeEnv(grid)
        env.reset(seed=seed)
        prompts.append(board_prompt(env.state(), "Snake."))
    moves = ["UP", "DOWN", "LEFT", "RIGHT"]
    picks = policy.choose(prompts, [moves] * 4)
    tokenizer = model.tokenizer
    for prompt, pick in zip(prompts, picks):
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=False)
        with torch.no_grad():
            logits = model.model(input_ids=torch.tensor([ids])).logits[0, -1]
        move_ids = [tokenizer(m, add_special_tokens=False)["input_ids"][0] for m in moves]
        assert pick == int(logits[move_ids].argmax())


@pytest.mark.slow
def test_snake_recipe_end_to_end(workdir, tiny_model_dir, tmp_path):
    """finetune --recipe snake records the expert, trains, scores move accuracy and games against the base
    model, random and expert, registers and gates; then record and play from the command line."""
    from gamesense.cli import app
    from gamesense.registry.mlflow_store import get_version_by_alias, setup_tracking

    options = json.dumps(small_options())
    overrides = [f"task_options={options}", f"model.base={tiny_model_dir}", "model.dtype=float32", "sft.max_steps=2",
                 "sft.bf16=false", "sft.save_steps=1", "runtime.compile=false", "lora.r=2", "zenml=false"]  # fmt: skip
    args = ["finetune", "--recipe", "snake"] + [a for o in overrides for a in ("--set", o)]
    runner = CliRunner(env={"COLUMNS": "200"})  # rich tables must not elide cells
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "metric" in line and "base" in line)
    assert all(column in header for column in ("+sft", "random", "heuristic"))
    for metric in ("score_6x6", "score_8x8", "move_accuracy", "score_vs_expert", "moves_per_s", "truncated_8x8"):
        assert f" {metric} " in result.output
    assert (workdir / "snake" / "heuristic-10x10-train.jsonl").is_file()
    setup_tracking()
    version = get_version_by_alias("gamesense-snake", "champion" if "-> champion" in result.output else "challenger")
    assert version.tags["task"] == "snake" and version.tags["gate_metric"] == "score"
    run_dir = next((workdir / "runs" / "snake").glob("*/sft"))
    assert {p.name for p in run_dir.glob("snake_*")} >= {"snake_scores.png", "snake_6x6_seed1000.gif", "snake_8x8_seed1000.gif"}

    out = tmp_path / "rec.jsonl"
    recorded = runner.invoke(app, ["snake", "record", "--agent", "random", "--grid", "6", "--games", "3", "--out", str(out)])
    assert recorded.exit_code == 0, recorded.output
    assert len(out.read_text().splitlines()) == 3 and "mean score" in recorded.output
    gif = tmp_path / "play.gif"
    played = runner.invoke(app, ["snake", "play", "--model", f"models:/gamesense-snake/{version.version}", "--grid", "6",
                                      "--games", "2", "--gif", str(gif), "--set", f"task_options={options}"])  # fmt: skip
    assert played.exit_code == 0, played.output
    assert gif.is_file() and "moves/s" in played.output
    bad = runner.invoke(app, ["snake", "play", "--model", "heuristic", "--grid", "40"])
    assert bad.exit_code != 0 and "--grid" in bad.output
