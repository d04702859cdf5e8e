"""ZenML pipeline for LLM fine-tuning: prepare_data -> evaluate_base -> finetune -> evaluate_finetuned ->
promote. Each step is a one-line wrapper over :mod:`gamesense.pipelines.llm_steps`; caching is off because
training is not a pure function of its inputs (checkpoints, the registry's champion).
"""

from __future__ import annotations

from gamesense.pipelines import init_zenml

init_zenml()

from zenml import pipeline, step  # noqa: E402

from gamesense.pipelines import llm_steps  # noqa: E402


@step(enable_cache=False)
def prepare_data(recipe: dict) -> dict:
    return llm_steps.prepare_data(recipe)


@step(enable_cache=False)
def evaluate_base(recipe: dict, data: dict) -> dict:
    return llm_steps.evaluate_base(recipe, data)


@step(enable_cache=False)
def finetune(recipe: dict, data: dict, resume: bool) -> dict:
    return llm_steps.finetune_adapter(recipe, data, resume=resume)


@step(enable_cache=False)
def evaluate_finetuned(recipe: dict, data: dict, trained: dict) -> dict:
    return llm_steps.evaluate_finetuned(recipe, data, trained)


@step(enable_cache=False)
def promote(recipe: dict, data: dict, base_metrics: dict, finetuned_metrics: dict) -> dict:
    return llm_steps.promote(recipe, data, base_metrics, finetuned_metrics)


@pipeline(enable_cache=False)
def llm_finetune_pipeline(recipe: dict, resume: bool = False) -> None:
    """Fine-tune, evaluate against the base model, register and promote (see module doc)."""
    data = prepare_data(recipe)
    base_metrics = evaluate_base(recipe, data)
    trained = finetune(recipe, data, resume, after=[base_metrics])
    finetuned_metrics = evaluate_finetuned(recipe, data, trained)
    promote(recipe, data, base_metrics, finetuned_metrics)


def run_zenml(recipe: dict, resume: bool = False) -> dict:
    """Run :func:`llm_finetune_pipeline` on the active ZenML stack and collect every step's output.

    Returns:
        ``{"data", "base_metrics", "trained", "finetuned_metrics", "promotion"}``.

    Raises:
        RuntimeError: the pipeline run did not complete.
    """
    run = llm_finetune_pipeline(recipe=recipe, resume=resume)
    if str(run.status) not in ("completed", "ExecutionStatus.COMPLETED"):
        raise RuntimeError(f"ZenML pipeline run {run.name} ended with status {run.status}")
    load = lambda name: run.steps[name].output.load()  # noqa: E731
    return {
        "data": load("prepare_data"),
        "base_metrics": load("evaluate_base"),
        "trained": load("finetune"),
        "finetuned_metrics": load("evaluate_finetuned"),
        "promotion": load("promote"),
    }
