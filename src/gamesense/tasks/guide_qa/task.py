"""Guide Q&A task: answer a player's question about a game, trained on question-answer pairs that a teacher
wrote from the game's guides (``gamesense synth qa``; see :mod:`gamesense.tasks.guide_qa.synth`).

Data: the JSONL that ``synth qa`` writes, one pair per line with at least ``question`` and ``answer``
(``chunk_id``, ``chunk`` and ``source`` are kept when present). Any Q&A JSONL of that shape works.

Validation: held back by chunk (:meth:`GuideQATask.split_validation`), so no chunk has pairs on both sides
and a question about a passage the model trained on never scores as held-out.

Metrics (base vs fine-tuned):
- ``rouge_l``: mean ROUGE-L F1 of answer vs reference (Lin 2004, "ROUGE: A Package for Automatic Evaluation of
  Summaries", with Porter stemming, through ``rouge-score``); the gate metric, needs no model;
- ``judge_correct``: share of answers an LLM judge grades CORRECT against the reference answer and the guide
  passage (any OpenAI-compatible model: ``task_options.judge_url`` / ``judge_model``; off when the URL is null),
  ``judge_unparsed`` the share of verdicts that were neither (counted as not correct);
- ``answer_words``: mean answer length in words, ``empty_answers``: share of empty answers.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field

from gamesense.tasks.base import DataError, LoadReport, Record, Task, TaskOptions
from gamesense.tasks.guide_qa.prompts import answer_judge_messages, parse_verdict


@dataclass
class QAPair:
    """One question-answer pair.

    Attributes:
        line: 1-based line of the JSONL file.
        chunk_id: the guide passage it was written from (validation is split by it); the question itself when
            the file has no ``chunk_id``.
        chunk: that passage's text ("" when unknown); the judge reads it.
        source: provenance as written by ``synth qa`` (file, section, span, variant, teacher).
    """

    line: int
    question: str
    answer: str
    chunk_id: str
    chunk: str = ""
    source: dict[str, Any] = field(default_factory=dict)


def load_pairs(path: str | Path, max_rows: int | None = None) -> LoadReport:
    """Read a Q&A JSONL file.

    Args:
        path: JSONL, one object per line with non-empty string ``question`` and ``answer``; optional
            ``chunk_id`` (string), ``chunk`` (string), ``source`` (object). Blank lines are skipped silently.
        max_rows: read only the first N non-blank lines.

    Returns:
        :class:`LoadReport` of :class:`QAPair`; lines that are not JSON objects or lack a field are set aside
        with the reason.

    Raises:
        DataError: missing or non-UTF-8 file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (write Q&A pairs with `gamesense synth qa --out {path}`)")
    report = LoadReport(path=str(path))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        if max_rows is not None and report.total_rows >= max_rows:
            break
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            report.skipped.append((number, f"not JSON: {err.msg} at column {err.colno}"))
            continue
        if not isinstance(row, dict):
            report.skipped.append((number, f"expected a JSON object, got {type(row).__name__}"))
            continue
        problems = [f"{key!r} must be a non-empty string" for key in ("question", "answer")
                    if not isinstance(row.get(key), str) or not row[key].strip()]  # fmt: skip
        problems += [f"{key!r} must be a string" for key in ("chunk_id", "chunk")
                     if key in row and not isinstance(row[key], str)]  # fmt: skip
        if problems:
            report.skipped.append((number, "; ".join(problems)))
            continue
        question, answer = row["question"].strip(), row["answer"].strip()
        source = row.get("source") if isinstance(row.get("source"), dict) else {}
        report.examples.append(QAPair(number, question, answer, row.get("chunk_id") or question, row.get("chunk", ""), source))
    return report


def in_validation(chunk_id: str, fraction: float, seed: int) -> bool:
    """Whether a chunk is held back: a stable hash of ``(seed, chunk_id)`` mapped to [0, 1) falls below
    ``fraction`` (the same chunk lands on the same side in every run and on every machine)."""
    digest = hashlib.sha256(f"{seed}:{chunk_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 in [0, 1] (longest common subsequence of stemmed tokens)."""
    return _rouge().score(reference, prediction)["rougeL"].fmeasure


class GuideQAOptions(TaskOptions):
    system_prompt: str = Field("You answer players' questions about the game. Answer accurately and to the point.",
                               description="system message of every prompt")  # fmt: skip
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="share of chunks held back when data.eval_file is null")
    split_seed: int = Field(0, description="seed of the chunk split")
    judge_url: str | None = Field(None, description="OpenAI-compatible base URL of the judge (e.g. http://127.0.0.1:8000/v1 "
                                  "for `gamesense serve llm`); null: no judge score")  # fmt: skip
    judge_model: str = Field("base", description="model name the judge URL serves")
    judge_api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the judge's API key")
    judge_concurrency: int = Field(8, ge=1, description="judge requests in flight")


