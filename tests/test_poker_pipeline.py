"""The poker task through every generic layer with a tiny random model: its recipes' stages (sft -> reward
-> grpo, sft -> dpo) end to end on real PokerBench rows, the held-back validation slice, rows set aside by
file and line, and evaluation on any file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gamesense.config import load_recipe
from gamesense.training.recipe import LLMRecipe
from gamesense.tasks import get_task
from gamesense.tasks.poker import PokerTask, SpotLabel, load_pokerbench

REPO = Path(__file__).resolve().parents[1]
POKERBENCH_DIR = REPO.parent / "shared" / "datasets" / "pokerbench"


@pytest.fixture()
def pokerbench_dir() -> Path:
    if not (POKERBENCH_DIR / "postflop.csv").is_file():
        pytest.skip("PokerBench data not found next to the repository (../shared/datasets/pokerbench)")
    return POKERBENCH_DIR


@pytest.fixture()
def small_pokerbench(tmp_path, pokerbench_dir) -> Path:
    """The first 30 rows of each real file, plus one bad postflop row (line 32: a card that does not exist)."""
    folder = tmp_path / "pokerbench"
    folder.mkdir()
    for kind in ("preflop", "postflop"):
        lines = (pokerbench_dir / f"{kind}.csv").read_text().splitlines()[:31]
        if kind == "postflop":
            lines.append(_bad_card_row(lines[-1]))
        (folder / f"{kind}.csv").write_text("\n".join(lines) + "\n")
    return folder


def _bad_card_row(row: str) -> str:
    """``row`` with the hero's holding replaced by cards that do not exist."""
    import csv
    import io

    fields = next(csv.reader(io.StringIO(row)))
    fields[11] = "Xx1y"  # holding
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def test_folder_loads_both_files_and_names_the_file_of_a_bad_row(small_pokerbench):
    report = load_pokerbench(small_pokerbench)
    assert report.kind == "both" and len(report.examples) == 60
    assert {spot.kind for spot in report.examples} == {"preflop", "postflop"}
    assert len(report.skipped) == 1
    line, reason = report.skipped[0]
    assert line == 32 and reason.startswith("postflop.csv: ") and "holding" in reason


def test_records_carry_what_scoring_and_rewards_need(pokerbench_dir):
    task = get_task("poker", load_recipe("poker", LLMRecipe).task_options)
    assert isinstance(task, PokerTask) and task.gate_metric == "action_accuracy"
    spots = load_pokerbench(pokerbench_dir / "postflop.csv", max_rows=20).examples
    sft = task.sft_records(spots)
    assert sft[0]["completion"] == [{"role": "assistant", "content": spots[0].label}]
    assert sft[0]["available_moves"] == list(spots[0].available_moves)
    json.dumps(sft)  # records are JSON-able (fingerprints, ZenML artifacts)
    pairs = task.preference_records(spots)
    assert len(pairs) == sum(len(s.available_moves) - 1 for s in spots)
    assert all(p["chosen"][0]["content"] == p["label"] != p["rejected"][0]["content"] for p in pairs)
    evals = task.eval_records(spots)
    predictions = [r["reference"] for r in evals]
    metrics = task.compute_metrics(predictions, evals)
    assert metrics["action_accuracy"] == metrics["exact_match"] == 1.0 and metrics["illegal_action_rate"] == 0.0
    assert "preflop_action_accuracy" not in metrics  # no preflop rows: no preflop scores instead of NaN
    assert SpotLabel.from_record(evals[0]).label_action == spots[0].label_action
    assert task.row_scores("fold", evals[0])["action_accuracy"] == float(spots[0].label == "fold")


def test_validation_slice_is_held_back_from_training(pokerbench_dir):
    task = get_task("poker", load_recipe("poker", LLMRecipe).task_options)
    spots = load_pokerbench(pokerbench_dir).examples
    train, validation = task.split_validation(spots)
    assert len(validation) == pytest.approx(0.1 * len(spots), abs=8)
    assert not {(s.kind, s.line) for s in train} & {(s.kind, s.line) for s in validation}
    assert {s.street for s in validation} == {"preflop", "flop", "turn", "river"}
    assert task.split_validation(spots)[1] == validation  # same seed, same slice


