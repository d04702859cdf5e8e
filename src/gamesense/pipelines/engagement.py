"""ZenML pipelines for the engagement model: train, promote, batch inference, monitor-then-retrain.

Each step (``*_step``) is a thin wrapper over a plain function (:mod:`gamesense.training.engagement`,
:mod:`gamesense.pipelines.engagement_gate`, :mod:`gamesense.serving.engagement.batch`,
:mod:`gamesense.monitoring.engagement`) and takes the validated recipe (loaded once by the caller), so a
pipeline run and a plain CLI call do the same thing. Steps return JSON-able dicts (ZenML stores them as
artifacts). Caching is off: inputs are files whose content changes under the same name.
"""

from __future__ import annotations

from typing import Any

from gamesense.pipelines import init_zenml

init_zenml()

from zenml import pipeline, step  # noqa: E402

from gamesense.tasks.engagement import EngagementRecipe  # noqa: E402


@step(enable_cache=False)
def train_step(recipe: EngagementRecipe, data_file: str | None = None) -> dict:
    """Train + register as challenger (see :func:`gamesense.training.engagement.train_engagement`)."""
    from gamesense.training.engagement import train_engagement

    return train_engagement(recipe, data_file).to_dict()


@step(enable_cache=False)
def promote_step(recipe: EngagementRecipe, eval_file: str | None = None, trained: dict | None = None) -> dict:
    """Champion/challenger gate (see :func:`gamesense.pipelines.engagement_gate.promote_engagement`). ``trained``
    only orders the step after training; a skipped training (``{}``) skips promotion too."""
    from gamesense.pipelines.engagement_gate import promote_engagement

    if trained is not None and not trained:
        return {}
    return promote_engagement(recipe, eval_file)


@step(enable_cache=False)
def predict_step(recipe: EngagementRecipe, input_file: str, output_file: str, model_uri: str | None = None) -> dict:
    """Batch scoring with the served alias's version, or ``model_uri`` (see
    :func:`gamesense.serving.engagement.batch.score_file`)."""
    from gamesense.serving.engagement.batch import score_file

    return score_file(recipe, input_file, output_file, model_uri)


@step(enable_cache=False)
def monitor_step(recipe: EngagementRecipe, current_file: str | None = None) -> dict:
    """Drift report + retraining decision (see :func:`gamesense.monitoring.engagement.monitor_engagement`)."""
    from gamesense.monitoring.engagement import monitor_engagement

    return monitor_engagement(recipe, current_file).to_dict()


@step(enable_cache=False)
def retrain_if_needed_step(recipe: EngagementRecipe, drift: dict, retrain: bool = True) -> dict:
    """Retrain (register a challenger) only when the drift decision says so; else return ``{}``."""
    from gamesense.training.engagement import train_engagement

    if not (retrain and drift.get("retrain")):
        return {}
    return train_engagement(recipe).to_dict()


@pipeline(enable_cache=False)
def engagement_train_pipeline(recipe: EngagementRecipe, data_file: str | None = None):
    """Weekly: train + register challenger."""
    return train_step(recipe, data_file)


@pipeline(enable_cache=False)
def engagement_promote_pipeline(recipe: EngagementRecipe, eval_file: str | None = None):
    """After training: champion/challenger on one evaluation file."""
    return promote_step(recipe, eval_file)


@pipeline(enable_cache=False)
def engagement_batch_pipeline(recipe: EngagementRecipe, input_file: str, output_file: str,
                              model_uri: str | None = None):  # fmt: skip
    """Daily: score the day's players with the champion."""
    return predict_step(recipe, input_file, output_file, model_uri)


@pipeline(enable_cache=False)
def engagement_monitor_pipeline(recipe: EngagementRecipe, current_file: str | None = None, retrain: bool = True):
    """Nightly: drift check; on drift retrain, then promote when the new model beats the champion."""
    drift = monitor_step(recipe, current_file)
    trained = retrain_if_needed_step(recipe, drift, retrain)
    promote_step(recipe, None, trained)
    return drift


PIPELINES = {
    "train": (engagement_train_pipeline, "train_step"),
    "promote": (engagement_promote_pipeline, "promote_step"),
    "predict": (engagement_batch_pipeline, "predict_step"),
    "monitor": (engagement_monitor_pipeline, "monitor_step"),
}


def run(name: str, recipe: EngagementRecipe, **kwargs: Any) -> dict:
    """Run pipeline ``name`` (train | promote | predict | monitor) with ``recipe`` and return its main step's output.

    Raises:
        KeyError: unknown name; RuntimeError: the run did not complete.
    """
    pipe, step_name = PIPELINES[name]
    run_response = pipe(recipe=recipe, **kwargs)
    if run_response is None:  # older ZenML returned nothing: look it up
        from zenml.client import Client

        run_response = Client().get_pipeline(pipe.name).last_run
    status = str(getattr(run_response, "status", "completed")).lower()
    if "completed" not in status:
        raise RuntimeError(f"pipeline {name} ended with status {status}")
    return run_response.steps[step_name].outputs["output"][0].load()
