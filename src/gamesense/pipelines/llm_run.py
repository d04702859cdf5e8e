"""One fine-tuning run of an LLM recipe: its context (:class:`LLMRun`) and its steps as plain functions,
evaluate_base -> (train_stage -> evaluate_stage) for each stage of the recipe -> promote.

:meth:`LLMRun.start` is the only place a run is set up: the task is built and the data files loaded and
validated once, the records every stage and evaluation needs are built once, MLflow tracking is set up once and
the parent run opened (or, with ``resume``, the interrupted run reopened). The :class:`LLMRun` it returns is
passed to every step, in-process (:func:`run_local`, also under ``accelerate launch``) or as a ZenML artifact
(:mod:`gamesense.pipelines.llm`). MLflow holds one parent run per pipeline run (recipe, data counts, base and
final metrics, promotion) and one nested run per stage (its TRL settings, loss curve, adapter, evaluation).
Everything a run writes is under ``<workdir>/runs/<task>/<run_id>/``.

``resume=True`` continues the newest unfinished run of the task: the same MLflow run, completed stages kept,
the interrupted stage resumed from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any

import mlflow
import yaml
from pydantic import BaseModel, PrivateAttr

from gamesense.models.base import whole_weights
from gamesense.registry.mlflow_store import (attach_run, end_stale_runs, register_version, run_owner_tags, set_alias,
                                             setup_tracking)  # fmt: skip
from gamesense.registry.promotion import CHALLENGER, PromotionOutcome, promotion_gate, promotion_lock
from gamesense.settings import data_path, work_dir
from gamesense.tasks import get_task
from gamesense.tasks.base import LoadReport, Record, Task
from gamesense.training.methods import get_method
from gamesense.training.methods.base import StageResult, build_records
from gamesense.training.recipe import LLMRecipe

log = logging.getLogger(__name__)


class PreparedData(BaseModel):
    """The validated data of one run, as records (dicts of JSON-able values).

    Attributes:
        train: records per format (``sft``, ``preference``, ``prompts``) for the recipe's stages.
        eval: ``static`` evaluation records (when the task evaluates statically) and held-out records a stage
            reports on (``preference`` pairs for a reward stage).
        eval_sha256: fingerprint of the evaluation records: scores on equal fingerprints are comparable.
        counts: ``train_rows``, ``train_skipped_rows``, ``eval_rows``, ``eval_skipped_rows``.
    """

    train_file: str
    eval_file: str
    eval_sha256: str
    counts: dict[str, int]
    train: dict[str, list[Record]]
    eval: dict[str, list[Record]]


class LLMRun(BaseModel):
    """The context of one run, created once by :meth:`start` and passed to every step.

    Attributes:
        recipe: the validated recipe.
        run_id: the MLflow parent run; run_dir: ``<workdir>/runs/<task>/<run_id>``.
        tracking_uri, experiment_id: where the run is tracked.
        resumed: this run continues an interrupted one.
        data: the prepared records.
    """

    recipe: LLMRecipe
    run_id: str
    run_dir: str
    tracking_uri: str
    experiment_id: str
    resumed: bool = False
    data: PreparedData
    _task: Task | None = PrivateAttr(default=None)

    @property
    def task(self) -> Task:
        """The recipe's task with its options (built once per process)."""
        if self._task is None:
            self._task = get_task(self.recipe.task, self.recipe.task_options)
        return self._task

    def stage_dir(self, stage: str) -> Path:
        """``<run_dir>/<stage>``: checkpoints, adapter, predictions and the stage's result."""
        return Path(self.run_dir) / stage

    @contextlib.contextmanager
    def tracking(self):
        """The parent run, active for the block (reopened when a step runs in another process than the start)."""
        if mlflow.get_tracking_uri() != self.tracking_uri:
            setup_tracking(self.tracking_uri)
        with attach_run(self.run_id) as run:
            yield run

    @classmethod
    def start(cls, recipe: LLMRecipe, resume: bool = False, task: Task | None = None) -> LLMRun:
        """Load and validate the training and evaluation files, build every record the stages and evaluations
        need, set up tracking, and start (or, with ``resume``, reopen) the MLflow parent run with the recipe
        and data counts logged.

        Rows the task rejects are reported with their line numbers, counted (``train_skipped_rows``,
        ``eval_skipped_rows``) and set aside; the list is logged as ``data/skipped_rows.json``.

        Args:
            task: the recipe's task, when the caller built it already.

        Raises:
            the task's ``DataError``: missing file or wrong columns; ValueError: no usable row;
            NotImplementedError: a stage needs records the task cannot build; LookupError: unknown task.
        """
        task = task or get_task(recipe.task, recipe.task_options)
        data, skipped = _prepare_data(recipe, task)
        uri = setup_tracking(recipe.registry.tracking_uri, recipe.registry.experiment)
        experiment_id = mlflow.get_experiment_by_name(recipe.registry.experiment).experiment_id
        killed = end_stale_runs(recipe.registry.experiment, also=_unfinished_run(task.name))  # e.g. after kill -9
        if killed:
            log.warning("%d run(s) left RUNNING by a process that is gone, ended as KILLED: %s", len(killed),
                        ", ".join(killed))  # fmt: skip
        previous = _unfinished_run(task.name) if resume else None
        if resume and previous is None:
            log.warning("--resume: no unfinished %s run found, starting a new one", task.name)
        if previous:
            parent = mlflow.start_run(run_id=previous)
        else:
            parent = mlflow.start_run(run_name=f"{task.name}-{'-'.join(recipe.stages)}", experiment_id=experiment_id)
        mlflow.set_tags(run_owner_tags())
        run_dir = work_dir() / "runs" / task.name / parent.info.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        if previous is None:
            mlflow.log_params(_flatten(recipe.model_dump(exclude=set(recipe.stage_sections()))))
            mlflow.log_text(yaml.safe_dump(recipe.model_dump(), sort_keys=False), "recipe.yaml")
            mlflow.log_metrics({k: float(v) for k, v in data.counts.items()})
            mlflow.log_dict(skipped, "data/skipped_rows.json")
            mlflow.set_tags({"gamesense.task": task.name, "eval_file": data.eval_file, "eval_sha256": data.eval_sha256})
        mlflow.end_run()
        _record_last_run(task.name, parent.info.run_id, str(run_dir), finished=False)
        run = cls(recipe=recipe, run_id=parent.info.run_id, run_dir=str(run_dir), tracking_uri=uri,
                  experiment_id=experiment_id, resumed=previous is not None, data=data)  # fmt: skip
        run._task = task
        return run


