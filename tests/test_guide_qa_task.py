"""The guide Q&A task: its loader (bad lines set aside), the held-out split by chunk, its metrics, and the
whole finetune pipeline with a tiny random model on a hand-written Q&A file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gamesense.config import load_recipe
from gamesense.training.recipe import LLMRecipe
from gamesense.tasks import get_task
from gamesense.tasks.base import DataError
from gamesense.tasks.guide_qa.prompts import parse_verdict
from gamesense.tasks.guide_qa.task import GuideQATask, load_pairs, rouge_l

FACTS = [("What does Elbereth do?", "Engraving Elbereth scares most monsters away."),
         ("How do you pray?", "Use the #pray command when your god is not angry."),
         ("What is the Amulet of Yendor?", "The amulet you must bring back from the bottom of the dungeon."),
         ("How do you search for hidden doors?", "Press s to search the squares next to you."),
         ("What does the pet do?", "Your pet follows you, fights monsters and can steal from shops.")]  # fmt: skip


def write_pairs(path: Path, chunks: int = 10) -> Path:
    """``chunks`` chunks with the five facts each, as `synth qa` writes them."""
    with path.open("w") as handle:
        for c in range(chunks):
            for k, (question, answer) in enumerate(FACTS):
                handle.write(json.dumps({"id": f"guide-{c}-q{k}", "question": question, "answer": answer,
                                         "chunk_id": f"guide-{c}", "chunk": " ".join(a for _, a in FACTS),
                                         "source": {"file": "guide.txt", "section": "Intro", "span": [0, 10]}}) + "\n")  # fmt: skip
    return path


def test_loader_sets_bad_lines_aside_with_the_reason(tmp_path):
    path = tmp_path / "qa.jsonl"
    good = {"question": "Q?", "answer": "A.", "chunk_id": "c1"}
    path.write_text("\n".join([json.dumps(good), "{not json", json.dumps([1]), json.dumps({"question": "Q?"}),
                               "", json.dumps({"question": " ", "answer": "A", "chunk_id": 3}), json.dumps({"question": "Q2?", "answer": "B"})]) + "\n")  # fmt: skip
    report = load_pairs(path)
    assert [(e.line, e.chunk_id) for e in report.examples] == [(1, "c1"), (7, "Q2?")]  # no chunk id: the question
    reasons = dict(report.skipped)
    assert set(reasons) == {2, 3, 4, 6}
    assert reasons[2].startswith("not JSON") and "JSON object" in reasons[3] and "'answer'" in reasons[4]
    assert "'question'" in reasons[6] and "'chunk_id' must be a string" in reasons[6]
    with pytest.raises(DataError, match="synth qa"):
        load_pairs(tmp_path / "missing.jsonl")


def test_validation_holds_back_whole_chunks_deterministically(tmp_path):
    pairs = load_pairs(write_pairs(tmp_path / "qa.jsonl", chunks=200)).examples
    task = GuideQATask({"validation_fraction": 0.1})
    train, validation = task.split_validation(pairs)
    assert len(train) + len(validation) == len(pairs)
    assert not {p.chunk_id for p in train} & {p.chunk_id for p in validation}
    assert 10 <= len({p.chunk_id for p in validation}) <= 30  # ~20 of 200 chunks
    assert task.split_validation(pairs) == (train, validation)
    assert GuideQATask({"split_seed": 1}).split_validation(pairs)[1] != validation
    two = [p for p in pairs if p.chunk_id in ("guide-0", "guide-1")]
    assert len({p.chunk_id for p in GuideQATask().split_validation(two)[1]}) == 1  # never an empty validation side


def test_metrics_and_verdicts():
    task = get_task("guide_qa", load_recipe("guide-qa", LLMRecipe).task_options)
    assert isinstance(task, GuideQATask) and task.gate_metric == "rouge_l" and task.stop_strings == ()
    records = [{"reference": a, "question": q, "chunk": ""} for q, a in FACTS]
    perfect = task.compute_metrics([a for _, a in FACTS], records)
    assert perfect["rouge_l"] == pytest.approx(1.0) and perfect["empty_answers"] == 0.0 and "judge_correct" not in perfect
    worse = task.compute_metrics(["Scares monsters.", "", "", "", ""], records)
    assert 0 < worse["rouge_l"] < 0.2 and worse["empty_answers"] == 0.8
    assert rouge_l("monsters are scared by engraving Elbereth", FACTS[0][1]) < rouge_l(FACTS[0][1], FACTS[0][1])
    def verdict(text):  # the judge's words, as GuideQATask.judge reads them
        return parse_verdict(text, "CORRECT", "INCORRECT", endings=())

    assert verdict("CORRECT.") is True and verdict("incorrect") is False
    assert verdict("The answer is Incorrect, not correct") is False and verdict("maybe") is None
    assert verdict("corrected") is None


@pytest.mark.slow
def test_guide_qa_recipe_end_to_end(workdir, tiny_model_dir, tmp_path):
    """finetune --recipe guide-qa on a Q&A file: base and fine-tuned scored with ROUGE-L on held-out chunks,
    registered as gamesense-guide-qa; generate answers from the registered model."""
    from gamesense.cli import app
    from gamesense.registry.mlflow_store import get_version_by_alias, setup_tracking

    data = write_pairs(tmp_path / "qa.jsonl")
    overrides = [f"model.base={tiny_model_dir}", "model.dtype=float32", f"data.train_file={data}", "lora.r=2",
                 "runtime.compile=false", "zenml=false", "sft.max_steps=2", "sft.per_device_train_batch_size=4",
                 "sft.bf16=false", "sft.logging_steps=1", "generation.max_new_tokens=8",
                 "task_options.validation_fraction=0.3"]  # fmt: skip
    runner = CliRunner(env={"COLUMNS": "200"})
    result = runner.invoke(app, ["finetune", "--recipe", "guide-qa"] + [a for o in overrides for a in ("--set", o)])
    assert result.exit_code == 0, result.output
    assert " rouge_l " in result.output and " answer_words " in result.output
    run_dir = next((workdir / "runs" / "guide_qa").glob("*/sft"))
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert predictions and {"reference", "question", "chunk_id", "prediction", "rouge_l"} <= set(predictions[0])
    assert len({p["chunk_id"] for p in predictions}) < 10  # held-out chunks only
    setup_tracking()
    alias = "champion" if "-> champion" in result.output else "challenger"
    assert get_version_by_alias("gamesense-guide-qa", alias).tags["task"] == "guide_qa"
    answer = runner.invoke(app, ["generate", "What does Elbereth do?", "--model", f"models:/gamesense-guide-qa@{alias}",
                                 "--set", f"model.base={tiny_model_dir}", "--set", "model.dtype=float32"])  # fmt: skip
    assert answer.exit_code == 0, answer.output


@pytest.fixture(scope="module")
def tiny_teacher(tiny_model_dir, tmp_path_factory):
    """``gamesense serve llm`` over the tiny random model on 127.0.0.1: the base URL of its OpenAI API."""
    from support import isolated_workdir, served_on_localhost

    from gamesense.serving.llm.api import create_app

    with isolated_workdir(tmp_path_factory.mktemp("teacher")):
        app = create_app(str(tiny_model_dir), models=[], dtype="float32", max_batch=8)
        with served_on_localhost(app) as url:
            yield f"{url}/v1"


def test_synth_and_judge_through_our_own_server(tiny_teacher, tmp_path, workdir):
    """The default teacher path end to end: synth qa on a real guide through our server (a tiny random model
    writes nonsense: every pair is accounted for by some filter), then a repeat costs no call; the judge of the
    evaluation asks the same server."""
    from gamesense.tasks.guide_qa.synth import SynthOptions, synthesize
    from gamesense.teacher import Teacher

    guide = tmp_path / "pets.md"
    guide.write_text("# Pets\n\nYour dog follows you through the dungeon. It fights monsters next to you and can "
                     "steal items from shops.\n\n# Prayer\n\nPray when your hit points are low and your god is not "
                     "angry with you. A successful prayer restores your hit points.\n")  # fmt: skip
    options = SynthOptions(max_tokens=24, pairs_per_chunk=2)
    with Teacher(tiny_teacher, "base", cache_dir=tmp_path / "cache", max_retries=0) as teacher:
        first = synthesize([guide], teacher, tmp_path / "qa.jsonl", options, progress=False).summary
    with Teacher(tiny_teacher, "base", cache_dir=tmp_path / "cache", max_retries=0) as teacher:
        again = synthesize([guide], teacher, tmp_path / "again.jsonl", options, progress=False).summary
    assert first["chunks"] == 2 and first["teacher_calls"]["calls"] >= 2 and first["teacher_calls"]["errors"] == 0
    pair_filters = [f for f in first["filters"] if f["unit"] == "pairs"]
    assert all(a["kept"] == b["in"] for a, b in zip(pair_filters, pair_filters[1:]))
    assert pair_filters[-1]["kept"] == first["kept"] == len((tmp_path / "qa.jsonl").read_text().splitlines())
    assert again["teacher_calls"]["calls"] == 0 and again["teacher_calls"]["cache_hits"] == first["teacher_calls"]["calls"]

    task = GuideQATask({"judge_url": tiny_teacher, "judge_model": "base"})
    records = [{"reference": a, "question": q, "chunk": ""} for q, a in FACTS]
    metrics = task.compute_metrics([a for _, a in FACTS], records)
    assert 0 <= metrics["judge_correct"] + metrics["judge_unparsed"] <= 1 and metrics["rouge_l"] == pytest.approx(1.0)
