"""The task plugin interface: everything the generic layers need to know about one LLM gaming task.

A task module (``gamesense/tasks/<name>.py`` or a package of that name) defines one :class:`Task` subclass
and exposes it as ``TASK``. The generic layers only talk to this interface:

- **data**: :meth:`Task.load` reads a file into typed examples, reporting bad rows by line and setting
  them aside (:class:`LoadReport`);
- **training records** (TRL's conversational formats, dicts of JSON-able values): :meth:`Task.sft_records`
  (``prompt``/``completion``), optionally :meth:`Task.preference_records` (``prompt``/``chosen``/
  ``rejected``) and :meth:`Task.reward_functions` with TRL's signature ``(completions, **columns) ->
  list[float]``; any other key of a record is a column that reward functions and scorers receive;
- **evaluation**: static (:meth:`Task.eval_records` -> decode -> :meth:`Task.parse_output` ->
  :meth:`Task.compute_metrics`, plus :meth:`Task.evaluation_artifacts` such as a confusion matrix) and/or
  rollout (:meth:`Task.rollout`: act in an environment through a :class:`Policy` for episodes and score the
  episodes), and the gate metric; :meth:`Task.split_validation` when the task holds back its own
  validation slice;
- **options**: :attr:`Task.Options`, the task's own pydantic model for the recipe's ``task_options``.

Data flows one way: typed examples -> records -> trainer / evaluator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import ValidationError

from gamesense.config import RecipeError, StrictModel, format_validation_error

#: one training/evaluation record: ``prompt`` (chat messages) plus format keys and task columns
Record = dict[str, Any]
#: chat messages ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``
Messages = list[dict[str, str]]
#: TRL reward function: ``(completions, **columns) -> one float per completion``
RewardFunction = Callable[..., list[float]]

E = TypeVar("E")


class DataError(ValueError):
    """A task's data file is missing, unreadable, or lacks the expected columns (a whole-file problem;
    single bad rows are reported in :attr:`LoadReport.skipped` instead)."""


@dataclass
class LoadReport(Generic[E]):
    """Usable examples of one file plus the rows set aside and why.

    Attributes:
        path: the file read.
        examples: typed examples in file order.
        skipped: ``(line, reason)`` for each row left out; lines are 1-based (a CSV header is line 1).
    """

    path: str
    examples: list[E] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        """Data rows read (examples + skipped)."""
        return len(self.examples) + len(self.skipped)


class TaskOptions(StrictModel):
    """Base of a task's options model (the recipe's ``task_options``); unknown keys are errors."""


class Policy(Protocol):
    """What a rollout evaluation may ask of a model (implemented by the evaluation layer).

    ``choose`` scores each prompt's candidate answers with the model and returns the index of the best one
    per prompt (one batched forward pass; no free-form decoding, so no unparseable answers). ``generate``
    decodes greedily and stops at the task's stop strings.
    """

    name: str

    def choose(self, prompts: Sequence[Messages], choices: Sequence[Sequence[str]]) -> list[int]: ...

    def generate(self, prompts: Sequence[Messages]) -> list[str]: ...


class CommandHost(Protocol):
    """What a task's own CLI commands (:meth:`Task.commands`) may ask of the command line, which sits above
    the task layer: a recipe's task, and a model reference loaded as a :class:`Policy`."""

    def recipe_and_task(self, recipe: str | None, overrides: list[str] | None) -> tuple[Any, Task]:
        """``(recipe, task)`` for a recipe name or file (None: the task's own recipe); exits on a bad recipe."""
        ...

    def load_policy(self, model: str, recipe: Any, task: Task) -> Policy:
        """A model reference (base id/path, adapter dir, ``models:/...``) as a policy; exits if it cannot load."""
        ...


@dataclass
class RolloutResult:
    """Outcome of :meth:`Task.rollout`.

    Attributes:
        metrics: name -> value (means over episodes, shares in [0, 1], throughput).
        artifacts: files worth keeping with the run (GIFs, plots), name -> path.
    """

    metrics: dict[str, float]
    artifacts: dict[str, Path] = field(default_factory=dict)


