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
    assert (workdir / "zenml").is_dir()

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
