"""End-to-end LLM pipeline on a tiny random Llama: data -> base eval -> LoRA SFT -> eval -> registry,
with ZenML and without, plus the CLI surface."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from gamesense.cli import app
from gamesense.config import LLMRecipe


def tiny_recipe(tiny_model_dir, viggo_dir, tmp_path, **training) -> LLMRecipe:
    return LLMRecipe.model_validate(
        {
            "model": {"base": str(tiny_model_dir)},
            "data": {"train_file": str(viggo_dir / "train.csv"), "eval_file": str(viggo_dir / "validation.csv"),
                     "max_train_rows": 24, "max_eval_rows": 8},
            "training": {"max_steps": 2, "per_device_train_batch_size": 4, "save_steps": 1, "logging_steps": 1,
                         "output_dir": str(tmp_path / "ckpt"), **training},
            "generation": {"max_new_tokens": 6, "batch_size": 4},
        }
    )


def test_pipeline_without_zenml_registers_and_logs(workdir, tiny_model_dir, viggo_dir, tmp_path):
    import mlflow

    from gamesense.pipelines.llm_steps import run_local

    out = run_local(tiny_recipe(tiny_model_dir, viggo_dir, tmp_path))
    assert out["data"]["train_rows"] == 24 and out["data"]["eval_rows"] == 8
    assert out["trained"]["metrics"]["train_steps"] == 2
    # a random model scores 0 exact match, like the (random) base: not better -> challenger
    promo = out["promotion"]
    assert promo["version"] == "1" and promo["alias"] == "challenger" and not promo["promoted"]
    assert "does not beat base model" in promo["reason"]
    run = mlflow.get_run(out["data"]["run_id"])
    assert run.data.tags["promotion.alias"] == "challenger"
    assert {"base_exact_match", "finetuned_exact_match", "finetuned_slot_f1", "train_tokens_per_s"} <= set(run.data.metrics)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"adapter", "loss_curve.png", "recipe.yaml", "promotion.json", "predictions"} <= artifacts
    adapter_files = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= adapter_files
    preds = (tmp_path / "work" / "runs" / "viggo" / out["data"]["run_id"] / "predictions_finetuned.jsonl").read_text().splitlines()
    assert len(preds) == 8 and {"line", "input", "reference", "prediction", "exact_match"} <= set(json.loads(preds[0]))


def test_resume_continues_from_checkpoint(workdir, tiny_model_dir, viggo_dir, tmp_path):
    from gamesense.training.sft import finetune

    recipe = tiny_recipe(tiny_model_dir, viggo_dir, tmp_path)
    from gamesense.evaluation.runner import task_records
    from gamesense.tasks import get_task

    task = get_task("viggo")
    records = [{k: r[k] for k in ("prompt", "completion")} for r in task_records(task, task.load(viggo_dir / "train.csv", 24).examples)]
    first = finetune(recipe, records, output_dir=tmp_path / "ckpt", show_progress=False)
    assert (tmp_path / "ckpt" / "checkpoint-2").is_dir()
    recipe.training.max_steps = 4
    resumed = finetune(recipe, records, output_dir=tmp_path / "ckpt", resume=True, show_progress=False)
    assert resumed.metrics["train_steps"] == 4 and resumed.metrics["resumed_from_step"] == 2
    steps_logged = [r["step"] for r in resumed.log_history if "loss" in r]
    assert steps_logged == [1, 2, 3, 4], "a resumed run keeps the history and does not redo steps 1-2"
    assert resumed.log_history[0] == first.log_history[0]
    assert first.adapter_dir == resumed.adapter_dir


def test_completion_only_loss_keeps_eos(tiny_model_dir, viggo_dir, tmp_path):
    """The EOS closing each completion is a training target; prompt tokens and padding are not."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from gamesense.models.base import load_base_model, load_tokenizer
    from gamesense.tasks import get_task

    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    task = get_task("viggo")
    examples = task.load(viggo_dir / "validation.csv", 6).examples
    records = [task.to_prompt_completion(ex, None) for ex in examples]
    trainer = SFTTrainer(
        model=load_base_model(str(tiny_model_dir)),
        args=SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, per_device_train_batch_size=6,
                       report_to=[], bf16=False, use_cpu=True),
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    targets = sorted(tokenizer.decode(labels[labels != -100]) for labels in batch["labels"])
    # exactly the MR and the end-of-turn EOS (+ the template's newline): no prompt, no padding
    assert targets == sorted(f"{ex.mr}<|im_end|>\n" for ex in examples)
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_finetune_cli_with_zenml(workdir, tiny_model_dir, viggo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich tables must not elide cells
    recipe = tiny_recipe(tiny_model_dir, viggo_dir, tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump()))
    result = CliRunner().invoke(app, ["finetune", "--recipe", str(path), "--set", "training.max_steps=1"])
    assert result.exit_code == 0, result.output
    assert "registered gamesense-viggo version 1" in result.output
    from zenml.client import Client  # ZenML's store is process-wide: the first test to use it created it

    last_run = Client().get_pipeline("llm_finetune_pipeline").last_run
    assert str(last_run.status).endswith("completed") and set(last_run.steps) == {
        "prepare_data", "evaluate_base", "finetune", "evaluate_finetuned", "promote"}

    models = CliRunner().invoke(app, ["models", "list"])
    assert models.exit_code == 0 and "gamesense-viggo" in models.output and "challenger" in models.output
    promoted = CliRunner().invoke(app, ["models", "promote", "gamesense-viggo", "1"])
    assert promoted.exit_code == 0, promoted.output

    preds = tmp_path / "p.jsonl"
    evaluated = CliRunner().invoke(app, ["evaluate", "--model", "models:/gamesense-viggo@champion", "--data",
                                         str(viggo_dir / "validation.csv"), "--max-rows", "5", "--output", str(preds),
                                         "--recipe", str(path)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "exact_match" in evaluated.output and "tokens/s" in evaluated.output
    assert len(preds.read_text().splitlines()) == 5

    generated = CliRunner().invoke(app, ["generate", "--model", "models:/gamesense-viggo/1", "--recipe", str(path), "Is Portal 2 any good?"])
    assert generated.exit_code == 0, generated.output


@pytest.mark.parametrize(
    ("override", "message"),
    [("training.max_stepz=5", "unknown key 'training.max_stepz'"), ("training.max_steps=lots", "'training.max_steps'")],
)
def test_bad_recipe_fails_with_one_line_naming_the_key(override, message):
    result = CliRunner().invoke(app, ["finetune", "--set", override])
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_evaluate_rejects_wrong_columns(workdir, tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,x\n")
    result = CliRunner().invoke(app, ["evaluate", "--model", str(tiny_model_dir), "--data", str(bad)])
    assert result.exit_code == 2
    assert "'mr' and 'ref'" in result.output


def test_completion_loss_equals_model_loss(tiny_model_dir):
    """Our LM-head-on-completions-only loss is the model's own shifted cross-entropy, with its gradients."""
    import torch

    from gamesense.models.base import load_base_model
    from gamesense.training.sft import completion_loss

    model = load_base_model(str(tiny_model_dir))
    torch.manual_seed(0)
    input_ids = torch.randint(10, 1000, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, :4] = 0  # left padding in one row
    labels = input_ids.clone()
    labels[:, :5] = -100  # prompt
    labels[attention_mask == 0] = -100
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    ours = completion_loss(model, inputs)
    ours.backward()
    ours_grad = model.lm_head.weight.grad.clone()
    model.zero_grad()
    reference = model(**inputs).loss
    reference.backward()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    assert torch.allclose(ours_grad, model.lm_head.weight.grad, atol=1e-6)
    assert completion_loss(model, inputs, num_items_in_batch=2 * int((labels[:, 1:] != -100).sum())).item() == pytest.approx(reference.item() / 2, rel=1e-5)


@pytest.mark.slow
def test_multi_process_launch_trains_on_all_ranks_and_registers_once(workdir, tiny_model_dir, viggo_dir, tmp_path):
    """`accelerate launch -m gamesense finetune` with 2 CPU processes (gloo DDP): one run, one registered version."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import mlflow

    from gamesense.registry.mlflow_store import list_model_versions, setup_tracking

    recipe = tiny_recipe(tiny_model_dir, viggo_dir, tmp_path, max_steps=2)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump()))
    accelerate = Path(sys.executable).with_name("accelerate")
    result = subprocess.run(
        [str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "gamesense", "finetune", "--no-zenml", "--recipe", str(path)],
        env={**os.environ, "GAMESENSE_WORKDIR": str(workdir), "COLUMNS": "200"}, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("registered gamesense-viggo version 1") == 1
    setup_tracking()
    assert [v["version"] for v in list_model_versions("gamesense-viggo")] == ["1"]
    assert len(mlflow.search_runs(experiment_names=["gamesense-viggo"])) == 1


def test_promotion_gate_on_real_registry(workdir, tiny_model_dir, viggo_dir, tmp_path):
    """Champion only for a model better than the base AND the current champion, on the same eval data."""
    from gamesense.pipelines.llm_steps import prepare_data, promote
    from gamesense.registry.mlflow_store import get_version_by_alias

    recipe = tiny_recipe(tiny_model_dir, viggo_dir, tmp_path)
    base = {"exact_match": 0.10}

    def register(score: float) -> dict:
        return promote(recipe, prepare_data(recipe), base, {"exact_match": score, "slot_f1": 0.5})

    first = register(0.50)
    assert (first["version"], first["alias"], first["promoted"]) == ("1", "champion", True)
    worse = register(0.40)  # beats the base, not the champion
    assert (worse["version"], worse["alias"], worse["promoted"]) == ("2", "challenger", False)
    assert "does not beat champion v1 (0.4000 vs 0.5000)" in worse["reason"]
    assert str(get_version_by_alias("gamesense-viggo", "champion").version) == "1"
    tie = register(0.50)  # equal is not better
    assert tie["alias"] == "challenger"
    below_base = register(0.05)
    assert below_base["alias"] == "challenger" and "does not beat base model" in below_base["reason"]
    better = register(0.60)
    assert better["alias"] == "champion" and str(get_version_by_alias("gamesense-viggo", "champion").version) == "5"
    assert get_version_by_alias("gamesense-viggo", "champion").tags["promotion_reason"] == better["reason"]


def test_bad_rows_are_reported_counted_and_skipped(workdir, tiny_model_dir, viggo_dir, tmp_path):
    import mlflow

    from gamesense.pipelines.llm_steps import prepare_data

    lines = (viggo_dir / "train.csv").read_text().splitlines()[:11]  # header + 10 rows
    lines += ['"inform(name[Portal 2], rating[good]","Portal 2 is good."', '"inform(name[Portal 2])",""']
    train = tmp_path / "train_with_bad_rows.csv"
    train.write_text("\n".join(lines) + "\n")
    recipe = tiny_recipe(tiny_model_dir, viggo_dir, tmp_path)
    recipe.data.train_file, recipe.data.max_train_rows = str(train), None
    data = prepare_data(recipe)
    assert (data["train_rows"], data["train_skipped_rows"]) == (10, 2)
    run = mlflow.get_run(data["run_id"])
    assert run.data.metrics["train_skipped_rows"] == 2
    skipped = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/data/skipped_rows.json")
    assert [line for line, _ in skipped["train"]] == [12, 13]


def test_sample_packing_trains_and_counts_tokens(workdir, tiny_model_dir, viggo_dir, tmp_path):
    from gamesense.evaluation.runner import task_records
    from gamesense.tasks import get_task
    from gamesense.training.sft import finetune

    task = get_task("viggo")
    records = [{k: r[k] for k in ("prompt", "completion")} for r in task_records(task, task.load(viggo_dir / "train.csv", 24).examples)]
    recipe = tiny_recipe(tiny_model_dir, viggo_dir, tmp_path, packing=True, max_length=512)
    result = finetune(recipe, records, output_dir=tmp_path / "packed", show_progress=False)
    assert result.metrics["train_steps"] == 2
    assert result.metrics["train_tokens"] > 0
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
