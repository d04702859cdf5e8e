"""ZenML pipelines for the engagement model: train, promote, batch inference, monitor-then-retrain.

Each step is a thin wrapper over a plain function (``training.tabular``, ``serving.batch``,
``monitoring.drift``) and receives the recipe name plus ``--set`` overrides, so a pipeline run and a plain
CLI call do the same thing. Steps return JSON-able dicts (ZenML stores them as artifacts). Caching is off:
inputs are files whose content changes under the same name.
"""

from __future__ import annotations

from typing import Any

from gamesense.pipelines import init_zenml

init_zenml()

from zenml import pipeline, step  # noqa: E402


def _recipe(recipe: str, overrides: list[str]):
    from gamesense.config import load_recipe
    from gamesense.tasks.engagement import EngagementRecipe

    return load_recipe(recipe, EngagementRecipe, overrides)


@step(enable_cache=False)
def train_step(recipe: str, overrides: list[str], data_file: str | None = None) -> dict:
    """Train + register as challenger (see :func:`gamesense.training.tabular.train_engagement`)."""
    from gamesense.training.tabular import train_engagement

    return train_engagement(_recipe(recipe, overrides), data_file).to_dict()


@step(enable_cache=False)
def promote_step(recipe: str, overrides: list[str], eval_file: str | None = None, trained: dict | None = None) -> dict:
    """Champion/challenger gate (see :func:`gamesense.pipelines.engagement_steps.promote_engagement`). ``trained`` only
    orders the step after training; a skipped training (``{}``) skips promotion too."""
    from gamesense.pipelines.engagement_steps import promote_engagement

    if trained is not None and not trained:
        return {}
    return promote_engagement(_recipe(recipe, overrides), eval_file)


@step(enable_cache=False)
def predict_step(recipe: str, overrides: list[str], input_file: str, output_file: str, model_uri: str | None = None) -> dict:
    """Batch scoring with the champion (see :func:`gamesense.serving.batch.predict_batch`)."""
    from gamesense.registry.mlflow_store import setup_tracking
    from gamesense.serving.batch import predict_batch
    from gamesense.serving.tabular import load_tabular_model

    cfg = _recipe(recipe, overrides)
    setup_tracking(cfg.registry.tracking_uri)
    return predict_batch(input_file, output_file, load_tabular_model(cfg.registry.model_name, cfg.serving.alias, model_uri))


@step(enable_cache=False)
def monitor_step(recipe: str, overrides: list[str], current_file: str | None = None) -> dict:
    """Drift report + retraining decision (see :func:`gamesense.monitoring.drift.monitor_engagement`)."""
    from gamesense.monitoring.drift import monitor_engagement

    return monitor_engagement(_recipe(recipe, overrides), current_file).to_dict()


@step(enable_cache=False)
def retrain_if_needed_step(recipe: str, overrides: list[str], drift: dict, retrain: bool = True) -> dict:
    """Retrain (register a challenger) only when the drift decision says so; else return ``{}``."""
    from gamesense.training.tabular import train_engagement

    if not (retrain and drift.get("retrain")):
        return {}
    return train_engagement(_recipe(recipe, overrides)).to_dict()


@pipeline(enable_cache=False)
def engagement_train_pipeline(recipe: str = "engagement", overrides: list[str] | None = None, data_file: str | None = None):
    """Weekly: train + register challenger."""
    return train_step(recipe, overrides or [], data_file)


@pipeline(enable_cache=False)
def engagement_promote_pipeline(recipe: str = "engagement", overrides: list[str] | None = None, eval_file: str | None = None):
    """After training: champion/challenger on one evaluation file."""
    return promote_step(recipe, overrides or [], eval_file)


@pipeline(enable_cache=False)
def engagement_batch_pipeline(recipe: str, overrides: list[str], input_file: str, output_file: str, model_uri: str | None = None):
    """Daily: score the day's players with the champion."""
    return predict_step(recipe, overrides, input_file, output_file, model_uri)


@pipeline(enable_cache=False)
def engagement_monitor_pipeline(recipe: str = "engagement", overrides: list[str] | None = None,
                                current_file: str | None = None, retrain: bool = True):  # fmt: skip
    """Nightly: drift check; on drift retrain, then promote when the new model beats the champion."""
    drift = monitor_step(recipe, overrides or [], current_file)
    trained = retrain_if_needed_step(recipe, overrides or [], drift, retrain)
    promote_step(recipe, overrides or [], None, trained)
    return drift


PIPELINES = {
    "train": (engagement_train_pipeline, "train_step"),
    "promote": (engagement_promote_pipeline, "promote_step"),
    "predict": (engagement_batch_pipeline, "predict_step"),
    "monitor": (engagement_monitor_pipeline, "monitor_step"),
}


def run(name: str, **kwargs: Any) -> dict:
    """Run pipeline ``name`` (train | promote | predict | monitor) and return its main step's output.

    Raises:
        KeyError: unknown name; RuntimeError: the run did not complete.
    """
    pipe, step_name = PIPELINES[name]
    run_response = pipe(**kwargs)
    if run_response is None:  # older ZenML returned nothing: look it up
        from zenml.client import Client

        run_response = Client().get_pipeline(pipe.name).last_run
    status = str(getattr(run_response, "status", "completed")).lower()
    if "completed" not in status:
        raise RuntimeError(f"pipeline {name} ended with status {status}")
    return run_response.steps[step_name].outputs["output"][0].load()
