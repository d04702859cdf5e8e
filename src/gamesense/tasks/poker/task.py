"""PokerBench as a task plugin (:class:`PokerTask`): the loader, prompts, metric, pairs and rule reward of this
package plugged into the generic layers (recipes ``poker.yaml``: sft -> reward -> grpo, ``poker-dpo.yaml``:
sft -> dpo)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from gamesense.plots import plot_confusion_matrix
from gamesense.tasks.base import Messages, Record, RewardFunction, Task, TaskOptions
from gamesense.tasks.poker.actions import first_line
from gamesense.tasks.poker.metrics import action_confusion, compute_metrics, row_scores
from gamesense.tasks.poker.pokerbench import (FILE_KINDS, PokerBenchReport, PokerSpot, SpotLabel, load_pokerbench,
                                              validation_split)  # fmt: skip
from gamesense.tasks.poker.prompts import build_messages, preference_pairs, to_prompt_completion
from gamesense.tasks.poker.rewards import legal_action_reward

TASK_NAME = "poker"



class PokerOptions(TaskOptions):
    """PokerBench's options (``task_options`` in a recipe)."""

    system_prompt: str = Field(description="instruction in the system turn (short: every prompt token costs CPU time); '': none")
    validation_fraction: float = Field(gt=0.0, lt=1.0, description="share of each file and street held back for "
                                       "model selection and the gate when data.eval_file is null")  # fmt: skip
    validation_seed: int = Field(description="seed of the held-back slice (same seed, same slice)")


class PokerTask(Task):
    """PokerBench as a task plugin: spot -> the solver's move, scored statically with the authors' metric
    (action accuracy gates promotion); preference pairs (solver move vs each other legal move) for the
    reward-model and DPO stages; a legal-and-well-formed rule reward for GRPO.

    ``train_file`` may be the dataset folder (both CSVs) or one CSV; with ``eval_file: null`` a stratified
    slice of it is held back (:func:`validation_split`).
    """

    name = TASK_NAME
    Options = PokerOptions
    evaluation = ("static",)
    gate_metric = "action_accuracy"
    metric_order = ("action_accuracy", "exact_match", "preflop_action_accuracy", "preflop_exact_match",
                    "postflop_action_accuracy", "postflop_exact_match", "illegal_action_rate", "invalid_rate",
                    "reference_action_accuracy", "reference_exact_match", "score")  # fmt: skip
    stop_strings = ("\n",)  # an answer is one line

    options: PokerOptions

    def load(self, path: str | Path, max_rows: int | None = None) -> PokerBenchReport:
        return load_pokerbench(path, max_rows)

    def split_validation(self, examples: Sequence[PokerSpot]) -> tuple[list[PokerSpot], list[PokerSpot]]:
        return validation_split(examples, self.options.validation_fraction, self.options.validation_seed)

    def prompt(self, text: str) -> Messages:
        system = self.options.system_prompt
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]

    def sft_records(self, examples: Sequence[PokerSpot]) -> list[Record]:
        return [to_prompt_completion(spot, self.options.system_prompt) | spot.columns() for spot in examples]

    def preference_records(self, examples: Sequence[PokerSpot]) -> list[Record]:
        return [pair | spot.columns() for spot in examples for pair in preference_pairs(spot, self.options.system_prompt)]

    def reward_functions(self) -> list[RewardFunction]:
        return [legal_action_reward]

    def eval_records(self, examples: Sequence[PokerSpot]) -> list[Record]:
        return [{"prompt": build_messages(spot, self.options.system_prompt), "reference": spot.label} | spot.columns()
                for spot in examples]  # fmt: skip

    def parse_output(self, text: str) -> str:
        return first_line(text)

    def compute_metrics(self, predictions: Sequence[str], records: Sequence[Record]) -> dict[str, float]:
        metrics = compute_metrics(predictions, [SpotLabel.from_record(r) for r in records])
        for kind in FILE_KINDS:  # a file kind the evaluation data lacks has no scores, only NaNs
            if metrics[f"{kind}_n"] == 0:
                metrics = {k: v for k, v in metrics.items() if not k.startswith(f"{kind}_")}
        return metrics

    def row_scores(self, prediction: str, record: Record) -> dict[str, Any]:
        scores = row_scores(prediction, SpotLabel.from_record(record))
        return {k: v for k, v in scores.items() if k != "label"}  # the record already holds the label

    def evaluation_artifacts(self, predictions: Sequence[str], records: Sequence[Record], out_dir: Path) -> dict[str, Path]:
        labels, matrix = action_confusion(predictions, [SpotLabel.from_record(r) for r in records])
        return {"confusion_matrix": plot_confusion_matrix(matrix, labels, Path(out_dir) / "confusion_matrix.png",
                                                          title="PokerBench actions")}  # fmt: skip


TASK = PokerTask