def _load_training(recipe: LLMRecipe, task: Task) -> LoadReport:
    """The recipe's training file (written first by the task when it can produce it and it is missing)."""
    train_file = data_path(recipe.data.train_file)
    if not train_file.exists() and task.create_data("train", train_file):
        log.info("train file %s did not exist: the %s task wrote it", train_file, task.name)
    return task.load(train_file, recipe.data.max_train_rows)


def load_evaluation(recipe: LLMRecipe, task: Task, train: LoadReport | None = None,
                    max_rows: int | None = None) -> tuple[LoadReport, list | None]:  # fmt: skip
    """The examples a run of ``recipe`` is evaluated on: ``data.eval_file`` (written first by the task when it can
    produce it and it is missing), or, when that is null, the validation slice the task holds back from the
    training file (``train``, loaded here when not given).

    Args:
        max_rows: the first N evaluation examples (default: the recipe's ``data.max_eval_rows``).

    Returns:
        ``(evaluation, training examples left after the slice was held back, or None with an eval file)``.
    """
    max_rows = max_rows or recipe.data.max_eval_rows
    if recipe.data.eval_file:
        eval_file = data_path(recipe.data.eval_file)
        if not eval_file.exists() and task.create_data("eval", eval_file):
            log.info("eval file %s did not exist: the %s task wrote it", eval_file, task.name)
        return task.load(eval_file, max_rows), None
    train = train or _load_training(recipe, task)
    held_in, held_out = task.split_validation(train.examples)  # the task holds back a slice of the training data
    log.info("validation slice of %s: %d examples held out, %d left for training", train.path, len(held_out),
             len(held_in))  # fmt: skip
    return LoadReport(path=f"{train.path} (validation slice)", examples=held_out[:max_rows]), held_in


