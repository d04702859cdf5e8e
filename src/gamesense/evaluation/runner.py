"""Evaluate a model on a task's data file: generate, score, write predictions, print tables."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gamesense.evaluation.generation import generate_batch
from gamesense.tasks import TextTask


@dataclass
class EvalResult:
    """Scores of one model on one evaluation file.

    Attributes:
        metrics: the task's metrics plus ``gen_tokens_per_s`` and ``eval_seconds``.
        predictions_path: JSONL, one record per example: line, input, reference, prediction, raw output,
            per-row scores.
    """

    metrics: dict[str, float]
    predictions_path: Path


def task_records(task: TextTask, examples: list, system_prompt: str | None = None) -> list[dict]:
    """Examples as prompt-completion records ``{"line", "prompt", "completion"}`` (TRL conversational format)."""
    return [{"line": ex.line, **task.to_prompt_completion(ex, system_prompt)} for ex in examples]


def evaluate_records(
    loaded,
    task: TextTask,
    records: list[dict],
    predictions_path: str | Path,
    max_new_tokens: int = 128,
    batch_size: int = 32,
    desc: str = "evaluate",
    progress: bool = True,
) -> EvalResult:
    """Greedy-decode every record's prompt, score the outputs against the completions with the task's
    metrics and write predictions JSONL.

    Args:
        loaded: a :class:`gamesense.models.refs.LoadedModel`.
        records: from :func:`task_records`, all of them: no sampling.
        predictions_path: where to write the JSONL (parent directories are created).

    Raises:
        ValueError: no records.
    """
    if not records:
        raise ValueError("no evaluation examples: check the evaluation file")
    result = generate_batch(
        loaded.model, loaded.tokenizer, [r["prompt"] for r in records], max_new_tokens=max_new_tokens,
        batch_size=batch_size, progress=progress, desc=desc,
    )
    predictions = [task.extract_output(text) for text in result.texts]
    references = [r["completion"][-1]["content"] for r in records]
    metrics = task.compute_metrics(predictions, references)
    metrics["gen_tokens_per_s"] = result.tokens_per_s
    metrics["eval_seconds"] = result.seconds
    path = Path(predictions_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for rec, raw, pred, ref in zip(records, result.texts, predictions, references):
            row = {"line": rec["line"], "input": rec["prompt"][-1]["content"], "reference": ref, "prediction": pred, "raw": raw}
            row.update(task.per_row_scores(pred, ref))
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return EvalResult(metrics=metrics, predictions_path=path)


_PERCENT_METRICS = ("exact_match", "mr_match", "act_accuracy", "slot_precision", "slot_recall", "slot_f1",
                    "valid_mr_rate", "rouge1", "rouge2", "rougeL")


def metrics_table(columns: dict[str, dict[str, float]], title: str = "evaluation"):
    """A rich ``Table``: one row per metric, one column per model (e.g. ``base`` and ``fine-tuned``)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys = [k for k in _PERCENT_METRICS if any(k in m for m in columns.values())]
    keys += sorted({k for m in columns.values() for k in m} - set(keys) - {"n"})
    for key in keys:
        cells = []
        for metrics in columns.values():
            value = metrics.get(key)
            cells.append("-" if value is None else (f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"))
        table.add_row(key, *cells)
    return table
