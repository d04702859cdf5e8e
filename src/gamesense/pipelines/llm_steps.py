"""The LLM fine-tuning workflow as plain functions: prepare_data -> evaluate_base -> finetune ->
evaluate_finetuned -> promote.

Each function takes and returns JSON-friendly dicts (paths, numbers), so the ZenML steps in
``gamesense.pipelines.llm`` are one-line wrappers and the whole flow also runs (and is tested) without
ZenML. All of them log into one MLflow run, whose id ``prepare_data`` returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import mlflow
import yaml

from gamesense.config import LLMRecipe, resolve_data_path
from gamesense.evaluation.runner import task_records
from gamesense.registry.mlflow_store import (
    CHAMPION,
    decide_promotion,
    get_version_by_alias,
    set_alias,
    setup_tracking,
)
from gamesense.settings import work_dir
from gamesense.tasks import get_task

log = logging.getLogger(__name__)


def _recipe(recipe: LLMRecipe | dict) -> LLMRecipe:
    return recipe if isinstance(recipe, LLMRecipe) else LLMRecipe.model_validate(recipe)


def _flatten(data: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = str(value)
    return flat


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def prepare_data(recipe: LLMRecipe | dict) -> dict:
    """Load and validate the training and evaluation files, start the MLflow run, log the recipe.

    Rows that are empty or whose target does not parse are reported with their line numbers, counted
    (``train_skipped_rows``, ``eval_skipped_rows``) and left out.

    Returns:
        ``{run_id, run_dir, train_path, eval_path, eval_sha256, train_rows, eval_rows, ...}``; the JSONL files
        hold ``{"line", "prompt", "completion"}`` records.

    Raises:
        the task's ``DataError``: missing file or wrong columns; ValueError: no usable row.
    """
    recipe = _recipe(recipe)
    task = get_task(recipe.task)
    setup_tracking(recipe.registry.tracking_uri, recipe.registry.experiment)
    train_file = resolve_data_path(recipe.data.train_file)
    eval_file = resolve_data_path(recipe.data.eval_file)
    train = task.load(train_file, recipe.data.max_train_rows)
    evaluation = task.load(eval_file, recipe.data.max_eval_rows)
    for name, report in (("train", train), ("eval", evaluation)):
        if report.skipped:
            log.warning("%s file %s: %d bad rows skipped:", name, report.path, len(report.skipped))
            for line, reason in report.skipped[:20]:
                log.warning("  line %d: %s", line, reason)
        if not report.examples:
            raise ValueError(f"{name} file {report.path}: no usable rows ({len(report.skipped)} skipped)")

    run = mlflow.start_run(run_name=f"{recipe.task}-lora")
    run_dir = work_dir() / "runs" / recipe.task / run.info.run_id
    system_prompt = recipe.system_prompt

    train_path, eval_path = run_dir / "data" / "train.jsonl", run_dir / "data" / "eval.jsonl"
    _write_jsonl(train_path, task_records(task, train.examples, system_prompt))
    _write_jsonl(eval_path, task_records(task, evaluation.examples, system_prompt))
    eval_sha = hashlib.sha256(eval_path.read_bytes()).hexdigest()
    summary = {
        "run_id": run.info.run_id,
        "run_dir": str(run_dir),
        "train_path": str(train_path),
        "eval_path": str(eval_path),
        "eval_file": str(eval_file),
        "eval_sha256": eval_sha,
        "train_rows": len(train.examples),
        "train_skipped_rows": len(train.skipped),
        "eval_rows": len(evaluation.examples),
        "eval_skipped_rows": len(evaluation.skipped),
    }
    mlflow.log_params(_flatten(recipe.model_dump()))
    mlflow.log_text(yaml.safe_dump(recipe.model_dump(), sort_keys=False), "recipe.yaml")
    mlflow.log_metrics({k: float(summary[k]) for k in ("train_rows", "train_skipped_rows", "eval_rows", "eval_skipped_rows")})
    mlflow.log_dict({"train": train.skipped, "eval": evaluation.skipped}, "data/skipped_rows.json")
    mlflow.set_tags({"gamesense.task": recipe.task, "eval_file": str(eval_file), "eval_sha256": eval_sha})
    mlflow.end_run()
    return summary


def evaluate_model_on_records(recipe: LLMRecipe, model_ref: str, eval_path: str | Path, predictions_path: Path, desc: str) -> dict:
    """Load ``model_ref`` and score it on prepared evaluation records; returns the metrics dict."""
    from gamesense.evaluation.runner import evaluate_records
    from gamesense.models.refs import load_for_inference

    result = evaluate_records(
        load_for_inference(model_ref), get_task(recipe.task), _read_jsonl(eval_path), predictions_path,
        max_new_tokens=recipe.generation.max_new_tokens, batch_size=recipe.generation.batch_size, desc=desc,
    )
    return result.metrics


def evaluate_base(recipe: LLMRecipe | dict, data: dict) -> dict:
    """Score the base model on the evaluation records (cached by base model, data and generation settings,
    since the base model does not change between runs). Logs ``base_*`` metrics and predictions.

    Returns:
        the base model's metrics.
    """
    recipe = _recipe(recipe)
    key = hashlib.sha256(
        json.dumps([recipe.model.base, data["eval_sha256"], recipe.generation.model_dump()]).encode()
    ).hexdigest()[:16]
    cache_dir = work_dir() / "cache" / "base_eval" / key
    predictions = cache_dir / "predictions.jsonl"
    if (cache_dir / "metrics.json").is_file() and predictions.is_file():
        metrics = json.loads((cache_dir / "metrics.json").read_text())
        log.info("base model evaluation reused from %s", cache_dir)
    else:
        metrics = evaluate_model_on_records(recipe, recipe.model.base, data["eval_path"], predictions, "evaluate base")
        (cache_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    setup_tracking(recipe.registry.tracking_uri, recipe.registry.experiment)
    with mlflow.start_run(run_id=data["run_id"]):
        mlflow.log_metrics({f"base_{k}": float(v) for k, v in metrics.items()})
        mlflow.log_artifact(str(predictions), "predictions/base")
    return metrics


def finetune_adapter(recipe: LLMRecipe | dict, data: dict, resume: bool = False) -> dict:
    """LoRA SFT on the prepared training records; logs train metrics, the loss curve (metric history and
    PNG) and the PEFT adapter (artifact path ``adapter``).

    Returns:
        ``{adapter_dir, metrics}``.
    """
    from gamesense.training.sft import finetune
    from gamesense.plots import plot_loss_curve

    recipe = _recipe(recipe)
    records = [{"prompt": r["prompt"], "completion": r["completion"]} for r in _read_jsonl(data["train_path"])]
    result = finetune(recipe, records, resume=resume)
    if not result.is_main_process:
        return {"adapter_dir": str(result.adapter_dir), "metrics": result.metrics}
    setup_tracking(recipe.registry.tracking_uri, recipe.registry.experiment)
    with mlflow.start_run(run_id=data["run_id"]):
        mlflow.log_metrics(result.metrics)
        for rec in result.log_history:
            if "loss" in rec:
                mlflow.log_metric("loss", float(rec["loss"]), step=int(rec["step"]))
        png = plot_loss_curve(result.log_history, Path(data["run_dir"]) / "loss_curve.png")
        mlflow.log_artifact(str(png))
        mlflow.log_artifacts(str(result.adapter_dir), "adapter")
    return {"adapter_dir": str(result.adapter_dir), "metrics": result.metrics}


def evaluate_finetuned(recipe: LLMRecipe | dict, data: dict, trained: dict) -> dict:
    """Score the fine-tuned adapter on the same evaluation records; logs ``finetuned_*`` metrics.

    Returns:
        the fine-tuned model's metrics.
    """
    recipe = _recipe(recipe)
    predictions = Path(data["run_dir"]) / "predictions_finetuned.jsonl"
    metrics = evaluate_model_on_records(recipe, trained["adapter_dir"], data["eval_path"], predictions, "evaluate fine-tuned")
    setup_tracking(recipe.registry.tracking_uri, recipe.registry.experiment)
    with mlflow.start_run(run_id=data["run_id"]):
        mlflow.log_metrics({f"finetuned_{k}": float(v) for k, v in metrics.items()})
        mlflow.log_artifact(str(predictions), "predictions/finetuned")
    return metrics


def champion_score(recipe: LLMRecipe, data: dict) -> tuple[str | None, float | None]:
    """The current champion's score on this evaluation data: read from its version tags when it was
    evaluated on byte-identical data, else measured now.

    Returns:
        ``(label, score)``, e.g. ``("champion v3", 0.61)``, or ``(None, None)`` without a champion.
    """
    name, metric = recipe.registry.model_name, recipe.registry.metric
    champion = get_version_by_alias(name, CHAMPION)
    if champion is None:
        return None, None
    label = f"champion v{champion.version}"
    tags = champion.tags or {}
    if tags.get("eval_sha256") == data["eval_sha256"] and metric in tags:
        return label, float(tags[metric])
    log.info("%s was evaluated on other data: evaluating it on %s", label, data["eval_file"])
    predictions = Path(data["run_dir"]) / "predictions_champion.jsonl"
    metrics = evaluate_model_on_records(recipe, f"models:/{name}/{champion.version}", data["eval_path"], predictions, f"evaluate {label}")
    return label, float(metrics[metric])


def promote(recipe: LLMRecipe | dict, data: dict, base_metrics: dict, finetuned_metrics: dict) -> dict:
    """Register the run's adapter as a new version of ``registry.model_name`` and apply the promotion gate:
    alias ``champion`` only if it beats the base model and the current champion on ``registry.metric`` on
    the same evaluation data, else ``challenger``. The decision and its reason are logged on the run
    (tags + ``promotion.json``) and on the model version (tags).

    Returns:
        ``{model_name, version, alias, promoted, reason, metric, candidate, baselines}``.

    Raises:
        KeyError: ``registry.metric`` is not a metric of this task.
    """
    from mlflow import MlflowClient

    recipe = _recipe(recipe)
    metric = recipe.registry.metric
    if metric not in finetuned_metrics:
        raise KeyError(f"registry.metric {metric!r} is not computed; available: {', '.join(sorted(finetuned_metrics))}")
    setup_tracking(recipe.registry.tracking_uri, recipe.registry.experiment)
    label, champion = champion_score(recipe, data)
    baselines = {"base model": base_metrics.get(metric)}
    if label:
        baselines[label] = champion
    decision = decide_promotion(metric, float(finetuned_metrics[metric]), baselines)

    client = MlflowClient()
    name = recipe.registry.model_name
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description=f"GameSense LoRA adapter for the {recipe.task} task")
    run = client.get_run(data["run_id"])
    tags = {k: f"{float(v):.6f}" for k, v in finetuned_metrics.items()}
    tags.update({"eval_sha256": data["eval_sha256"], "eval_file": data["eval_file"], "base_model": recipe.model.base,
                 "task": recipe.task, "promotion_reason": decision.reason})
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/adapter", run_id=data["run_id"], tags=tags
    )
    set_alias(name, version.version, decision.alias)
    outcome = {
        "model_name": name,
        "version": str(version.version),
        "alias": decision.alias,
        "promoted": decision.promote,
        "reason": decision.reason,
        "metric": metric,
        "candidate": decision.candidate,
        "baselines": decision.baselines,
    }
    with mlflow.start_run(run_id=data["run_id"]):
        mlflow.set_tags({"promotion.alias": decision.alias, "promotion.reason": decision.reason,
                         "registered_version": str(version.version)})
        mlflow.log_dict(outcome, "promotion.json")
    return outcome


def run_local(recipe: LLMRecipe | dict, resume: bool = False) -> dict | None:
    """The same five steps as the ZenML pipeline, as plain calls in this process.

    Under ``accelerate launch`` (several processes), every process trains on its shard (DDP) while the main
    process alone prepares the data, evaluates, registers and promotes; the others return None.

    Returns:
        ``{"data", "base_metrics", "trained", "finetuned_metrics", "promotion"}`` (main process).
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    recipe = _recipe(recipe)
    state = PartialState()
    shared = [None]
    if state.is_main_process:
        data = prepare_data(recipe)
        shared = [(data, evaluate_base(recipe, data))]
    if state.num_processes > 1:
        shared = broadcast_object_list(shared)
    data, base_metrics = shared[0]
    trained = finetune_adapter(recipe, data, resume=resume)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    finetuned_metrics = evaluate_finetuned(recipe, data, trained)
    promotion = promote(recipe, data, base_metrics, finetuned_metrics)
    return {"data": data, "base_metrics": base_metrics, "trained": trained,
            "finetuned_metrics": finetuned_metrics, "promotion": promotion}