def _prepare_data(recipe: LLMRecipe, task: Task) -> tuple[PreparedData, dict[str, list[tuple[int, str]]]]:
    """Load both files once (writing those the task can produce), report set-aside rows, build the records.

    Returns:
        the prepared data, and the set-aside rows of each file (``{"train": [(line, reason)], "eval": ...}``).
    """
    train = _load_training(recipe, task)
    _report_skipped("train", train)
    evaluation, held_in = load_evaluation(recipe, task, train)
    if held_in is not None:
        train.examples = held_in
    _report_skipped("eval", evaluation)

    methods = [get_method(stage) for stage in recipe.stages]
    train_records = {m.trains_on: build_records(m.trains_on, task, train.examples) for m in methods}
    eval_records: dict[str, list[Record]] = {}
    if "static" in task.evaluation:
        eval_records["static"] = task.eval_records(evaluation.examples)
    for kind in dict.fromkeys(m.scores_on for m in methods if m.scores_on):
        records = build_records(kind, task, evaluation.examples)
        limit = recipe.data.max_eval_pairs
        if limit is not None and len(records) > limit:  # a seeded sample, in file order
            records = [records[i] for i in sorted(random.Random(0).sample(range(len(records)), limit))]
        eval_records[kind] = records
    counts = {"train_rows": len(train.examples), "train_skipped_rows": len(train.skipped),
              "eval_rows": len(evaluation.examples), "eval_skipped_rows": len(evaluation.skipped)}  # fmt: skip
    prepared = PreparedData(train_file=str(train.path), eval_file=evaluation.path,
                            eval_sha256=_fingerprint(eval_records), counts=counts, train=train_records,
                            eval=eval_records)  # fmt: skip
    return prepared, {"train": train.skipped, "eval": evaluation.skipped}


def _report_skipped(name: str, report: LoadReport) -> None:
    if report.skipped:
        log.warning("%s file %s: %d bad rows set aside:", name, report.path, len(report.skipped))
        for line, reason in report.skipped[:20]:
            log.warning("  line %d: %s", line, reason)
    if not report.examples:
        why = (f"{len(report.skipped)} rows set aside, first: line {report.skipped[0][0]}: {report.skipped[0][1]}"
               if report.skipped else "the file has no rows")  # fmt: skip
        raise ValueError(f"{name} file {report.path}: no usable rows ({why})")


def _flatten(data: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = str(value)[:500]
    return flat


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def _last_run_file(task_name: str) -> Path:
    return work_dir() / "runs" / task_name / "last_run.json"


def _record_last_run(task_name: str, run_id: str, run_dir: str, finished: bool) -> None:
    """Remember the task's newest run and whether it finished (what ``--resume`` looks for)."""
    _last_run_file(task_name).write_text(json.dumps({"run_id": run_id, "run_dir": run_dir, "finished": finished}))


def _unfinished_run(task_name: str) -> str | None:
    """The MLflow run id of the task's newest run if it did not finish, else None."""
    path = _last_run_file(task_name)
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return None if state.get("finished") else state.get("run_id")


# --- the steps -------------------------------------------------------------------------------------------


class TrainedStages(BaseModel):
    """The stages trained so far, in order, with their MLflow nested runs and evaluations."""

    results: list[StageResult] = []
    run_ids: dict[str, str] = {}
    evaluations: dict[str, dict[str, float]] = {}

    def latest(self, produces: str) -> StageResult | None:
        """The newest stage result that produced a ``policy`` or a ``reward_model``."""
        return next((r for r in reversed(self.results) if r.produces == produces), None)


def use_free_cores(recipe: LLMRecipe) -> None:
    """Set PyTorch's threads from ``runtime.threads`` (auto: the cores other processes leave free now), and
    say so."""
    from gamesense.models.hardware import configure_threads

    log.info(configure_threads(recipe.runtime.threads).describe())


@whole_weights()  # loaded whole and generating alone on the main process, also after ZeRO-3 training
def evaluate_model_ref(run: LLMRun, model_ref: str, out_dir: Path, label: str):
    """Load ``model_ref`` and run the task's evaluations on the run's evaluation records.

    Returns:
        :class:`~gamesense.evaluation.runner.EvalResult`.
    """
    from gamesense.evaluation.runner import evaluate_model
    from gamesense.models.hardware import release_memory
    from gamesense.models.refs import load_for_inference

    use_free_cores(run.recipe)
    model = load_for_inference(model_ref, dtype=run.recipe.model.dtype)
    result = evaluate_model(model, run.task, run.data.eval.get("static"), out_dir, run.recipe.generation, label=label)
    del model
    release_memory()
    return result


def _log_evaluation(result, prefix: str = "", artifact_dir: str = "predictions") -> None:
    mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in result.metrics.items()})
    if result.predictions_path is not None:
        mlflow.log_artifact(str(result.predictions_path), artifact_dir)
    for path in result.artifacts.values():
        mlflow.log_artifact(str(path), "evaluation")


