"""Self-instruct Q&A from game guides: ingest -> chunk -> teacher pairs -> filters -> JSONL with provenance.

:func:`synthesize` runs the whole recipe with any :class:`~gamesense.teacher.Teacher`. Filters, in order, each
counted in the summary (``in`` / ``kept`` / ``dropped`` by reason):

1. ``teacher``: chunks whose generation call failed (unit: chunks);
2. ``parse``: teacher output that is no well-formed pair (:func:`~gamesense.tasks.guide_qa.prompts.parse_pairs`),
   or, with the two-step strategy, no question (:func:`~gamesense.tasks.guide_qa.prompts.parse_questions`) or an
   empty answer;
3. ``length``: question and answer within :class:`~gamesense.tasks.guide_qa.filters.LengthBounds`;
4. ``source_mention``: a pair that talks about "the guide"/"the text" is rewritten by the teacher with the rewrite
   prompt and checked again (parse, length, mention); kept when the rewrite is clean (counted as ``rewritten``),
   else dropped;
5. ``groundedness``: share of the answer's content words found in its chunk >= ``min_groundedness``;
6. ``judge`` (unless switched off): the teacher as judge passes or fails each pair for names and facts from
   outside the game; an unparseable verdict counts as a failure, under its own reason;
7. ``near_duplicate``: a question too close to an earlier kept one (rapidfuzz ``token_sort_ratio``).

Files written (atomically: a temporary file renamed into place), for ``--out qa.jsonl``:

- ``qa.jsonl``: one kept pair per line, ``{"id": "<chunk_id>-q<k>", "question", "answer", "chunk_id", "chunk",
  "source": {"file", "section", "trail", "line", "span": [start, end], "variant", "teacher", "rewritten"}}``;
  ``span`` is the chunk's character span in the cleaned text of the guide (:mod:`~gamesense.tasks.guide_qa.ingest`
  rebuilds it from the file), ``line`` the source line where the section starts;
- ``qa.rejected.jsonl``: each dropped pair or output with ``filter`` and ``reason``;
- ``qa.summary.json``: counts per filter, chunks and their sizes, pairs generated and kept, teacher calls, cache
  hits and misses, wall time, teacher, seed and options.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gamesense.settings import same_file, write_text_atomic
from gamesense.tasks.guide_qa.chunking import Chunk, ChunkSizes, chunk_documents
from gamesense.tasks.guide_qa.filters import LengthBounds, NearDuplicates, groundedness_problem, length_problem, source_mention
from gamesense.tasks.guide_qa.ingest import find_guides, load_guide
from gamesense.tasks.guide_qa.prompts import (
    Pair,
    answer_messages,
    generation_messages,
    judge_messages,
    parse_answer,
    parse_pairs,
    parse_questions,
    parse_verdict,
    pick_variant,
    question_messages,
    rewrite_messages,
)
from gamesense.teacher import Request, Teacher, TeacherError

STRATEGIES = ("two-step", "pairs")
#: two-step token caps: per question asked for, and per answer
QUESTION_TOKENS, ANSWER_TOKENS = 50, 200
FILTERS = ("teacher", "parse", "length", "source_mention", "groundedness", "judge", "near_duplicate")


@dataclass(frozen=True)
class SynthOptions:
    """Settings of one ``synth qa`` run.

    Attributes:
        pairs_per_chunk: pairs asked for per chunk.
        strategy: ``"two-step"``: ask for questions per chunk, then answer each question in its own call (small
            teachers follow it: one task per call, no pair format to keep); ``"pairs"``: one call per chunk writes
            whole ``Q:``/``A:`` pairs (the seed recipe; fewer calls, for strong teachers).
        seed: seeds chunk sizes and prompt variants.
        sizes: chunk size distribution.
        max_chunks: use at most this many chunks in all, taken round-robin over the files (quick runs); None: all.
        temperature, max_tokens: sampling of the generation and rewrite calls.
        answer_temperature: sampling temperature of the two-step answer calls (None: ``temperature``); greedy by
            default: diversity comes from the questions, an answer should stay with its chunk (with the 135M
            teacher on 60 chunks: 7 pairs kept at 0.0, 6 at 0.3, 2 at 0.7, groundedness making the difference).
        judge: run the LLM judge.
        judge_max_tokens: tokens a verdict may take.
        min_groundedness: share of the answer's content words that must occur in its chunk.
        dedup_threshold: rapidfuzz ``token_sort_ratio`` (0-100) from which two questions are near-duplicates.
        lengths: accepted question and answer sizes.
    """

    pairs_per_chunk: int = 3
    strategy: str = "two-step"
    seed: int = 0
    sizes: ChunkSizes = ChunkSizes()
    max_chunks: int | None = None
    temperature: float = 0.7
    answer_temperature: float | None = 0.0
    max_tokens: int = 400
    judge: bool = True
    judge_max_tokens: int = 8
    min_groundedness: float = 0.5
    dedup_threshold: float = 90.0
    lengths: LengthBounds = LengthBounds()

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.pairs_per_chunk < 1:
            raise ValueError(f"pairs_per_chunk must be >= 1, got {self.pairs_per_chunk}")
        if self.max_chunks is not None and self.max_chunks < 1:
            raise ValueError(f"max_chunks must be >= 1, got {self.max_chunks}")
        if not 0 <= self.min_groundedness <= 1:
            raise ValueError(f"min_groundedness must be in [0, 1], got {self.min_groundedness}")


@dataclass
class FilterCount:
    """What one filter saw: ``in_`` items, ``kept``, and the reasons of those dropped (reason -> count)."""

    name: str
    unit: str = "pairs"
    in_: int = 0
    kept: int = 0
    reasons: Counter = field(default_factory=Counter)
    rewritten: int = 0

    @property
    def dropped(self) -> int:
        return self.in_ - self.kept

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "unit": self.unit, "in": self.in_, "kept": self.kept, "dropped": self.dropped,
               "reasons": dict(self.reasons.most_common())}  # fmt: skip
        if self.name == "source_mention":
            out["rewritten"] = self.rewritten
        return out


@dataclass
class _Candidate:
    id: str
    chunk: Chunk
    variant: str
    question: str
    answer: str
    rewritten: bool = False


@dataclass
class SynthResult:
    """Where :func:`synthesize` wrote its files, and the summary it wrote."""

    out: Path
    rejected: Path
    summary_path: Path
    summary: dict[str, Any]


def side_files(out: str | Path) -> tuple[Path, Path]:
    """``(<out stem>.rejected.jsonl, <out stem>.summary.json)`` next to ``out``."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.rejected.jsonl"), out.with_name(f"{stem}.summary.json")


