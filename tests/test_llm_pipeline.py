"""End-to-end LLM pipeline on a tiny random Llama with the ViGGO task: data -> base eval -> LoRA SFT ->
eval -> registry, with ZenML and without, resume, plus the CLI surface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gamesense.cli import app
from gamesense.config import load_recipe
from gamesense.training.recipe import LLMRecipe


def tiny_recipe(tiny_model_dir, viggo_dir, tmp_path, *overrides: str) -> LLMRecipe:
    """The shipped ViGGO recipe on the tiny model, 24 training and 8 evaluation rows, 2 steps."""
    return load_recipe("viggo", LLMRecipe, [
        f"model.base={tiny_model_dir}", f"data.train_file={viggo_dir / 'train.csv'}",
        f"data.eval_file={viggo_dir / 'validation.csv'}", "data.max_train_rows=24", "data.max_eval_rows=8",
        "sft.max_steps=2", "sft.per_device_train_batch_size=4", "sft.save_steps=1", "sft.logging_steps=1",
        "generation.max_new_tokens=6", "generation.batch_size=4", "runtime.compile=false", *overrides,
    ])  # fmt: skip


def write_recipe(recipe: LLMRecipe, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe.model_dump()))
    return path


def test_pipeline_without_zenml_registers_and_logs(workdir, tiny_model_dir, viggo_dir, tmp_path):
    import mlflow

    from gamesense.pipelines.llm_run import run_local

    out = run_local(tiny_recipe(tiny_model_dir, viggo_dir, tmp_path))
    assert out.run.data.counts["train_rows"] == 24 and out.run.data.counts["eval_rows"] == 8
    [sft] = out.trained.results
    assert sft.stage == "sft" and sft.metrics["train_steps"] == 2
    # a random model scores 0 exact match, like the (random) base: not better -> challenger
    promo = out.promotion
    assert promo["version"] == "1" and promo["alias"] == "challenger" and not promo["promoted"]
    assert "does not beat base model" in promo["reason"]
    client = mlflow.MlflowClient()
    parent = mlflow.get_run(out.run.run_id)
    assert parent.data.tags["promotion.alias"] == "challenger"
    assert {"base_exact_match", "finetuned_exact_match", "finetuned_slot_f1", "sft_train_tokens_per_s",
            "sft_exact_match"} <= set(parent.data.metrics)  # fmt: skip
    assert {a.path for a in client.list_artifacts(out.run.run_id)} >= {"recipe.yaml", "promotion.json", "predictions", "data"}
    # one nested run per stage, holding the stage's settings, curve, adapter and evaluation
    [nested] = mlflow.search_runs(experiment_names=["gamesense-viggo"], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{out.run.run_id}'")  # fmt: skip
    assert nested.info.run_name == "sft" and nested.data.params["sft.max_steps"] == "2"
    assert {"train_loss", "exact_match", "slot_f1"} <= set(nested.data.metrics)
    nested_files = {a.path for a in client.list_artifacts(nested.info.run_id)}
    assert {"adapter", "loss_curve.png", "predictions"} <= nested_files
    adapter_files = {a.path for a in client.list_artifacts(nested.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= adapter_files
    assert client.get_model_version("gamesense-viggo", "1").run_id == nested.info.run_id
    preds = (Path(out.run.run_dir) / "sft" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 8 and {"line", "input", "reference", "prediction", "exact_match"} <= set(json.loads(preds[0]))
    audit = [json.loads(line) for line in (workdir / "promotions.jsonl").read_text().splitlines()]
    assert [(a["model_name"], a["version"], a["alias"]) for a in audit] == [("gamesense-viggo", "1", "challenger")]


def test_stage_resumes_from_its_checkpoint(workdir, tiny_model_dir, viggo_dir, tmp_path):
    from gamesense.tasks import get_task
    from gamesense.training.methods.base import StageInputs, build_records
    from gamesense.training.stage import run_stage

    recipe = tiny_recipe(tiny_model_dir, viggo_dir, tmp_path)
    task = get_task("viggo", recipe.task_options)
    records = build_records("sft", task, task.load(viggo_dir / "train.csv", 24).examples)
    inputs = StageInputs(recipe=recipe, task=task, train_records=records, stage_dir=tmp_path / "sft", show_progress=False)
    first = run_stage("sft", inputs)
    assert (tmp_path / "sft" / "checkpoints" / "checkpoint-2").is_dir()
    recipe.sft = {**recipe.sft, "max_steps": 4}
    inputs.resume = True
    resumed = run_stage("sft", inputs)
    assert resumed.metrics["train_steps"] == 4 and resumed.metrics["resumed_from_step"] == 2
    steps_logged = [r["step"] for r in resumed.log_history if "loss" in r]
    assert steps_logged == [1, 2, 3, 4], "a resumed run keeps the history and does not redo steps 1-2"
    assert resumed.log_history[0] == first.log_history[0]
    assert first.adapter_dir == resumed.adapter_dir


def test_resume_continues_the_interrupted_run(workdir, tiny_model_dir, viggo_dir, tmp_path):
    """--resume reopens the same MLflow run and continues the stage that did not finish."""
    from gamesense.pipelines.llm_run import run_local

    first = run_local(tiny_recipe(tiny_model_dir, viggo_dir, tmp_path))
    run_dir = Path(first.run.run_dir)
    # simulate a run killed during its sft stage: no stage result, not finished
    (run_dir / "sft" / "result.json").unlink()
    state = json.loads((workdir / "runs" / "viggo" / "last_run.json").read_text())
    (workdir / "runs" / "viggo" / "last_run.json").write_text(json.dumps({**state, "finished": False}))
    resumed = run_local(tiny_recipe(tiny_model_dir, viggo_dir, tmp_path, "sft.max_steps=3"), resume=True)
    assert resumed.run.run_id == first.run.run_id and resumed.run.resumed
    [sft] = resumed.trained.results
    assert sft.metrics["resumed_from_step"] == 2 and sft.metrics["train_steps"] == 3
    # a finished run is not resumed: a new one starts
    fresh = run_local(tiny_recipe(tiny_model_dir, viggo_dir, tmp_path), resume=True)
    assert fresh.run.run_id != first.run.run_id and not fresh.run.resumed


def test_completion_only_loss_keeps_eos(tiny_model_dir, viggo_dir, tmp_path):
    """The EOS closing each completion is a training target; prompt tokens and padding are not."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from gamesense.models.base import load_base_model, load_tokenizer
    from gamesense.tasks import get_task

    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    task = get_task("viggo", {"system_prompt": "Parse."})
    examples = task.load(viggo_dir / "validation.csv", 6).examples
    trainer = SFTTrainer(
        model=load_base_model(str(tiny_model_dir)),
        args=SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, per_device_train_batch_size=6,
                       report_to=[], bf16=False, use_cpu=True),
        train_dataset=Dataset.from_list(task.sft_records(examples)),
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
    path = write_recipe(tiny_recipe(tiny_model_dir, viggo_dir, tmp_path), tmp_path / "recipe.yaml")
    result = CliRunner().invoke(app, ["finetune", "--recipe", str(path), "--set", "sft.max_steps=1"])
    assert result.exit_code == 0, result.output
    assert "registered gamesense-viggo version 1" in result.output and "+sft" in result.output
    from zenml.client import Client  # ZenML's store is process-wide: the first test to use it created it

    last_run = Client().get_pipeline("llm_pipeline").last_run
    assert str(last_run.status).endswith("completed") and set(last_run.steps) == {
        "evaluate_base", "train_sft", "evaluate_sft", "promote"}

    models = CliRunner().invoke(app, ["models", "list"])
    assert models.exit_code == 0 and "gamesense-viggo" in models.output and "challenger" in models.output
    assert "exact_match=" in models.output
    promoted = CliRunner().invoke(app, ["models", "promote", "gamesense-viggo", "1"])
    assert promoted.exit_code == 0, promoted.output

    preds = tmp_path / "p.jsonl"
    evaluated = CliRunner().invoke(app, ["evaluate", "--model", "models:/gamesense-viggo@champion", "--data",
                                         str(viggo_dir / "validation.csv"), "--max-rows", "5", "--output", str(preds),
                                         "--recipe", str(path)])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    assert "exact_match" in evaluated.output and "tokens/s" in evaluated.output
    assert len(preds.read_text().splitlines()) == 5

    generated = CliRunner().invoke(app, ["generate", "--model", "models:/gamesense-viggo/1", "--recipe", str(path), "Is Portal 2 any good?"])
    assert generated.exit_code == 0, generated.output


