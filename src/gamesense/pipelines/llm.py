"""ZenML pipeline for an LLM recipe: evaluate_base -> train_<stage> (-> evaluate_<stage> for policy stages) for
each stage of the recipe -> promote.

The run is started before the pipeline (:meth:`~gamesense.pipelines.llm_run.LLMRun.start`: data loaded and
validated once, so a bad file stops with one line, not a failed step), saved as one artifact, and that
artifact is the input of every step. Each ``*_step`` is a thin wrapper over a step of
:mod:`gamesense.pipelines.llm_run`; steps exchange typed artifacts (the run, the stages trained so far).
Caching is off: training is not a pure function of its inputs (checkpoints, the registry's champion).
"""

from __future__ import annotations

from typing import Any

from gamesense.pipelines import init_zenml

init_zenml()

from zenml import pipeline, save_artifact, step  # noqa: E402
from zenml.client import Client  # noqa: E402

from gamesense.pipelines import llm_run  # noqa: E402
from gamesense.pipelines.llm_run import LLMRun, PipelineOutcome, TrainedStages  # noqa: E402
from gamesense.tasks.base import Task  # noqa: E402
from gamesense.training.methods import get_method  # noqa: E402
from gamesense.training.recipe import LLMRecipe  # noqa: E402


@step(enable_cache=False)
def evaluate_base_step(run: LLMRun) -> dict[str, float]:
    return llm_run.evaluate_base(run)


@step(enable_cache=False)
def train_step(run: LLMRun, stage: str, trained: TrainedStages) -> TrainedStages:
    return llm_run.train_stage(run, stage, trained)


@step(enable_cache=False)
def evaluate_step(run: LLMRun, trained: TrainedStages, stage: str) -> TrainedStages:
    return llm_run.evaluate_stage(run, trained, stage)


@step(enable_cache=False)
def promote_step(run: LLMRun, base_metrics: dict[str, float], trained: TrainedStages) -> dict[str, Any]:
    return llm_run.promote(run, base_metrics, trained).to_dict()


@pipeline(enable_cache=False)
def llm_pipeline(run_artifact: str, stages: list[str]) -> None:
    """Fine-tune through the recipe's stages, evaluate each policy against the base model, register and promote.

    Args:
        run_artifact: id of the saved :class:`~gamesense.pipelines.llm_run.LLMRun` artifact (every step's input).
        stages: the recipe's stages, in order.
    """
    run = Client().get_artifact_version(run_artifact)
    base_metrics = evaluate_base_step(run, id="evaluate_base")
    trained = TrainedStages()
    for stage in stages:  # stages chain through `trained`; the first waits for the base evaluation
        trained = train_step(run, stage, trained, id=f"train_{stage}", after=[base_metrics])
        if get_method(stage).produces == "policy":
            trained = evaluate_step(run, trained, stage, id=f"evaluate_{stage}")
    promote_step(run, base_metrics, trained, id="promote")


def run_zenml(recipe: LLMRecipe, resume: bool = False, task: Task | None = None) -> PipelineOutcome:
    """Start the run (:meth:`LLMRun.start`), then run :func:`llm_pipeline` on the active ZenML stack and collect
    its outputs.

    Raises:
        the task's ``DataError`` / ValueError: unusable data file; RuntimeError: the pipeline run did not complete.
    """
    run = LLMRun.start(recipe, resume, task)
    saved = save_artifact(run, name="llm_run")
    pipeline_run = llm_pipeline(run_artifact=str(saved.id), stages=list(recipe.stages))
    if not str(pipeline_run.status).lower().endswith("completed"):
        raise RuntimeError(f"ZenML pipeline run {pipeline_run.name} ended with status {pipeline_run.status}")
    load = lambda name: pipeline_run.steps[name].output.load()  # noqa: E731
    last = recipe.stages[-1]
    last_step = f"evaluate_{last}" if get_method(last).produces == "policy" else f"train_{last}"
    return PipelineOutcome(run=run, base_metrics=load("evaluate_base"), trained=load(last_step),
                           promotion=load("promote"))  # fmt: skip
