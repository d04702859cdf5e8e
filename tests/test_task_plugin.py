"""A task defined only here, in the test suite, runs through every generic layer with no change outside
this file: SFT, static evaluation and the promotion gate; then the reward-model, GRPO and DPO stages, and a
training method defined here too (KTO)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import Field

from gamesense.training.recipe import LLMRecipe
from gamesense.tasks import get_task, register_task
from gamesense.tasks.base import DataError, LoadReport, Record, Task, TaskOptions
from gamesense.training.methods.base import TrainingMethod


@dataclass(frozen=True)
class ParityExample:
    line: int
    number: int

    @property
    def answer(self) -> str:
        return "even" if self.number % 2 == 0 else "odd"


class ParityOptions(TaskOptions):
    instruction: str = Field(description="system turn")


@register_task
class ParityTask(Task):
    """Is the number even or odd? One JSON object per line: {"number": 12}."""

    name = "parity-test"
    Options = ParityOptions
    gate_metric = "accuracy"
    metric_order = ("accuracy",)
    stop_strings = ("\n",)

    def load(self, path, max_rows=None) -> LoadReport:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        report = LoadReport(str(path))
        for line, raw in enumerate(path.read_text().splitlines(), start=1):
            if max_rows is not None and report.total_rows >= max_rows:
                break
            try:
                report.examples.append(ParityExample(line, int(json.loads(raw)["number"])))
            except (ValueError, KeyError, TypeError) as err:
                report.skipped.append((line, f"expected {{'number': int}}: {err}"))
        return report

    def prompt(self, text: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.options.instruction}, {"role": "user", "content": text}]

    def sft_records(self, examples: Sequence[ParityExample]) -> list[Record]:
        return [{"prompt": self.prompt(str(ex.number)), "completion": [{"role": "assistant", "content": ex.answer}],
                 "answer": ex.answer} for ex in examples]  # fmt: skip

    def preference_records(self, examples: Sequence[ParityExample]) -> list[Record]:
        wrong = {"even": "odd", "odd": "even"}
        return [{"prompt": self.prompt(str(ex.number)), "chosen": [{"role": "assistant", "content": ex.answer}],
                 "rejected": [{"role": "assistant", "content": wrong[ex.answer]}]} for ex in examples]  # fmt: skip

    def reward_functions(self):
        def right_answer(completions, answer, **kwargs) -> list[float]:
            return [float(c[0]["content"].strip() == a) for c, a in zip(completions, answer)]

        return [right_answer]

    def eval_records(self, examples: Sequence[ParityExample]) -> list[Record]:
        return [{"prompt": self.prompt(str(ex.number)), "reference": ex.answer, "line": ex.line} for ex in examples]

    def compute_metrics(self, predictions, records) -> dict[str, float]:
        return {"accuracy": sum(p == r["reference"] for p, r in zip(predictions, records)) / len(records)}

    def row_scores(self, prediction, record) -> dict:
        return {"correct": prediction == record["reference"]}


def parity_recipe(tiny_model_dir, data: Path, stages: list[str], **sections) -> LLMRecipe:
    trainer = {"max_steps": 1, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1,
               "save_steps": 1, "report_to": [], "bf16": False, "activation_checkpointing": False}  # fmt: skip
    recipe = {
        "task": "parity-test", "task_options": {"instruction": "even or odd?"},
        "model": {"base": str(tiny_model_dir), "dtype": "float32", "load_in_4bit": False, "attn_implementation": None},
        "data": {"train_file": str(data), "eval_file": str(data), "max_train_rows": None, "max_eval_rows": None,
                 "max_eval_pairs": None},
        "lora": {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": "all-linear"},
        "stages": stages,
        "sft": {**trainer, "completion_only_loss": True, "max_length": 64},
        "reward": {**trainer, "max_length": 64},
        "dpo": {**trainer, "max_length": 64},
        "grpo": {**trainer, "num_generations": 2, "max_completion_length": 3, "generation_batch_size": 4},
        "runtime": {"fused_loss": None, "trim_memory_every": 0, "compile": False, "threads": "auto"},
        "generation": {"max_new_tokens": 3, "batch_size": 8},
        "registry": {"tracking_uri": None, "experiment": "parity", "model_name": "gamesense-parity", "metric": None,
                     "min_delta": 0.0},
        "zenml": False,
    }  # fmt: skip
    recipe.update(sections)
    return LLMRecipe.model_validate(recipe)


@pytest.fixture()
def parity_file(tmp_path) -> Path:
    path = tmp_path / "parity.jsonl"
    path.write_text("\n".join(json.dumps({"number": n}) for n in range(8)) + "\n{bad line}\n")
    return path


def test_task_is_found_by_name_and_validates_its_options():
    assert isinstance(get_task("parity-test", {"instruction": "x"}), ParityTask)
    with pytest.raises(ValueError, match="task_options.instruction"):
        get_task("parity-test", {})
    with pytest.raises(LookupError, match="unknown task 'nope'.*viggo"):
        get_task("nope")


def test_sft_static_evaluation_and_promotion_gate(workdir, tiny_model_dir, parity_file):
    """A task from outside the package: trained, evaluated against its base, registered and gated."""
    from gamesense.pipelines.llm_run import run_local
    from gamesense.registry.mlflow_store import get_version_by_alias, setup_tracking

    out = run_local(parity_recipe(tiny_model_dir, parity_file, ["sft"]))
    assert out.run.data.counts == {"train_rows": 8, "train_skipped_rows": 1, "eval_rows": 8, "eval_skipped_rows": 1}
    assert set(out.trained.evaluations["sft"]) >= {"accuracy", "gen_tokens_per_s"}
    assert out.promotion["metric"] == "accuracy" and out.promotion["version"] == "1"
    predictions = [json.loads(line) for line in (Path(out.run.run_dir) / "sft" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 8 and {"line", "reference", "prediction", "correct"} <= set(predictions[0])
    setup_tracking()
    version = get_version_by_alias("gamesense-parity", out.promotion["alias"])
    assert str(version.version) == "1" and version.tags["task"] == "parity-test" and version.tags["gate_metric"] == "accuracy"


def test_reward_model_then_grpo(workdir, tiny_model_dir, parity_file):
    """sft -> reward -> grpo: one adapter carried from SFT into GRPO, rewards = rule + learned reward model."""
    from gamesense.pipelines.llm_run import run_local

    out = run_local(parity_recipe(tiny_model_dir, parity_file, ["sft", "reward", "grpo"]))
    stages = {r.stage: r for r in out.trained.results}
    assert list(stages) == ["sft", "reward", "grpo"]
    assert stages["reward"].produces == "reward_model" and 0.0 <= stages["reward"].metrics["pairwise_accuracy"] <= 1.0
    started_from = json.loads(Path(stages["reward"].adapter_dir, "initialised_from.json").read_text())["policy_adapter"]
    assert started_from == str(Path(stages["sft"].adapter_dir).resolve())  # the reward model starts from the SFT policy
    assert set(out.trained.evaluations) == {"sft", "grpo"}  # policies are evaluated, the reward model is not
    assert Path(stages["grpo"].adapter_dir, "adapter_model.safetensors").is_file()
    assert not Path(stages["grpo"].adapter_dir, "ref").exists()
    assert "grpo" in out.promotion["reason"] or out.promotion["version"] == "1"


def test_grpo_with_bf16_frozen_base_generates_and_trains(workdir, tiny_model_dir, parity_file):
    """CPU training stores the frozen base in bf16 and trains under bf16 autocast; GRPO also samples with
    ``generate`` outside autocast, where the fp32 adapter must still meet bf16 activations."""
    from gamesense.training.methods.base import StageInputs
    from gamesense.training.stage import run_stage

    recipe = parity_recipe(tiny_model_dir, parity_file, ["grpo"])
    recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"dtype": "bfloat16"}),
                                       "grpo": {**recipe.grpo, "bf16": True}})  # fmt: skip
    task = get_task("parity-test", {"instruction": "even or odd?"})
    records = [{k: v for k, v in r.items() if k != "completion"} for r in task.sft_records(task.load(parity_file).examples)]
    result = run_stage("grpo", StageInputs(recipe=recipe, task=task, train_records=records, stage_dir=workdir / "grpo",
                                           show_progress=False))  # fmt: skip
    assert result.metrics["train_steps"] == 1 and result.metrics["train_bf16"] == 1.0


def test_dpo_after_sft(workdir, tiny_model_dir, parity_file):
    from gamesense.pipelines.llm_run import run_local

    out = run_local(parity_recipe(tiny_model_dir, parity_file, ["sft", "dpo"]))
    assert [r.stage for r in out.trained.results] == ["sft", "dpo"]
    assert out.trained.results[1].metrics["train_steps"] == 1
    adapter = Path(out.trained.results[1].adapter_dir)
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()


def test_grpo_without_any_reward_is_refused(workdir, tiny_model_dir, parity_file, monkeypatch):
    from gamesense.pipelines.llm_run import run_local

    monkeypatch.setattr(ParityTask, "reward_functions", lambda self: [])
    with pytest.raises(ValueError, match="grpo needs rewards"):
        run_local(parity_recipe(tiny_model_dir, parity_file, ["grpo"]))


class KTO(TrainingMethod):
    """A training method defined only here: TRL's KTO on the task's preference pairs, unpaired."""

    name = "kto-test"
    config_class = "KTOConfig"
    trains_on = "preference"
    produces = "policy"

    def build_trainer(self, inputs, args):
        from trl import KTOTrainer
        from trl.data_utils import unpair_preference_dataset

        from gamesense.models.base import load_tokenizer
        from gamesense.training.methods.base import load_policy, preference_dataset

        model, peft_config = load_policy(inputs.recipe, inputs.policy_adapter)
        data = unpair_preference_dataset(preference_dataset(inputs.train_records))
        return KTOTrainer(model=model, args=args, train_dataset=data, processing_class=load_tokenizer(inputs.recipe.model.base),
                          peft_config=peft_config)


def test_a_training_method_from_outside_the_package_runs_after_sft(workdir, tiny_model_dir, parity_file):
    """Adding a method is one class: registered, its recipe section validated against its TRL config, trained
    after SFT on the adapter SFT produced, evaluated and gated like the built-in ones."""
    from gamesense.pipelines.llm_run import run_local
    from gamesense.training.methods import known_methods, register_method

    register_method(KTO())
    assert "kto-test" in known_methods()
    section = {"max_steps": 1, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1, "save_steps": 1,
               "bf16": False, "max_length": 64}  # fmt: skip
    with pytest.raises(ValueError, match="unknown key 'kto-test.max_stepz'"):
        parity_recipe(tiny_model_dir, parity_file, ["sft", "kto-test"], **{"kto-test": {"max_stepz": 1}})
    out = run_local(parity_recipe(tiny_model_dir, parity_file, ["sft", "kto-test"], **{"kto-test": section}))
    assert [r.stage for r in out.trained.results] == ["sft", "kto-test"]
    assert out.trained.results[1].metrics["train_steps"] == 1 and set(out.trained.evaluations) == {"sft", "kto-test"}
    assert (Path(out.trained.results[1].adapter_dir) / "adapter_model.safetensors").is_file()
