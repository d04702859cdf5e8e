"""Gaming tasks. One module per task holds what is specific to it (loading, prompt format, output parser,
metrics) and exposes a :class:`TextTask`; the generic layers (training, evaluation, registry, pipelines)
only talk to that interface. Adding a task = one module here + one recipe in ``recipes/``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TextTask:
    """A text-to-text task as the generic layers see it.

    Attributes:
        name: task id used in recipes (``task: viggo``).
        default_system_prompt: short instruction put in the system turn.
        load: ``(path, max_rows) -> report`` with ``.examples`` (each with ``.line``), ``.skipped``
            (``[(line, reason)]``) and ``.total_rows``; raises the task's ``DataError`` on unusable files.
        build_prompt: ``(input_text, system_prompt) -> chat messages`` for raw text (``generate``).
        to_prompt_completion: ``(example, system_prompt) -> {"prompt": messages, "completion": messages}``.
        source_text / target_text: the model input and reference output of an example.
        extract_output: cleans raw generated text into the answer to score.
        compute_metrics: ``(predictions, references) -> {metric: float}``.
        per_row_scores: ``(prediction, reference) -> {name: bool}`` stored with each prediction.
    """

    name: str
    default_system_prompt: str
    load: Callable[..., Any]
    build_prompt: Callable[[str, str | None], list[dict]]
    to_prompt_completion: Callable[[Any, str | None], dict]
    source_text: Callable[[Any], str]
    target_text: Callable[[Any], str]
    extract_output: Callable[[str], str]
    compute_metrics: Callable[[Sequence[str], Sequence[str]], dict[str, float]]
    per_row_scores: Callable[[str, str], dict]


_TASK_MODULES = {"viggo": "gamesense.tasks.viggo"}


def get_task(name: str) -> TextTask:
    """The :class:`TextTask` registered as ``name``.

    Raises:
        KeyError: unknown task (the message lists the known ones).
    """
    if name not in _TASK_MODULES:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(_TASK_MODULES))}")
    return importlib.import_module(_TASK_MODULES[name]).TASK
