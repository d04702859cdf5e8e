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


def check_data_files(recipe: LLMRecipe) -> None:
    """Load the recipe's training and evaluation files once before the pipeline starts (writing those the task
    can produce, as ``prepare_data`` would), so that a missing or unusable file stops with one line naming
    it instead of a failed ZenML step and its log.

    Raises:
        the task's ``DataError``: missing file or wrong columns; ValueError: no usable row.
    """
    from gamesense.settings import data_path

    task = llm_steps.open_task(recipe)
    for split, name, max_rows in (("train", recipe.data.train_file, recipe.data.max_train_rows),
                                  ("eval", recipe.data.eval_file, recipe.data.max_eval_rows)):  # fmt: skip
        if name is None:
            continue  # no evaluation file: the task's validation slice of the training file
        path = data_path(name)
        if not path.exists():
            task.create_data(split, path)
        report = task.load(path, max_rows)
        if not report.examples:
            why = (f"{len(report.skipped)} rows set aside, first: line {report.skipped[0][0]}: {report.skipped[0][1]}"
                   if report.skipped else "the file has no rows")  # fmt: skip
            raise ValueError(f"{split} file {report.path}: no usable rows ({why})")


def run_zenml(recipe: LLMRecipe, resume: bool = False) -> PipelineOutcome:
    """Run :func:`llm_pipeline` on the active ZenML stack and collect its outputs (data files checked first,
    :func:`check_data_files`).

    Raises:
        the task's ``DataError`` / ValueError: unusable data file; RuntimeError: the pipeline run did not complete.
    """
    check_data_files(recipe)
    run = llm_pipeline(recipe=recipe, resume=resume)
    if not str(run.status).lower().endswith("completed"):
        raise RuntimeError(f"ZenML pipeline run {run.name} ended with status {run.status}")
    load = lambda name: run.steps[name].output.load()  # noqa: E731
    last = f"evaluate_{recipe.stages[-1]}" if STAGE_PRODUCES[recipe.stages[-1]] == "policy" else f"train_{recipe.stages[-1]}"
    return PipelineOutcome(data=load("prepare_data"), base_metrics=load("evaluate_base"), trained=load(last),
                           promotion=load("promote"))  # fmt: skip
