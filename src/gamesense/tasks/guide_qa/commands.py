"""``gamesense synth qa``: self-instruct question-answer pairs from game guides with any OpenAI-compatible teacher.

The command function :func:`synth_qa` is what the guide Q&A task returns from ``Task.synth_commands`` (as
``{"qa": synth_qa}``); the CLI mounts it as ``gamesense synth qa``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

DEFAULT_TEACHER_URL = "http://127.0.0.1:8000/v1"
DEFAULT_TEACHER_MODEL = "base"


def summary_table(summary: dict[str, Any]):
    """A rich table of a run summary: one row per filter (in, kept, dropped, top reasons)."""
    from rich.table import Table

    table = Table(title=f"synth qa: {summary['chunks']} chunks -> {summary['pairs_generated']} pairs generated -> "
                        f"{summary['kept']} kept ({summary['yield']:.1%}), teacher {summary['teacher']}")  # fmt: skip
    for col in ("filter", "in", "kept", "dropped", "reasons"):
        table.add_column(col, justify="left" if col in ("filter", "reasons") else "right")
    for f in summary["filters"]:
        reasons = ", ".join(f"{reason} {n}" for reason, n in list(f["reasons"].items())[:4])
        if f.get("rewritten"):
            reasons = f"rewritten {f['rewritten']}" + (f"; {reasons}" if reasons else "")
        name = f["name"] + (" (chunks)" if f["unit"] == "chunks" else "")
        if f["name"] == "judge" and not summary["options"]["judge"]:
            name += " (off)"
        table.add_row(name, str(f["in"]), str(f["kept"]), str(f["dropped"]), reasons)
    return table


def synth_qa(
    guides: list[Path] = typer.Option(..., "--guides", "-g", help="guide file or folder (searched recursively for "
                                      ".md .markdown .rst .txt; LICENSE/README skipped); repeatable"),  # fmt: skip
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="JSONL of kept pairs (default: <workdir>/qa.jsonl, "
                                       "the guide-qa recipe's train_file); <name>.rejected.jsonl and "
                                       "<name>.summary.json are written next to it"),  # fmt: skip
    teacher_url: str = typer.Option(DEFAULT_TEACHER_URL, help="OpenAI-compatible API root (OpenAI, vLLM, llama.cpp, "
                                    "Ollama, `gamesense serve llm`); the key comes from OPENAI_API_KEY"),  # fmt: skip
    teacher_model: str = typer.Option(DEFAULT_TEACHER_MODEL, help="model name the teacher server knows"),
    pairs_per_chunk: int = typer.Option(3, min=1, max=20, help="question-answer pairs asked for per chunk"),
    strategy: str = typer.Option("two-step", help="two-step: ask for questions per chunk, then answer each in its own "
                                 "call (small teachers follow it); pairs: one call writes whole Q:/A: pairs (fewer "
                                 "calls, for strong teachers)"),  # fmt: skip
    seed: int = typer.Option(0, help="seeds chunk sizes and prompt variants"),
    concurrency: int = typer.Option(8, min=1, max=256, help="teacher requests in flight at once"),
    max_chunks: Optional[int] = typer.Option(None, min=1, help="use at most N chunks in all, round-robin over the "
                                             "guides (quick runs)"),  # fmt: skip
    judge: bool = typer.Option(True, "--judge/--no-judge", help="LLM judge pass/fail for names and facts from outside the game"),
    temperature: float = typer.Option(0.7, min=0.0, max=2.0, help="sampling temperature of generation (questions or "
                                      "pairs) and rewrites"),  # fmt: skip
    answer_temperature: float = typer.Option(0.0, min=0.0, max=2.0, help="temperature of the two-step answer calls "
                                             "(greedy: an answer should stay with its chunk; questions bring the "
                                             "diversity)"),  # fmt: skip
    max_tokens: int = typer.Option(400, min=16, help="tokens per generation (two-step: at most 50 per question asked "
                                   "and 200 per answer)"),  # fmt: skip
    min_groundedness: float = typer.Option(0.5, min=0.0, max=1.0, help="share of the answer's content words that "
                                           "must occur in its chunk"),  # fmt: skip
    dedup_threshold: float = typer.Option(90.0, min=1.0, max=100.0, help="rapidfuzz token_sort_ratio from which two "
                                          "questions are near-duplicates"),  # fmt: skip
    chunk_mean: float = typer.Option(1200, min=1, help="mean chunk size (characters)"),
    chunk_sd: float = typer.Option(400, min=0, help="standard deviation of chunk sizes (characters)"),
    chunk_min: int = typer.Option(400, min=1, help="smallest chunk size drawn (characters)"),
    chunk_max: int = typer.Option(2400, min=1, help="largest chunk size drawn (characters)"),
    cache_dir: Optional[Path] = typer.Option(None, help="teacher answer cache (default: <workdir>/teacher-cache)"),
    max_retries: int = typer.Option(5, min=0, help="retries per teacher request (exponential backoff)"),
    timeout_s: float = typer.Option(120.0, min=1.0, help="seconds one teacher request may take"),
) -> None:
    """Chunk game guides, ask a teacher model for question-answer pairs per chunk (prompt variants seeded per
    chunk), filter them (parse, length, mentions of the guide rewritten, groundedness, LLM judge, near-duplicates)
    and write the kept pairs with their provenance, the rejects and a summary. Teacher answers are cached on disk,
    so a repeated or interrupted run asks nothing twice. Exit 3 when some teacher calls failed (what they did not
    produce is missing: run again)."""
    from rich.console import Console

    from gamesense.tasks.guide_qa.chunking import ChunkSizes
    from gamesense.tasks.guide_qa.synth import SynthOptions, synthesize
    from gamesense.settings import work_dir
    from gamesense.teacher import Teacher, TeacherError

    out = out or work_dir() / "qa.jsonl"

    sizes = ChunkSizes(chunk_mean, chunk_sd, chunk_min, chunk_max)  # ValueError -> one line from the CLI
    options = SynthOptions(pairs_per_chunk=pairs_per_chunk, strategy=strategy, seed=seed, sizes=sizes,
                           max_chunks=max_chunks, temperature=temperature, answer_temperature=answer_temperature,
                           max_tokens=max_tokens, judge=judge, min_groundedness=min_groundedness,
                           dedup_threshold=dedup_threshold)  # fmt: skip
    teacher = Teacher(teacher_url, teacher_model, concurrency=concurrency, max_retries=max_retries, timeout_s=timeout_s,
                      cache_dir=cache_dir)  # fmt: skip
    try:
        with teacher:
            result = synthesize(guides, teacher, out, options)
    except TeacherError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None
    summary = result.summary
    console = Console()
    console.print(summary_table(summary))
    calls = summary["teacher_calls"]
    console.print(f"teacher calls: {calls['calls']} answered, {calls['errors']} failed, {calls['cache_hits']} from the "
                  f"cache; wall time {summary['wall_time_s']:.1f} s")  # fmt: skip
    console.print(f"wrote {summary['kept']} pairs to {result.out}\nrejects: {result.rejected}\nsummary: {result.summary_path}")
    if calls["errors"]:  # the pairs written are good, but the set is incomplete: a job must not take it as done
        typer.secho(f"error: {calls['errors']} teacher calls failed (reasons in the rejects file); run the same "
                    "command again to ask only those (answers are cached)", fg="red", err=True)  # fmt: skip
        raise typer.Exit(3)