@pytest.mark.slow
def test_console_script_runs_the_zenml_pipeline_and_says_how_it_runs(workdir, tiny_model_dir, viggo_dir, tmp_path):
    """The installed ``gamesense`` command, in its own process: it restarts itself with jemalloc preloaded
    where ``make setup`` provided it, logs its thread plan, and the ZenML pipeline still runs to the end."""
    import os
    import subprocess
    import sys

    from gamesense.cli.launch import find_jemalloc

    path = write_recipe(tiny_recipe(tiny_model_dir, viggo_dir, tmp_path), tmp_path / "recipe.yaml")
    command = [str(Path(sys.executable).parent / "gamesense"), "finetune", "--recipe", str(path), "--set", "sft.max_steps=1"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "GAMESENSE_WORKDIR": str(workdir),
                          "COLUMNS": "200"}, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registered gamesense-viggo version 1" in done.stdout
    assert "PyTorch thread" in done.stderr
    if find_jemalloc() is not None:
        assert "jemalloc heap" in done.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [("sft.max_stepz=5", "unknown key 'sft.max_stepz'"), ("sft.max_steps=lots", "'sft.max_steps'"),
     ("lora.rank=4", "unknown key 'lora.rank'"), ("task_options.prompt=x", "unknown key 'task_options.prompt'"),
     ("stages=[sft,dpo]", "no 'dpo' section"), ("stages=[sft,ppo]", "unknown training method 'ppo'; known: dpo, grpo"),
     ("sfft.max_steps=1", "unknown key 'sfft'"), ("lroa.r=4", "unknown key 'lroa'")],  # fmt: skip
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
    from gamesense.training.methods.sft import completion_loss

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

    import mlflow

    from gamesense.registry.mlflow_store import list_model_versions, setup_tracking

    path = write_recipe(tiny_recipe(tiny_model_dir, viggo_dir, tmp_path), tmp_path / "recipe.yaml")
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
    assert len(mlflow.search_runs(experiment_names=["gamesense-viggo"], filter_string="tags.mlflow.parentRunId IS NULL")) == 1


