"""ZenML pipeline for an LLM recipe: prepare_data -> evaluate_base -> train_<stage> (-> evaluate_<stage> for
policy stages) for each stage of the recipe -> promote. Each step is a thin wrapper over
:mod:`gamesense.pipelines.llm_steps`; steps exchange typed artifacts (the recipe, the prepared data, the
stages trained so far). Caching is off: training is not a pure function of its inputs (checkpoints, the
registry's champion).
"""

from __future__ import annotations

from typing import Any

from gamesense.pipelines import init_zenml

init_zenml()

from zenml import pipeline, step  # noqa: E402

from gamesense.config import LLMRecipe  # noqa: E402
from gamesense.pipelines import llm_steps  # noqa: E402
from gamesense.pipelines.llm_steps import PipelineOutcome, PreparedData, TrainedStages  # noqa: E402
from gamesense.training.stages import STAGE_PRODUCES  # noqa: E402


@step(enable_cache=False)
def prepare_data(recipe: LLMRecipe, resume: bool) -> PreparedData:
    return llm_steps.prepare_data(recipe, resume)


@step(enable_cache=False)
def evaluate_base(recipe: LLMRecipe, data: PreparedData) -> dict[str, float]:
    return llm_steps.evaluate_base(recipe, data)


@step(enable_cache=False)
def train_stage(recipe: LLMRecipe, data: PreparedData, stage: str, trained: TrainedStages, resume: bool) -> TrainedStages:
    return llm_steps.train_stage(recipe, data, stage, trained, resume)


@step(enable_cache=False)
def evaluate_stage(recipe: LLMRecipe, data: PreparedData, trained: TrainedStages, stage: str) -> TrainedStages:
    return llm_steps.evaluate_stage(recipe, data, trained, stage)


@step(enable_cache=False)
def promote(recipe: LLMRecipe, data: PreparedData, base_metrics: dict[str, float], trained: TrainedStages) -> dict[str, Any]:
    return llm_steps.promote(recipe, data, base_metrics, trained).to_dict()


@pipeline(enable_cache=False)
def llm_pipeline(recipe: LLMRecipe, resume: bool = False) -> None:
    """Fine-tune through the recipe's stages, evaluate each policy against the base model, register and promote."""
    data = prepare_data(recipe, resume)
    base_metrics = evaluate_base(recipe, data)
    trained = TrainedStages()
    for stage in recipe.stages:  # stages chain through `trained`; the first waits for the base evaluation
        trained = train_stage(recipe, data, stage, trained, resume, id=f"train_{stage}", after=[base_metrics])
        if STAGE_PRODUCES[stage] == "policy":
            trained = evaluate_stage(recipe, data, trained, stage, id=f"evaluate_{stage}")
    promote(recipe, data, base_metrics, trained)


def run_zenml(recipe: LLMRecipe, resume: bool = False) -> PipelineOutcome:
    """Run :func:`llm_pipeline` on the active ZenML stack and collect its outputs.

    Raises:
        RuntimeError: the pipeline run did not complete.
    """
    run = llm_pipeline(recipe=recipe, resume=resume)
    if not str(run.status).lower().endswith("completed"):
        raise RuntimeError(f"ZenML pipeline run {run.name} ended with status {run.status}")
    load = lambda name: run.steps[name].output.load()  # noqa: E731
    last = f"evaluate_{recipe.stages[-1]}" if STAGE_PRODUCES[recipe.stages[-1]] == "policy" else f"train_{recipe.stages[-1]}"
    return PipelineOutcome(data=load("prepare_data"), base_metrics=load("evaluate_base"), trained=load(last),
                           promotion=load("promote"))  # fmt: skip