def evaluate_base(run: LLMRun) -> dict[str, float]:
    """Score the base model on the evaluation data (cached by task, options, base model, evaluation records
    and decoding settings: the base model does not change between runs). Logs ``base_*`` metrics.

    Returns:
        the base model's metrics.
    """
    from gamesense.evaluation.runner import EvalResult

    recipe = run.recipe
    key = _fingerprint([run.task.name, recipe.task_options, recipe.model.base, recipe.model.dtype, run.data.eval_sha256,
                        recipe.generation.model_dump()])[:16]  # fmt: skip
    cache_dir = work_dir() / "cache" / "base_eval" / key
    if (cache_dir / "metrics.json").is_file():
        predictions = cache_dir / "predictions.jsonl"
        result = EvalResult(json.loads((cache_dir / "metrics.json").read_text()),
                            predictions if predictions.is_file() else None)  # fmt: skip
        log.info("base model evaluation: cached (%s)", cache_dir)
    else:
        result = evaluate_model_ref(run, recipe.model.base, cache_dir, "base")
        (cache_dir / "metrics.json").write_text(json.dumps(result.metrics))
    with run.tracking():
        _log_evaluation(result, "base_", "predictions/base")
    return result.metrics


def _stage_run(run: LLMRun, stage: str, settings: dict[str, Any]):
    """The stage's nested MLflow run: reopened when a resumed stage has one, else started with the stage's
    TRL settings as params (params are immutable: a resumed stage's changed settings go to
    ``settings_resumed.json``)."""
    id_file = run.stage_dir(stage) / "mlflow_run_id"
    if id_file.is_file():
        nested = mlflow.start_run(run_id=id_file.read_text().strip(), nested=True)
        mlflow.set_tags(run_owner_tags())
        mlflow.log_dict(settings, "settings_resumed.json")
        return nested
    nested = mlflow.start_run(run_name=stage, nested=True, parent_run_id=run.run_id, experiment_id=run.experiment_id)
    mlflow.set_tags(run_owner_tags())
    id_file.write_text(nested.info.run_id)
    mlflow.log_params({f"{stage}.{k}": str(v)[:500] for k, v in settings.items()})
    return nested