def test_bad_rows_are_reported_counted_and_skipped(workdir, tiny_model_dir, viggo_dir, tmp_path):
    import mlflow

    from gamesense.pipelines.llm_run import LLMRun

    lines = (viggo_dir / "train.csv").read_text().splitlines()[:11]  # header + 10 rows
    lines += ['"inform(name[Portal 2], rating[good]","Portal 2 is good."', '"inform(name[Portal 2])",""']
    train = tmp_path / "train_with_bad_rows.csv"
    train.write_text("\n".join(lines) + "\n")
    recipe = tiny_recipe(tiny_model_dir, viggo_dir, tmp_path, f"data.train_file={train}", "data.max_train_rows=null")
    started = LLMRun.start(recipe)
    assert (started.data.counts["train_rows"], started.data.counts["train_skipped_rows"]) == (10, 2)
    assert len(started.data.train["sft"]) == 10
    run = mlflow.get_run(started.run_id)
    assert run.data.metrics["train_skipped_rows"] == 2
    skipped = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/data/skipped_rows.json")
    assert [line for line, _ in skipped["train"]] == [12, 13]


def test_compiled_layers_train_like_eager_ones(workdir, tiny_model_dir, viggo_dir, tmp_path):
    """Regional torch.compile of the decoder layers changes the speed, not the arithmetic (fp32 here)."""
    from gamesense.tasks import get_task
    from gamesense.training.methods.base import StageInputs, build_records
    from gamesense.training.stage import run_stage

    losses = {}
    for compiled in (False, True):
        recipe = tiny_recipe(tiny_model_dir, viggo_dir, tmp_path, f"runtime.compile={str(compiled).lower()}",
                             "sft.bf16=false", "model.dtype=float32")  # fmt: skip
        task = get_task("viggo", recipe.task_options)
        records = build_records("sft", task, task.load(viggo_dir / "train.csv", 24).examples)
        result = run_stage("sft", StageInputs(recipe=recipe, task=task, train_records=records,
                                              stage_dir=tmp_path / f"c{compiled}", show_progress=False))  # fmt: skip
        losses[compiled] = [r["loss"] for r in result.log_history if "loss" in r]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_sample_packing_trains_and_counts_tokens(workdir, tiny_model_dir, viggo_dir, tmp_path):
    from gamesense.tasks import get_task
    from gamesense.training.methods.base import StageInputs, build_records
    from gamesense.training.stage import run_stage

    recipe = tiny_recipe(tiny_model_dir, viggo_dir, tmp_path, "sft.packing=true", "sft.max_length=512",
                         "sft.train_sampling_strategy=random")  # fmt: skip
    task = get_task("viggo", recipe.task_options)
    records = build_records("sft", task, task.load(viggo_dir / "train.csv", 24).examples)
    result = run_stage("sft", StageInputs(recipe=recipe, task=task, train_records=records,
                                          stage_dir=tmp_path / "packed", show_progress=False))  # fmt: skip
    assert result.metrics["train_steps"] == 2
    assert result.metrics["train_tokens"] > 0
    assert (Path(result.adapter_dir) / "adapter_model.safetensors").is_file()