def _take(chunks: list[Chunk], limit: int | None) -> list[Chunk]:
    """At most ``limit`` chunks, round-robin over files, in their original order."""
    if limit is None or limit >= len(chunks):
        return chunks
    by_file: dict[str, list[int]] = {}
    for i, c in enumerate(chunks):
        by_file.setdefault(c.file, []).append(i)
    picked: list[int] = []
    queues = list(by_file.values())
    while len(picked) < limit:
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
    return [chunks[i] for i in sorted(picked)]


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _record(c: _Candidate, teacher: str) -> dict[str, Any]:
    ch = c.chunk
    return {"id": c.id, "question": c.question, "answer": c.answer, "chunk_id": ch.id, "chunk": ch.text,
            "source": {"file": ch.file, "section": ch.section, "trail": list(ch.trail), "line": ch.line,
                       "span": [ch.start, ch.end], "variant": c.variant, "teacher": teacher, "rewritten": c.rewritten}}  # fmt: skip


def synthesize(guides: Sequence[str | Path], teacher: Teacher, out: str | Path, options: SynthOptions = SynthOptions(),
               progress: bool = True) -> SynthResult:  # fmt: skip
    """Build filtered Q&A pairs from guides with a teacher and write them with their rejects and summary.

    Args:
        guides: guide files and/or folders (searched recursively, see
            :func:`~gamesense.tasks.guide_qa.ingest.find_guides`).
        teacher: the generating (and judging, rewriting) model.
        out: the JSONL to write; the rejects and summary go next to it (:func:`side_files`).
        options: see :class:`SynthOptions`.
        progress: show progress bars for the teacher calls.

    Raises:
        FileNotFoundError, ValueError: missing guides, unsupported or unreadable files, ``out`` that is a guide.
        TeacherError: every generation call failed (server down, wrong model or key): nothing is written.
    """
    started = time.perf_counter()
    out = Path(out)
    rejected_path, summary_path = side_files(out)
    files = find_guides(guides)
    for file in files:
        if any(same_file(p, file) for p in (out, rejected_path, summary_path)):
            raise ValueError(f"--out {out} would overwrite the guide {file}: choose another path")
    documents = [load_guide(f) for f in files]
    chunks = _take(chunk_documents(documents, options.sizes, options.seed), options.max_chunks)
    ingest_s = time.perf_counter() - started
    stats_before = teacher.stats.as_dict()
    counts = {name: FilterCount(name) for name in FILTERS}
    counts["teacher"].unit = "chunks"
    rejects: list[dict[str, Any]] = []

    def reject(stage: str, reason: str, category: str | None = None, c: _Candidate | None = None, **extra: Any) -> None:
        counts[stage].reasons[category or reason] += 1
        row = {"filter": stage, "reason": reason}
        if c is not None:
            row.update(id=c.id, chunk_id=c.chunk.id, question=c.question, answer=c.answer, variant=c.variant)
        row.update(extra)
        rejects.append(row)

    # 1-2: generation and parsing (two-step: questions per chunk, then one answer call per question)
    variants = [pick_variant(options.seed, c.id) for c in chunks]
    two_step = options.strategy == "two-step"
    make = question_messages if two_step else generation_messages
    # a question is < 50 tokens, an answer of 2-4 sentences < 200: caps keep a rambling teacher cheap
    first_cap = min(options.max_tokens, QUESTION_TOKENS * options.pairs_per_chunk) if two_step else options.max_tokens
    requests = [Request(make(c, v, options.pairs_per_chunk), options.temperature, first_cap)
                for c, v in zip(chunks, variants)]  # fmt: skip
    results = teacher.complete_many(requests, progress=("questions" if two_step else "generate") if progress else False)
    if chunks and not any(r.ok for r in results):
        raise TeacherError(f"no answer from the teacher {teacher.name}: {results[0].error}")
    candidates: list[_Candidate] = []
    counts["teacher"].in_ = len(chunks)
    for chunk, variant, result in zip(chunks, variants, results):
        if not result.ok:
            reject("teacher", result.error or "", "call failed", chunk_id=chunk.id)
            continue
        counts["teacher"].kept += 1
        if two_step:
            questions, malformed = parse_questions(result.text, options.pairs_per_chunk)
            pairs = [Pair(q, "") for q in questions]
        else:
            pairs, malformed = parse_pairs(result.text, options.pairs_per_chunk)
        counts["parse"].in_ += len(pairs) + len(malformed)
        for bad in malformed:
            reject("parse", bad.reason, chunk_id=chunk.id, variant=variant, text=bad.text)
        for k, pair in enumerate(pairs, start=1):
            candidates.append(_Candidate(f"{chunk.id}-q{k}", chunk, variant, pair.question, pair.answer))
    if two_step and candidates:
        answer_temperature = options.temperature if options.answer_temperature is None else options.answer_temperature
        answers = teacher.complete_many([Request(answer_messages(c.chunk, c.variant, c.question), answer_temperature,
                                                 min(options.max_tokens, ANSWER_TOKENS)) for c in candidates],  # fmt: skip
                                        progress="answers" if progress else False)
        answered = []
        for c, result in zip(candidates, answers):
            c.answer = parse_answer(result.text) if result.ok else ""
            if not result.ok:
                reject("parse", f"answer call failed: {result.error}", "answer call failed", c)
            elif not c.answer:
                reject("parse", "empty answer", c=c)
            elif result.finish_reason == "length":  # cut mid-sentence: would teach answers that never end
                reject("parse", f"answer cut at {min(options.max_tokens, ANSWER_TOKENS)} tokens", "answer cut at max_tokens", c)
            else:
                answered.append(c)
        candidates = answered
    counts["parse"].kept = len(candidates)

    # 3: length
    def passes_length(c: _Candidate) -> bool:
        problem = length_problem(c.question, c.answer, options.lengths)
        if problem:
            reject("length", problem, problem.split(" (")[0], c)
        return problem is None

    counts["length"].in_ = len(candidates)
    candidates = [c for c in candidates if passes_length(c)]
    counts["length"].kept = len(candidates)

    # 4: mentions of the source -> rewrite by the teacher, checked again
    counts["source_mention"].in_ = len(candidates)
    mentioning = [c for c in candidates if source_mention(f"{c.question} {c.answer}")]
    if mentioning:
        rewrites = teacher.complete_many([Request(rewrite_messages(c.question, c.answer), options.temperature,
                                                  options.max_tokens) for c in mentioning],  # fmt: skip
                                         progress="rewrite" if progress else False)
        failed = set()
        for c, result in zip(mentioning, rewrites):
            phrase = source_mention(f"{c.question} {c.answer}")
            if not result.ok:
                reject("source_mention", f"mentions {phrase!r}; rewrite call failed: {result.error}", "rewrite call failed", c)
                failed.add(c.id)
                continue
            pairs, malformed = parse_pairs(result.text, 1)
            new = pairs[0] if pairs else None
            problem = (f"rewrite malformed: {malformed[0].reason}" if new is None
                       else length_problem(new.question, new.answer, options.lengths))  # fmt: skip
            if problem is None and source_mention(f"{new.question} {new.answer}"):
                problem = f"rewrite still mentions {source_mention(f'{new.question} {new.answer}')!r}"
            if problem:
                category = ("rewrite still mentions the source" if problem.startswith("rewrite still") else
                            "rewrite malformed" if new is None else "rewrite length")  # fmt: skip
                reject("source_mention", f"mentions {phrase!r}; {problem}", category, c,
                       rewrite=result.text[:1000])  # fmt: skip
                failed.add(c.id)
                continue
            c.question, c.answer, c.rewritten = new.question, new.answer, True
            counts["source_mention"].rewritten += 1
        candidates = [c for c in candidates if c.id not in failed]
    counts["source_mention"].kept = len(candidates)

    # 5: groundedness
    def grounded(c: _Candidate) -> bool:
        problem = groundedness_problem(c.answer, c.chunk.text, options.min_groundedness)
        if problem:
            reject("groundedness", problem, "no content words" if "no content" in problem else "below threshold", c)
        return problem is None

    counts["groundedness"].in_ = len(candidates)
    candidates = [c for c in candidates if grounded(c)]
    counts["groundedness"].kept = len(candidates)

    # 6: LLM judge
    counts["judge"].in_ = len(candidates)
    if options.judge and candidates:
        verdicts = teacher.complete_many([Request(judge_messages(c.chunk, c.question, c.answer), 0.0,
                                                  options.judge_max_tokens) for c in candidates],  # fmt: skip
                                         progress="judge" if progress else False)
        passed = []
        for c, result in zip(candidates, verdicts):
            if not result.ok:
                reject("judge", f"judge call failed: {result.error}", "judge call failed", c)
                continue
            verdict = parse_verdict(result.text)
            if verdict is None:
                reject("judge", f"unparseable verdict: {result.text[:200]!r}", "unparseable verdict", c)
            elif not verdict:
                reject("judge", "FAIL: names or facts from outside the game", "FAIL", c, verdict=result.text[:200])
            else:
                passed.append(c)
        candidates = passed
    counts["judge"].kept = len(candidates)

    # 7: near-duplicates (the first one is kept)
    dedup = NearDuplicates(options.dedup_threshold)
    counts["near_duplicate"].in_ = len(candidates)
    kept: list[_Candidate] = []
    for c in candidates:
        dup = dedup.duplicate_of(c.question)
        if dup:
            reject("near_duplicate", f"near-duplicate of {dup[0]} (score {dup[1]:.0f})", "near-duplicate", c)
            continue
        dedup.add(c.id, c.question)
        kept.append(c)
    counts["near_duplicate"].kept = len(kept)

    stats_after = teacher.stats.as_dict()
    sizes = [len(c.text) for c in chunks]
    generated = counts["parse"].in_
    summary = {
        "teacher": teacher.name,
        "seed": options.seed,
        "guides": [{"file": d.path, "format": d.format, "sections": len(d.sections), "chars": len(d.text),
                    "chunks": sum(c.file == d.path for c in chunks)} for d in documents],  # fmt: skip
        "chunks": len(chunks),
        "chunk_chars": {"mean": round(statistics.fmean(sizes), 1) if sizes else 0,
                        "sd": round(statistics.pstdev(sizes), 1) if sizes else 0,
                        "min": min(sizes, default=0), "max": max(sizes, default=0)},  # fmt: skip
        "pairs_generated": generated,
        "kept": len(kept),
        "yield": round(len(kept) / generated, 4) if generated else 0.0,
        "filters": [counts[name].as_dict() for name in FILTERS],
        "teacher_calls": {k: stats_after[k] - stats_before[k] for k in stats_after},
        "wall_time_s": round(time.perf_counter() - started, 2),
        "ingest_s": round(ingest_s, 3),
        "options": {**asdict(options), "judge": options.judge},
        "files": {"out": str(out), "rejected": str(rejected_path), "summary": str(summary_path)},
    }
    write_text_atomic(out, _jsonl(_record(c, teacher.name) for c in kept))
    write_text_atomic(rejected_path, _jsonl(rejects))
    write_text_atomic(summary_path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return SynthResult(out, rejected_path, summary_path, summary)
