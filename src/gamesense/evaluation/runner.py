"""Evaluate one model on one task: static (decode every evaluation record, then score the strings) and/or
rollout (act in the task's environment), whichever the task declares; metric tables for the console."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gamesense.config import GenerationSection
from gamesense.evaluation.generation import GenerationResult, generate_batch
from gamesense.evaluation.policy import ModelPolicy
from gamesense.tasks.base import Record, Task


@dataclass
class EvalResult:
    """Scores of one model on one task.

    Attributes:
        metrics: the task's metrics; static evaluations add ``gen_tokens_per_s`` and ``eval_seconds``.
        predictions_path: JSONL, one record per evaluation example (its columns, prediction, raw output,
            per-row scores); None without a static evaluation.
        artifacts: pictures of the evaluation (a static evaluation's confusion matrix, a rollout's GIFs and
            plots), name -> path.
    """

    metrics: dict[str, float]
    predictions_path: Path | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)


def evaluate_static(
    model,
    task: Task,
    records: Sequence[Record],
    predictions_path: str | Path,
    generation: GenerationSection,
    desc: str = "evaluate",
    progress: bool = True,
) -> EvalResult:
    """Greedy-decode every record's prompt, parse and score the outputs with the task's metrics, and write
    the predictions JSONL and the task's evaluation artifacts (next to it).

    Args:
        model: an :class:`~gamesense.models.refs.InferenceModel`.
        records: from :meth:`Task.eval_records`, all of them: no sampling.
        predictions_path: where to write the JSONL (parent directories are created).
        generation: the recipe's ``generation`` section (see :func:`~gamesense.evaluation.generation.generate_batch`).

    Raises:
        ValueError: no records.
    """
    if not records:
        raise ValueError("no evaluation examples: check the evaluation file")
    result = generate_batch(model.model, model.tokenizer, [r["prompt"] for r in records], generation,
                            stop_strings=task.stop_strings, progress=progress, desc=desc)  # fmt: skip
    return score_generations(task, records, result, predictions_path)


def score_generations(task: Task, records: Sequence[Record], result: GenerationResult, predictions_path: str | Path) -> EvalResult:
    """Parse and score generated texts (``result.texts[i]`` answers ``records[i]``) with the task's metrics, and
    write the predictions JSONL and the task's evaluation artifacts (next to it); any generator's output
    (our decoding loop, llama.cpp) is scored the same way."""
    predictions = [task.parse_output(text) for text in result.texts]
    metrics = task.compute_metrics(predictions, records)
    metrics["gen_tokens_per_s"] = result.tokens_per_s
    metrics["eval_seconds"] = result.seconds
    path = Path(predictions_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for record, raw, prediction in zip(records, result.texts, predictions):
            row = {k: v for k, v in record.items() if k != "prompt"}
            row.update(prediction=prediction, raw=raw, **task.row_scores(prediction, record))
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    artifacts = task.evaluation_artifacts(predictions, records, path.parent)
    return EvalResult(metrics=metrics, predictions_path=path, artifacts=artifacts)


def evaluate_model(
    model,
    task: Task,
    records: Sequence[Record] | None,
    out_dir: str | Path,
    generation: GenerationSection,
    label: str = "model",
    progress: bool = True,
) -> EvalResult:
    """Every evaluation the task declares, merged: static on ``records`` (skipped when None), rollout with
    the model as a :class:`ModelPolicy`. Predictions go to ``<out_dir>/predictions.jsonl``.

    Raises:
        ValueError: a static task without records.
    """
    out = Path(out_dir)
    result = EvalResult(metrics={})
    if "static" in task.evaluation and records is not None:
        result = evaluate_static(model, task, records, out / "predictions.jsonl", generation, desc=f"evaluate {label}",
                                 progress=progress)  # fmt: skip
    elif "static" in task.evaluation and "rollout" not in task.evaluation:
        raise ValueError(f"task {task.name!r} is evaluated on records: pass an evaluation file")
    if "rollout" in task.evaluation:
        policy = ModelPolicy(model, label, generation, task.stop_strings)
        rollout = task.rollout(policy, out, progress=progress)
        result.metrics.update(rollout.metrics)
        result.artifacts.update(rollout.artifacts)
    return result


def metrics_table(columns: dict[str, dict[str, float]], title: str = "evaluation", order: Sequence[str] = ()):
    """A rich ``Table``: one row per metric (``order`` first, the rest sorted; counts ``n`` / ``*_n`` left out),
    one column per model (e.g. ``base`` and ``fine-tuned``)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys = [k for k in order if any(k in m for m in columns.values())]
    keys += sorted(k for k in {k for m in columns.values() for k in m} - set(keys) if k != "n" and not k.endswith("_n"))
    for key in keys:
        cells = []
        for metrics in columns.values():
            value = metrics.get(key)
            cells.append("-" if value is None else (f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"))
        table.add_row(key, *cells)
    return table