class Task(ABC):
    """One LLM gaming task. Subclass, set the class attributes, implement the data and evaluation methods
    your task supports, and expose an instance's class as ``TASK`` in the task module.

    Class attributes:
        name: id used in recipes (``task: <name>``).
        Options: pydantic model of ``task_options`` (a :class:`TaskOptions` subclass).
        evaluation: which evaluations the task supports: ``"static"`` (decode, then score strings),
            ``"rollout"`` (act in an environment), or both.
        gate_metric: metric the promotion gate compares (higher is better unless ``higher_is_better``).
        metric_order: metrics shown first, in this order, in tables; the rest follow sorted.
        stop_strings: decoding stops at the first of these (EOS always stops).

    Args:
        options: the recipe's ``task_options`` (validated against :attr:`Options`).

    Raises:
        RecipeError: options that do not fit :attr:`Options`, naming ``task_options.<key>``.
    """

    name: ClassVar[str]
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    evaluation: ClassVar[tuple[str, ...]] = ("static",)
    gate_metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    metric_order: ClassVar[tuple[str, ...]] = ()
    stop_strings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: dict[str, Any] | TaskOptions | None = None):
        if isinstance(options, self.Options):
            self.options = options
        else:
            try:
                self.options = self.Options.model_validate(options or {})
            except ValidationError as err:
                raise RecipeError(format_validation_error(err, prefix="task_options.")) from None

    @classmethod
    def commands(cls, host: CommandHost) -> Any | None:
        """Task-specific CLI commands, mounted as ``gamesense <name> ...``: a ``typer.Typer`` app, or None
        (the default) for none."""
        return None

    @classmethod
    def synth_commands(cls, host: CommandHost) -> dict[str, Callable[..., Any]] | None:
        """Commands that build the task's training data with a teacher model, mounted as ``gamesense synth
        <name>``: command name -> a Typer command function (e.g. ``{"qa": synth_qa}``), or None (the default)."""
        return None

    # --- data -------------------------------------------------------------------------------------------

    @abstractmethod
    def load(self, path: str | Path, max_rows: int | None = None) -> LoadReport:
        """Read and validate a data file.

        Args:
            path: the file.
            max_rows: read only the first N data rows (set-aside rows count towards N); None: all.

        Raises:
            DataError: missing or unreadable file, wrong columns.
        """

    def create_data(self, split: str, path: Path, progress: bool = True) -> bool:
        """Write a data file the recipe names that does not exist yet, for tasks that can produce their own
        data (e.g. by recording an expert playing). Default: cannot (returns False).

        Args:
            split: ``"train"`` or ``"eval"``.
            path: the file to write.

        Returns:
            True when the file was written.
        """
        return False

    def split_validation(self, examples: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        """Hold back a validation slice of the training examples, used when the recipe's ``data.eval_file``
        is null (model selection and the promotion gate then use the slice; evaluation commands still take
        any file).

        Returns:
            ``(train, validation)``: disjoint, together every example once, deterministic.

        Raises:
            NotImplementedError: the task holds back no slice (set ``data.eval_file``).
        """
        raise NotImplementedError(f"task {self.name!r} holds back no validation slice: set data.eval_file")

    @abstractmethod
    def prompt(self, text: str) -> Messages:
        """Chat messages for a raw user input (what ``gamesense generate TEXT`` sends)."""

    @abstractmethod
    def sft_records(self, examples: Sequence[Any]) -> list[Record]:
        """Supervised records: ``{"prompt": messages, "completion": [assistant message], ...columns}``."""

    def preference_records(self, examples: Sequence[Any]) -> list[Record]:
        """Preference pairs ``{"prompt", "chosen", "rejected", ...columns}`` for reward-model and DPO stages.

        Raises:
            NotImplementedError: the task has no preference data.
        """
        raise NotImplementedError(f"task {self.name!r} builds no preference pairs (needed by reward and dpo stages)")

    def reward_functions(self) -> list[RewardFunction]:
        """Rule rewards for RL stages, TRL signature ``(completions, **columns) -> list[float]``."""
        return []

    # --- static evaluation -------------------------------------------------------------------------------

    def eval_records(self, examples: Sequence[Any]) -> list[Record]:
        """Evaluation records: ``{"prompt": messages, "reference": str, ...columns}``; ``line`` (the source
        line) is kept with each prediction written.

        Raises:
            NotImplementedError: the task has no static evaluation.
        """
        raise NotImplementedError(f"task {self.name!r} has no static evaluation")

    def parse_output(self, text: str) -> str:
        """Raw generated text -> the answer that is scored (default: stripped text)."""
        return text.strip()

    def compute_metrics(self, predictions: Sequence[str], records: Sequence[Record]) -> dict[str, float]:
        """Score parsed predictions against their records (row i against row i).

        Raises:
            NotImplementedError: the task has no static evaluation.
        """
        raise NotImplementedError(f"task {self.name!r} has no static evaluation")

    def row_scores(self, prediction: str, record: Record) -> dict[str, Any]:
        """Per-row scores written next to each prediction (default: none)."""
        return {}

    def evaluation_artifacts(self, predictions: Sequence[str], records: Sequence[Record], out_dir: Path) -> dict[str, Path]:
        """Pictures or tables of a static evaluation worth keeping with the run (e.g. a confusion matrix),
        written under ``out_dir``; name -> path. Default: none."""
        return {}

    # --- rollout evaluation ------------------------------------------------------------------------------

    def rollout(self, policy: Policy, out_dir: Path, progress: bool = True) -> RolloutResult:
        """Let ``policy`` act in the task's environment for the episodes the options define, and score them;
        artifacts (GIFs, plots) go under ``out_dir``.

        Raises:
            NotImplementedError: the task has no rollout evaluation.
        """
        raise NotImplementedError(f"task {self.name!r} has no rollout evaluation")

    def reference_results(self, progress: bool = True) -> dict[str, dict[str, float]]:
        """Scores of model-free reference players (e.g. random, expert) for the comparison table."""
        return {}
