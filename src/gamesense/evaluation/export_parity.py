"""Parity of exported models with the model they came from: the task's own metrics on the same evaluation rows,
side by side, for the adapter, the merged folder and each GGUF file, each read back by a reader that did not
write it (transformers' loaders; llama.cpp's runtime for GGUF files where llama-cpp-python is installed)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gamesense.config import GenerationSection
from gamesense.evaluation.generation import GenerationResult
from gamesense.evaluation.runner import EvalResult, score_generations
from gamesense.tasks.base import Record, Task


@dataclass
class ParityRow:
    """One exported form of the model, scored.

    Attributes:
        label: what was scored, e.g. ``adapter``, ``merged``, ``gguf q8_0``.
        reader: what read it back: ``peft`` (the adapter on its base), ``transformers``, ``llama.cpp``.
        size_bytes: the file or folder's size on disk (None for the adapter, which needs its base).
        metrics: the task's metrics, with ``gen_tokens_per_s`` for static evaluations.
        error: why the reader gave no metrics (e.g. llama.cpp crashed), else None.
    """

    label: str
    reader: str
    size_bytes: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def llama_cpp_generate(gguf_file: str | Path, prompts: list[list[dict]], settings: GenerationSection,
                       stop_strings: Sequence[str] = (), threads: int | None = None, progress: bool = True,
                       desc: str = "llama.cpp") -> GenerationResult:  # fmt: skip
    """Greedy-decode chat prompts one at a time with llama.cpp's runtime (llama-cpp-python), the prompt built from
    the chat template stored in the GGUF file, as llama.cpp and Ollama build it. The KV cache of the longest
    common prefix with the previous prompt (the system prompt) is reused.

    Returns:
        texts in prompt order, cut at the first stop string; tokens counted as llama.cpp reports them.

    Raises:
        ImportError: llama-cpp-python is not installed.
    """
    from llama_cpp import Llama
    from tqdm.auto import tqdm

    from gamesense.models.hardware import usable_cores

    llm = Llama(model_path=str(gguf_file), n_ctx=2048, n_threads=threads or usable_cores(), verbose=False)
    texts, generated = [], 0
    started = time.perf_counter()
    for messages in tqdm(prompts, desc=desc, unit="ex", disable=not progress):
        reply = llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, max_tokens=settings.max_new_tokens,
                                           stop=list(stop_strings) or None, repeat_penalty=settings.repetition_penalty)  # fmt: skip
        texts.append(reply["choices"][0]["message"]["content"] or "")
        generated += reply["usage"]["completion_tokens"]
    return GenerationResult(texts=texts, generated_tokens=generated, seconds=time.perf_counter() - started)


def evaluate_llama_cpp(gguf_file: str | Path, task: Task, records: Sequence[Record], predictions_path: str | Path,
                       generation: GenerationSection, progress: bool = True) -> EvalResult:  # fmt: skip
    """A GGUF file scored on ``records`` by llama.cpp's runtime (static evaluation only).

    Raises:
        ValueError: no records. ImportError: llama-cpp-python is not installed.
    """
    if not records:
        raise ValueError("no evaluation examples: check the evaluation file")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # in a child process: a llama.cpp build that crashes on this CPU (SIGILL) must not take the export with it
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        job = pool.submit(llama_cpp_generate, gguf_file, [r["prompt"] for r in records], generation, task.stop_strings,
                          progress=progress, desc=f"llama.cpp {Path(gguf_file).name}")  # fmt: skip
        try:
            result = job.result()
        except BrokenProcessPool:
            raise LlamaCppCrashed(f"llama.cpp crashed running {Path(gguf_file).name} (a build for another CPU? "
                                  "reinstall llama-cpp-python from source on this machine)") from None
    return score_generations(task, records, result, predictions_path)


class LlamaCppCrashed(RuntimeError):
    """llama.cpp's runtime died in its process (e.g. an illegal instruction)."""


def size_on_disk(path: str | Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


#: largest gate-metric loss (points, x100) an exported form may show against the adapter: float rounding for
#: full-precision forms, a little more for 8-bit; other quantizations report their loss without a bound
PARITY_BOUNDS = {"merged": 0.5, "gguf f32": 0.5, "gguf f16": 0.5, "gguf bf16": 0.5, "gguf q8_0": 1.0}


def parity_failures(rows: Sequence[ParityRow], gate_metric: str, higher_is_better: bool = True,
                    reference: str = "adapter") -> list[str]:  # fmt: skip
    """One line per exported form that loses more than its :data:`PARITY_BOUNDS` against the ``reference`` row.

    >>> rows = [ParityRow("adapter", "peft", None, {"em": 0.870}), ParityRow("gguf q8_0", "llama.cpp", 1, {"em": 0.855})]
    >>> parity_failures(rows, "em")
    ['gguf q8_0 (llama.cpp): 1.50 points below the adapter (bound 1.0)']
    """
    base = next((r.metrics.get(gate_metric) for r in rows if r.label == reference), None)
    failures = []
    for row in rows:
        value, bound = row.metrics.get(gate_metric), PARITY_BOUNDS.get(row.label)
        if base is None or value is None or bound is None:
            continue
        loss = 100 * ((base - value) if higher_is_better else (value - base))
        if loss > bound:
            failures.append(f"{row.label} ({row.reader}): {loss:.2f} points below the {reference} (bound {bound})")
    return failures


def _parity_cells(rows: Sequence[ParityRow], metrics: Sequence[str], reference: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the parity table (see :func:`parity_table`)."""
    header = ["model", "reader", "MB", *metrics, "Δ points", "tokens/s"]
    base = next((r.metrics.get(metrics[0]) for r in rows if r.label == reference), None)
    cells = []
    for row in rows:
        value, speed = row.metrics.get(metrics[0]), row.metrics.get("gen_tokens_per_s")
        cells.append([row.label, row.reader, "-" if row.size_bytes is None else f"{row.size_bytes / 1e6:,.1f}",
                      *("-" if row.metrics.get(m) is None else f"{row.metrics[m]:.4f}" for m in metrics),
                      "-" if base is None or value is None else f"{100 * (value - base):+.2f}",
                      "-" if speed is None else f"{speed:,.0f}"])  # fmt: skip
    return header, cells


def parity_table(rows: Sequence[ParityRow], metrics: Sequence[str], reference: str = "adapter", title: str = "parity"):
    """A rich ``Table``: one row per exported form; its size (MB), each of ``metrics``, the first metric's
    difference in points (x100) from the ``reference`` row (``Δ points``), and generation tokens/s."""
    from rich.table import Table

    header, cells = _parity_cells(rows, metrics, reference)
    table = Table(title=title)
    for name in header:
        table.add_column(name, justify="left" if name in ("model", "reader") else "right")
    for row in cells:
        table.add_row(*row)
    return table


def parity_markdown(rows: Sequence[ParityRow], metrics: Sequence[str], reference: str = "adapter") -> str:
    """The table of :func:`parity_table` in Markdown (for the README and the MLflow run)."""
    header, cells = _parity_cells(rows, metrics, reference)
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"
