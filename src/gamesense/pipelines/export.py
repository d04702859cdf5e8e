"""Export one model for a game's runtime and check it: merge the adapter, write the Hugging Face folder and/or
GGUF files (with an Ollama Modelfile each), score every exported form on the task's evaluation rows beside the
adapter (the parity check), and log the exports on the registry version they came from."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gamesense.config import GenerationSection
from gamesense.evaluation.export_parity import LlamaCppCrashed, ParityRow, evaluate_llama_cpp, parity_markdown, size_on_disk
from gamesense.evaluation.runner import evaluate_model
from gamesense.models import export as ex
from gamesense.models.hardware import release_memory
from gamesense.models.refs import load_for_inference
from gamesense.registry.refs import is_registry_ref, parse_model_ref
from gamesense.settings import write_text_atomic
from gamesense.tasks.base import Record, Task

log = logging.getLogger(__name__)
FORMATS = ("merged", "gguf")


@dataclass
class ExportReport:
    """What one export wrote, measured and logged.

    Attributes:
        files: export kind (``merged``, ``gguf-<quant>``) -> folder or file written.
        modelfiles: GGUF kind -> its Ollama Modelfile.
        export_seconds: wall time of merging and writing (parity excluded).
        parity: one row per form scored (adapter first), empty without evaluation rows.
        parity_metrics: the metrics shown in the parity table (the task's gate metric first).
        parity_file: the parity table in Markdown (None without a parity check).
        logged: export kind -> MLflow artifact URI, for a registry reference.
    """

    files: dict[str, Path] = field(default_factory=dict)
    modelfiles: dict[str, Path] = field(default_factory=dict)
    export_seconds: float = 0.0
    parity: list[ParityRow] = field(default_factory=list)
    parity_metrics: tuple[str, ...] = ()
    parity_file: Path | None = None
    logged: dict[str, str] = field(default_factory=dict)


def check_export_options(formats: Sequence[str], quants: Sequence[str]) -> None:
    """Refuse unknown formats or quantizations, and k-quants without llama.cpp, before any work.

    Raises:
        ExportError: the first bad option, naming what is accepted.
    """
    for fmt in formats:
        if fmt not in FORMATS:
            raise ex.ExportError(f"--format {fmt!r}: choose merged or gguf")
    if "gguf" in formats:
        for quant in quants:
            ex.check_quant(quant)


def export_name(ref: str) -> str:
    """File-name stem for a reference: ``gamesense-viggo-v3`` for a registry reference (its version number),
    else the adapter or model folder's name."""
    if is_registry_ref(ref):
        from gamesense.registry.mlflow_store import resolve_version

        version = resolve_version(parse_model_ref(ref))
        return f"{version.name}-v{version.version}"
    return Path(ref.rstrip("/")).name or "model"


def run_export(ref: str, task: Task, formats: Sequence[str], quants: Sequence[str], out_dir: str | Path,
               generation: GenerationSection, records: Sequence[Record] | None = None, check: bool = True,
               log_to_registry: bool = True, progress: bool = True) -> ExportReport:  # fmt: skip
    """Export ``ref`` (registry reference, adapter directory or checkpoint, or base model) and check parity.

    Writes under ``out_dir``: ``merged/`` (Hugging Face folder), ``<name>-<quant>.gguf`` with
    ``<name>-<quant>.Modelfile`` for each quantization, and ``parity.md`` / ``parity.json``. Without ``records``
    a task evaluated only on records gets no parity rows; a task with rollouts (Snake) plays its games. ``check``
    False: no parity check at all.

    Raises:
        ExportError: unsupported format, quantization, architecture or tokenizer (nothing is written).
        FileNotFoundError / LookupError / ValueError: a reference that names no model.
    """
    check_export_options(formats, quants)
    out = Path(out_dir)
    report = ExportReport()
    started = time.perf_counter()
    name = export_name(ref)
    merged = ex.merge_model(ref, for_gguf="gguf" in formats)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=out))  # the merged folder when only GGUF is asked for
    try:
        _write_exports(ref, merged, task, formats, quants, out, scratch, name, generation, report, progress)
        report.export_seconds = time.perf_counter() - started
        log.info("exported %s in %.1f s: %s", ref, report.export_seconds, ", ".join(map(str, report.files.values())))
        if check and (records is not None or "rollout" in task.evaluation):
            report.parity_metrics = _parity_metrics(task)
            report.parity = check_parity(ref, report.files, task, records, generation, out / "parity", progress)
            report.parity_file = out / "parity.md"
            write_text_atomic(report.parity_file, parity_markdown(report.parity, report.parity_metrics))
            write_text_atomic(out / "parity.json", json.dumps([row.__dict__ for row in report.parity], indent=2) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if log_to_registry and is_registry_ref(ref):
        report.logged = _log_exports(ref, report, task.gate_metric)
    return report


def _write_exports(ref: str, merged: ex.MergedModel, task: Task, formats: Sequence[str], quants: Sequence[str], out: Path,
                   scratch: Path, name: str, generation: GenerationSection, report: ExportReport, progress: bool) -> None:  # fmt: skip
    """Write the merged folder (kept under ``out`` only when asked for), then each GGUF file and its Modelfile,
    filling ``report.files`` and ``report.modelfiles``."""
    messages = task.prompt("...")
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    manifest = {"source": ref, "base": merged.base, "task": task.name,
                "system_prompt": system, "stop_strings": list(task.stop_strings),
                "max_new_tokens": generation.max_new_tokens}  # fmt: skip
    merged_dir = ex.write_merged(merged, out / "merged" if "merged" in formats else scratch / "merged", manifest)
    chat_template = merged.tokenizer.chat_template
    context = getattr(merged.model.config, "max_position_embeddings", None)
    del merged  # the GGUF writer reads the folder tensor by tensor
    release_memory()
    if "merged" in formats:
        report.files["merged"] = merged_dir
    if "gguf" not in formats:
        return
    f16_source = None
    for quant in quants:
        target = out / f"{name}-{quant}.gguf"
        if quant in ex.LLAMA_CPP_QUANTS:  # llama.cpp quantizes from the f16 file
            f16_source = f16_source or report.files.get("gguf-f16") or ex.write_gguf(merged_dir, scratch / "f16.gguf", "f16", name)
            ex.quantize_with_llama_cpp(f16_source, target, quant)
        else:
            ex.write_gguf(merged_dir, target, quant, name=name, progress=progress)
        report.files[f"gguf-{quant}"] = target
        modelfile = target.with_suffix(".Modelfile")
        write_text_atomic(modelfile, ex.ollama_modelfile(target.name, chat_template, system, task.stop_strings,
                                                         generation.max_new_tokens, context))  # fmt: skip
        report.modelfiles[f"gguf-{quant}"] = modelfile


def _parity_metrics(task: Task) -> tuple[str, ...]:
    """The gate metric first, then the task's next headline metric."""
    rest = [m for m in task.metric_order if m != task.gate_metric]
    return (task.gate_metric, *rest[:1])


def check_parity(ref: str, files: dict[str, Path], task: Task, records: Sequence[Record] | None,
                 generation: GenerationSection, out_dir: Path, progress: bool = True) -> list[ParityRow]:  # fmt: skip
    """Score the adapter (``ref`` merged in memory, as the LLM server runs it) and every exported form on the
    same rows: the merged folder and each GGUF through transformers, each GGUF also through llama.cpp's runtime
    where it is installed (static evaluations only). Every model is decoded in the same dtype, so differences
    come from the exported weights. Predictions go to ``out_dir/<label>/``."""
    use_llama_cpp = ex.llama_cpp_available() and records is not None and "static" in task.evaluation
    forms = [("adapter", "peft", ref, None)]
    for kind, path in files.items():
        forms.append((kind.replace("-", " "), "transformers", str(path), size_on_disk(path)))
        if kind.startswith("gguf") and use_llama_cpp:
            forms.append((kind.replace("-", " "), "llama.cpp", str(path), size_on_disk(path)))
    rows = []
    for label, reader, path, size in forms:
        slug = f"{label}-{reader}".replace(" ", "-").replace(".", "")
        if reader == "llama.cpp":
            try:
                result = evaluate_llama_cpp(path, task, records, out_dir / slug / "predictions.jsonl", generation, progress)
            except LlamaCppCrashed as err:
                log.error("%s", err)
                rows.append(ParityRow(label=label, reader=reader, size_bytes=size, error=str(err)))
                continue
        else:
            model = load_for_inference(path)
            result = evaluate_model(model, task, records, out_dir / slug, generation, label=f"{label} ({reader})",
                                    progress=progress)  # fmt: skip
            del model
            release_memory()
        rows.append(ParityRow(label=label, reader=reader, size_bytes=size, metrics=result.metrics))
    return rows


def _log_exports(ref: str, report: ExportReport, gate_metric: str) -> dict[str, str]:
    """Log every export (and its Modelfile, and the parity table) on the registry version ``ref`` names."""
    from gamesense.registry.mlflow_store import log_export, resolve_version

    version = resolve_version(parse_model_ref(ref))
    scores = {}
    for row in report.parity:  # llama.cpp's score where both readers ran: it is how the game will run the file
        if gate_metric in row.metrics:
            scores[row.label.replace(" ", "-")] = {gate_metric: row.metrics[gate_metric]}
    logged = {}
    for kind, path in report.files.items():
        beside = tuple(p for p in (report.modelfiles.get(kind), report.parity_file) if p is not None)
        logged[kind] = log_export(version, path, kind, scores.get(kind), beside)
    return logged