class GuideQATask(Task):
    """Answers to players' questions about a game, learned from the game's guides (see module doc)."""

    name = "guide_qa"
    Options = GuideQAOptions
    gate_metric = "rouge_l"
    metric_order = ("rouge_l", "judge_correct", "judge_unparsed", "answer_words", "empty_answers")
    stop_strings = ()  # multi-line answers: EOS ends them

    options: GuideQAOptions

    @classmethod
    def synth_commands(cls, host) -> dict:
        """``gamesense synth qa``: Q&A pairs from game guides through a teacher model."""
        from gamesense.tasks.guide_qa.commands import synth_qa

        return {"qa": synth_qa}

    def load(self, path: str | Path, max_rows: int | None = None) -> LoadReport:
        return load_pairs(path, max_rows)

    def split_validation(self, examples: Sequence[QAPair]) -> tuple[list[QAPair], list[QAPair]]:
        """Hold back whole chunks (:func:`in_validation`); at least one chunk when there are two or more."""
        fraction, seed = self.options.validation_fraction, self.options.split_seed
        held = {e.chunk_id for e in examples if in_validation(e.chunk_id, fraction, seed)}
        chunks = sorted({e.chunk_id for e in examples})
        if not held and len(chunks) > 1:
            held = {min(chunks, key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).digest())}
        return [e for e in examples if e.chunk_id not in held], [e for e in examples if e.chunk_id in held]

    def prompt(self, text: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.options.system_prompt}, {"role": "user", "content": text}]

    def sft_records(self, examples: Sequence[QAPair]) -> list[Record]:
        return [{"prompt": self.prompt(e.question), "completion": [{"role": "assistant", "content": e.answer}]} for e in examples]

    def eval_records(self, examples: Sequence[QAPair]) -> list[Record]:
        return [{"prompt": self.prompt(e.question), "reference": e.answer, "question": e.question, "chunk_id": e.chunk_id,
                 "chunk": e.chunk, "line": e.line} for e in examples]  # fmt: skip

    def compute_metrics(self, predictions: Sequence[str], records: Sequence[Record]) -> dict[str, float]:
        n = len(predictions)
        if n == 0:
            return {"n": 0.0}
        metrics = {
            "rouge_l": sum(rouge_l(p, r["reference"]) for p, r in zip(predictions, records)) / n,
            "answer_words": sum(len(p.split()) for p in predictions) / n,
            "empty_answers": sum(not p.strip() for p in predictions) / n,
            "n": float(n),
        }
        if self.options.judge_url:
            verdicts = self.judge(predictions, records)
            metrics["judge_correct"] = sum(v is True for v in verdicts) / n
            metrics["judge_unparsed"] = sum(v is None for v in verdicts) / n
        return metrics

    def row_scores(self, prediction: str, record: Record) -> dict[str, Any]:
        return {"rouge_l": round(rouge_l(prediction, record["reference"]), 4)}

    def judge(self, predictions: Sequence[str], records: Sequence[Record]) -> list[bool | None]:
        """Ask the judge model whether each answer is correct (greedy, cached on disk like the teacher's calls).

        Returns:
            per row: True (CORRECT), False (INCORRECT) or None (no verdict: unparseable reply or a failed call).
        """
        from gamesense.teacher import Request, Teacher

        opts = self.options
        requests = [Request(answer_judge_messages(r.get("chunk") or "(not available)", r["question"], r["reference"],
                                                  p or "(no answer)"), temperature=0.0, max_tokens=8)
                    for p, r in zip(predictions, records)]  # fmt: skip
        with Teacher(opts.judge_url, opts.judge_model, api_key=os.environ.get(opts.judge_api_key_env),
                     concurrency=opts.judge_concurrency) as judge:  # fmt: skip
            replies = judge.complete_many(requests, progress="judge")
        return [parse_verdict(reply.text, "CORRECT", "INCORRECT", endings=()) if reply.ok else None for reply in replies]


TASK = GuideQATask