def test_top_layers_put_adapters_in_the_last_layers_only_and_the_backward_stops_there(tiny_model_dir, tmp_path):
    """``lora.top_layers: N``: LoRA weights in the last N decoder layers only; nothing below them gets a gradient
    (the backward pass stops at the lowest adapter), which is where the saved time comes from."""
    import torch
    from peft import get_peft_model

    from gamesense.config import load_recipe
    from gamesense.models.base import load_base_model
    from gamesense.training.methods.base import lora_config

    recipe = load_recipe("viggo", LLMRecipe, [f"model.base={tiny_model_dir}", "lora.top_layers=1"])
    base = load_base_model(str(tiny_model_dir))
    model = get_peft_model(base, lora_config(recipe, model=base))
    adapted = {name.split(".layers.")[1].split(".")[0] for name, _ in model.named_parameters() if "lora_A" in name}
    assert adapted == {str(base.config.num_hidden_layers - 1)}
    needs_grad = {}
    for index, layer in enumerate(model.get_base_model().model.layers):
        layer.register_forward_hook(lambda module, args, out, i=index: needs_grad.__setitem__(
            i, (out[0] if isinstance(out, tuple) else out).requires_grad))
    model(input_ids=torch.randint(10, 1000, (2, 8)), labels=torch.randint(10, 1000, (2, 8))).loss.backward()
    last = base.config.num_hidden_layers - 1
    assert needs_grad == {**{i: False for i in range(last)}, last: True}, "the backward pass must stop at the adapters"
    with pytest.raises(ValueError, match="needs the model"):
        lora_config(recipe)
    narrowed = load_recipe("viggo", LLMRecipe, [f"model.base={tiny_model_dir}", "lora.top_layers=1",
                                                "lora.target_modules=[q_proj,v_proj]"])  # fmt: skip
    model = get_peft_model(load_base_model(str(tiny_model_dir)), lora_config(narrowed, model=base))
    assert {name.split(".")[-4] for name, _ in model.named_parameters() if "lora_A" in name} == {"q_proj", "v_proj"}
    regex = load_recipe("viggo", LLMRecipe, [f"model.base={tiny_model_dir}", "lora.top_layers=1",
                                             "lora.target_modules=.*proj"])  # fmt: skip
    with pytest.raises(ValueError, match="not the pattern"):
        lora_config(regex, model=base)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_padding_free_packing_gives_the_loss_of_padded_rows(tiny_model_dir, attention):
    """Padding-free packing (TRL's collator: rows concatenated, positions restarting at 0 per row, no attention
    mask) must not let a row attend to its neighbours: the same rows give the same loss packed or padded. Training
    runs without a KV cache, as here: with one, transformers does not look for packed rows in the positions."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from gamesense.models.base import load_base_model

    model = load_base_model(str(tiny_model_dir), dtype="float32", attn_implementation=attention).eval()
    torch.manual_seed(0)
    examples = []
    for length, prompt in ((9, 5), (4, 2), (7, 3)):
        ids = torch.randint(10, 1000, (length,)).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    losses = {}
    for packed in (False, True):
        batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=packed)(examples)
        assert ("attention_mask" in batch) is not packed and batch["input_ids"].shape[0] == (1 if packed else 3)
        with torch.no_grad():
            losses[packed] = model(**{k: v for k, v in batch.items() if k != "seq_idx"}, use_cache=False).loss.item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_token_budget_sets_the_rows_per_batch(workdir, tiny_model_dir, viggo_dir, tmp_path):
    """``runtime.batch_tokens``: rows per batch = budget / mean row length (the same budget fits short and long rows)."""
    from gamesense.tasks import get_task
    from gamesense.training.methods.base import StageInputs, build_records
    from gamesense.training.stage import rows_for_token_budget, run_stage

    assert rows_for_token_budget(1024, [60, 68]) == 16
    assert rows_for_token_budget(1024, [250, 262]) == 4
    assert rows_for_token_budget(10, [300]) == 1
    with pytest.raises(ValueError, match="batch_tokens"):
        rows_for_token_budget(1024, [])
    steps = {}
    for budget in (1, 10**6):
        recipe = tiny_recipe(tiny_model_dir, viggo_dir, tmp_path, f"runtime.batch_tokens={budget}", "sft.max_steps=-1",
                             "sft.num_train_epochs=1", "sft.save_strategy='no'")  # fmt: skip
        task = get_task("viggo", recipe.task_options)
        records = build_records("sft", task, task.load(viggo_dir / "train.csv", 6).examples)
        result = run_stage("sft", StageInputs(recipe=recipe, task=task, train_records=records,
                                              stage_dir=tmp_path / f"b{budget}", show_progress=False))  # fmt: skip
        steps[budget] = result.metrics["train_steps"]
    assert steps == {1: 6, 10**6: 1}  # a row per batch; every row in one batch