def train_stage(run: LLMRun, stage: str, trained: TrainedStages, show_progress: bool = True) -> TrainedStages:
    """Train ``stage`` on the prepared records, continuing the newest policy adapter; log its settings,
    metrics, loss curve and adapter in a nested MLflow run. A stage that finished in a resumed run is not
    trained again.

    Returns:
        ``trained`` with this stage appended.
    """
    from accelerate import PartialState

    from gamesense.plots import plot_loss_curve
    from gamesense.training.methods.base import StageInputs
    from gamesense.training.stage import run_stage

    method = get_method(stage)
    stage_dir = run.stage_dir(stage)
    stage_dir.mkdir(parents=True, exist_ok=True)
    done_file = stage_dir / "result.json"
    out = trained.model_copy(deep=True)
    if run.resumed and done_file.is_file():
        log.info("stage %s finished in the resumed run: kept", stage)
        out.results.append(StageResult.model_validate_json(done_file.read_text()))
        out.run_ids[stage] = (stage_dir / "mlflow_run_id").read_text().strip()
        return out

    policy, reward = trained.latest("policy"), trained.latest("reward_model")
    inputs = StageInputs(
        recipe=run.recipe, task=run.task, train_records=run.data.train[method.trains_on], stage_dir=stage_dir,
        eval_records=run.data.eval.get(method.scores_on) if method.scores_on else None,
        policy_adapter=Path(policy.adapter_dir) if policy else None,
        reward_adapter=Path(reward.adapter_dir) if reward else None,
        resume=run.resumed, show_progress=show_progress,
    )  # fmt: skip
    main = PartialState().is_main_process  # under DDP the other ranks train and log nothing
    use_free_cores(run.recipe)
    with contextlib.ExitStack() as stack:
        if main:
            stack.enter_context(run.tracking())
            nested = stack.enter_context(_stage_run(run, stage, run.recipe.stage_settings(stage)))
            out.run_ids[stage] = nested.info.run_id
        result = run_stage(stage, inputs)
        if not main:
            out.results.append(result)
            return out
        mlflow.log_metrics(result.metrics)
        for rec in result.log_history:
            if "loss" in rec:
                mlflow.log_metric("loss", float(rec["loss"]), step=int(rec["step"]))
        png = plot_loss_curve(result.log_history, stage_dir / "loss_curve.png", title=f"{stage} loss")
        mlflow.log_artifact(str(png))
        mlflow.log_artifacts(result.adapter_dir, "adapter")
    with run.tracking():
        mlflow.log_metrics({f"{stage}_{k}": v for k, v in result.metrics.items()})
    done_file.write_text(result.model_dump_json())
    out.results.append(result)
    return out


def evaluate_stage(run: LLMRun, trained: TrainedStages, stage: str) -> TrainedStages:
    """Evaluate the policy a stage produced on the evaluation data; logged in the stage's nested run and,
    prefixed ``<stage>_``, in the parent run.

    Returns:
        ``trained`` with ``evaluations[stage]`` set.
    """
    result = next(r for r in trained.results if r.stage == stage)
    evaluation = evaluate_model_ref(run, result.adapter_dir, run.stage_dir(stage), stage)
    with run.tracking():
        with mlflow.start_run(run_id=trained.run_ids[stage], nested=True):
            _log_evaluation(evaluation)
        mlflow.log_metrics({f"{stage}_{k}": float(v) for k, v in evaluation.metrics.items()})
    out = trained.model_copy(deep=True)
    out.evaluations[stage] = evaluation.metrics
    return out


def gate_metric(run: LLMRun) -> str:
    """The promotion metric: the recipe's ``registry.metric`` or the task's gate metric."""
    return run.recipe.registry.metric or run.task.gate_metric


def champion_score(run: LLMRun, champion) -> float:
    """The champion's gate metric on this evaluation data: read from its version tags when it was evaluated
    on identical records, else measured now."""
    metric = gate_metric(run)
    tags = champion.tags or {}
    if tags.get("eval_sha256") == run.data.eval_sha256 and metric in tags:
        return float(tags[metric])
    label = f"champion v{champion.version}"
    log.info("%s was evaluated on other data: evaluating it on %s", label, run.data.eval_file)
    result = evaluate_model_ref(run, f"models:/{champion.name}/{champion.version}",
                                Path(run.run_dir) / f"champion-v{champion.version}", label)  # fmt: skip
    return float(result.metrics[metric])