def _tiny_overrides(tiny_model_dir, data: Path, stages: str) -> list[str]:
    trainer = ["max_steps=1", "per_device_train_batch_size=4", "save_steps=1", "bf16=false", "logging_steps=1"]
    overrides = [f"model.base={tiny_model_dir}", "model.dtype=float32", f"data.train_file={data}", f"stages={stages}",
                 "lora.r=2", "runtime.compile=false", "zenml=false", "generation.batch_size=16",
                 "task_options.validation_fraction=0.2"]  # fmt: skip
    for stage in ("sft", "reward", "dpo", "grpo"):
        overrides += [f"{stage}.{setting}" for setting in trainer]
    return overrides + ["grpo.num_generations=2", "grpo.generation_batch_size=4", "grpo.max_completion_length=4",
                        "sft.max_steps=2"]  # fmt: skip


def _finetune(overrides: list[str], recipe: str):
    from gamesense.cli import app

    args = ["finetune", "--recipe", recipe] + [a for o in overrides for a in ("--set", o)]
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, args)


@pytest.mark.slow
def test_poker_recipe_sft_reward_grpo_end_to_end(workdir, tiny_model_dir, small_pokerbench, tmp_path):
    """finetune --recipe poker: SFT, reward model (pairwise accuracy on held-out pairs), GRPO with the reward
    model and the rule reward; each policy evaluated on the validation slice with a confusion matrix;
    registered as gamesense-poker; then evaluate on another file."""
    from gamesense.registry.mlflow_store import get_version_by_alias, setup_tracking

    result = _finetune(_tiny_overrides(tiny_model_dir, small_pokerbench, "[sft,reward,grpo]"), "poker")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "metric" in line and "base" in line)
    assert "+sft" in header and "+grpo" in header and "+reward" not in header
    for metric in ("action_accuracy", "exact_match", "preflop_action_accuracy", "postflop_action_accuracy", "illegal_action_rate", "reference_action_accuracy"):
        assert f" {metric} " in result.output
    assert "pairwise accuracy" in result.output and "set-aside rows: train 1" in result.output
    run_dir = next((workdir / "runs" / "poker").glob("*/grpo"))
    assert (run_dir / "confusion_matrix.png").is_file() and (run_dir / "predictions.jsonl").is_file()
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 12 and {"kind", "line", "label", "action_accuracy", "exact_match", "legal"} <= set(predictions[0])
    setup_tracking()
    alias = "champion" if "-> champion" in result.output else "challenger"
    version = get_version_by_alias("gamesense-poker", alias)
    assert version.tags["task"] == "poker" and version.tags["gate_metric"] == "action_accuracy" and version.tags["stages"] == "sft,reward,grpo"

    from gamesense.cli import app

    out = tmp_path / "preds.jsonl"
    evaluation = CliRunner(env={"COLUMNS": "200"}).invoke(app, [
        "evaluate", "--model", f"models:/gamesense-poker@{alias}", "--data", str(small_pokerbench / "preflop.csv"),
        "--output", str(out), "--set", f"model.base={tiny_model_dir}", "--set", "model.dtype=float32"])  # fmt: skip
    assert evaluation.exit_code == 0, evaluation.output
    assert " preflop_action_accuracy " in evaluation.output and " postflop_action_accuracy " not in evaluation.output
    assert len(out.read_text().splitlines()) == 30


@pytest.mark.slow
def test_poker_dpo_recipe_end_to_end(workdir, tiny_model_dir, small_pokerbench):
    """finetune --recipe poker-dpo: SFT then DPO on the same pairs, both evaluated."""
    result = _finetune(_tiny_overrides(tiny_model_dir, small_pokerbench, "[sft,dpo]"), "poker-dpo")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "metric" in line and "base" in line)
    assert "+sft" in header and "+dpo" in header
    assert "dpo: 1 steps" in result.output