def promote(run: LLMRun, base_metrics: dict[str, float], trained: TrainedStages) -> PromotionOutcome:
    """Register the final policy adapter as a new version of ``registry.model_name`` (alias ``challenger``) and
    run the promotion gate: ``champion`` only if it beats the base model and the current champion on the
    gate metric on the same evaluation data. The outcome is logged on the parent run (tags +
    ``promotion.json``) and on the version (tags).

    Raises:
        KeyError: the gate metric is not a metric of this task's evaluation.
        ValueError: no stage produced a policy.
    """
    recipe, task = run.recipe, run.task
    metric = gate_metric(run)
    final = trained.latest("policy")
    if final is None:
        raise ValueError(f"stages {recipe.stages} produced no policy to register")
    metrics = trained.evaluations[final.stage]
    if metric not in metrics:
        raise KeyError(f"gate metric {metric!r} is not computed; available: {', '.join(sorted(metrics))}")
    name = recipe.registry.model_name
    tags = {k: f"{float(v):.6f}" for k, v in metrics.items()}
    tags.update({"eval_sha256": run.data.eval_sha256, "eval_file": run.data.eval_file, "base_model": recipe.model.base,
                 "task": task.name, "stages": ",".join(recipe.stages), "gate_metric": metric})  # fmt: skip
    with run.tracking():
        source = f"{mlflow.get_run(trained.run_ids[final.stage]).info.artifact_uri}/adapter"
        version = register_version(name, source, trained.run_ids[final.stage], tags,
                                   description=f"GameSense LoRA adapter for the {task.name} task")  # fmt: skip
        with promotion_lock(name):  # never between a concurrent promote's check and its alias move
            set_alias(name, version.version, CHALLENGER)
        outcome = promotion_gate(
            name, str(version.version), metric, float(metrics[metric]),
            champion_score=lambda champion: champion_score(run, champion),
            baselines={"base model": base_metrics.get(metric)}, higher_is_better=task.higher_is_better,
            min_delta=recipe.registry.min_delta, audit={"run_id": run.run_id, "eval_file": run.data.eval_file},
        )  # fmt: skip
        mlflow.log_metrics({f"finetuned_{k}": float(v) for k, v in metrics.items()})
        mlflow.set_tags({"promotion.alias": outcome.alias, "promotion.reason": outcome.reason[:5000],
                         "registered_version": outcome.version})  # fmt: skip
        mlflow.log_dict(outcome.to_dict(), "promotion.json")
    _record_last_run(task.name, run.run_id, run.run_dir, finished=True)
    return outcome


class PipelineOutcome(BaseModel):
    """Everything one pipeline run produced (what the CLI summarises)."""

    run: LLMRun
    base_metrics: dict[str, float]
    trained: TrainedStages
    promotion: dict[str, Any]


def run_local(recipe: LLMRecipe, resume: bool = False, task: Task | None = None) -> PipelineOutcome | None:
    """The run's steps as plain calls in this process; the MLflow parent run stays open from the base
    evaluation to the promotion.

    Under ``accelerate launch`` (several processes), every process trains on its shard (DDP) while the main
    process alone prepares the data, evaluates, registers and promotes; the others return None.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    # on CPU, processes started by torchrun / accelerate launch form a (gloo) group only when the state is
    # created for CPU; alone it is the same single-process state, as the trainer's arguments create it on CPU
    state = PartialState(cpu=not torch.cuda.is_available())
    shared: list = [None]
    with contextlib.ExitStack() as stack:
        if state.is_main_process:
            run = LLMRun.start(recipe, resume, task)
            stack.enter_context(run.tracking())
            shared = [(run, evaluate_base(run))]
        if state.num_processes > 1:
            shared = broadcast_object_list(shared)
        run, base_metrics = shared[0]
        trained = TrainedStages()
        for stage in recipe.stages:
            trained = train_stage(run, stage, trained)
            state.wait_for_everyone()
            if state.is_main_process and get_method(stage).produces == "policy":
                trained = evaluate_stage(run, trained, stage)
        if not state.is_main_process:
            return None
        promotion = promote(run, base_metrics, trained)
    return PipelineOutcome(run=run, base_metrics=base_metrics, trained=trained, promotion=promotion.to_dict())
