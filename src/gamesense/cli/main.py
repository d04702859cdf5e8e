"""Root of the ``gamesense`` CLI: the LLM commands (task-generic), task groups mounted from their modules.

Heavy libraries (torch, transformers, mlflow) are imported inside commands so ``--help`` stays instant.
Every LLM command works for any task: the task comes from the recipe (``--recipe``, default
``recipes/default.yaml``) or, for a registered model, from the version's ``task`` tag.
"""

from __future__ import annotations

from typing import Optional

import typer

from gamesense.cli import engagement as engagement_cli
from gamesense.cli import serve as serve_cli
from gamesense.cli import synth as synth_cli
from gamesense.cli.common import fail, install_error_boundary, load_recipe_or_exit, set_debug, show_progress_logs
from gamesense.registry.refs import CHAMPION

app = typer.Typer(
    help="GameSense: turn gaming data into production models (LLM adapters, tabular models) with "
    "MLflow tracking, a model registry with champion/challenger aliases, ZenML pipelines and drift monitoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="What the MLflow model registry holds; move the champion alias by hand.", no_args_is_help=True)
recipe_app = typer.Typer(help="Inspect recipes (recipes/*.yaml): every key, its value and its meaning.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(recipe_app, name="recipe")
app.add_typer(engagement_cli.app, name="engagement")
app.add_typer(serve_cli.app, name="serve")  # serve llm | serve engagement


@app.callback()
def _global_options(debug: bool = typer.Option(False, "--debug", help="show the traceback of an error instead of one line")) -> None:
    set_debug(debug)


class _TaskCommandHost:
    """What task-provided commands get from the CLI (:class:`gamesense.tasks.base.CommandHost`)."""

    def recipe_and_task(self, recipe, overrides):
        return _recipe_and_task(recipe, overrides)

    def load_policy(self, model, recipe, task):
        from gamesense.evaluation.policy import ModelPolicy

        return ModelPolicy(_load_model(model, recipe), model, recipe.generation, task.stop_strings)


def _mount_task_commands() -> None:
    """``gamesense <task> ...`` for every task that brings its own commands."""
    from gamesense.tasks import get_task_class, known_tasks

    for name in known_tasks():
        commands = get_task_class(name).commands(_TaskCommandHost())
        if commands is not None:
            app.add_typer(commands, name=name)


DEFAULT_RECIPE = "default"
RecipeOpt = typer.Option(None, "--recipe", "-r", help="recipe YAML file or a name under recipes/ (default: default.yaml, "
                         "or for a registered model the recipe of its task)")  # fmt: skip
SetOpt = typer.Option(None, "--set", "-s", help="override a recipe key, e.g. --set sft.max_steps=50 (repeatable)")


def _console():
    from rich.console import Console

    return Console()


def _recipe_and_task(recipe: str | None, overrides: list[str] | None, model: str | None = None):
    """Load the LLM recipe and its task; a bad recipe or task exits with code 2 and one line.

    Without ``--recipe``, a registry reference whose version carries a ``task`` tag selects
    ``recipes/<task>.yaml``; anything else uses the default recipe.
    """
    from gamesense.config import RecipeError
    from gamesense.tasks import get_task
    from gamesense.training.recipe import LLMRecipe

    if recipe is None and model:
        recipe = _task_of_registered(model)
    config = load_recipe_or_exit(recipe or DEFAULT_RECIPE, LLMRecipe, overrides)
    try:
        return config, get_task(config.task, config.task_options)
    except (LookupError, RecipeError) as err:
        fail(err)


def _task_of_registered(model: str) -> str | None:
    """``recipes/<task>.yaml`` (or with ``-`` for ``_``) for a registry reference whose version has a ``task`` tag,
    else None.

    Exits with code 2 when the version names a task that has no recipe of that name (pass --recipe).
    """
    from gamesense.config import RecipeError, resolve_recipe_path
    from gamesense.registry.mlflow_store import resolve_version, setup_tracking
    from gamesense.registry.refs import is_registry_ref, parse_model_ref

    if not is_registry_ref(model):
        return None
    setup_tracking()
    try:
        task = (resolve_version(parse_model_ref(model)).tags or {}).get("task")
    except (LookupError, ValueError):
        return None  # reported when the model is loaded
    if not task:
        return None
    for name in dict.fromkeys((task, task.replace("_", "-"))):  # recipes/guide-qa.yaml for task guide_qa
        try:
            return str(resolve_recipe_path(name))
        except RecipeError:
            pass
    fail(f"{model} is a {task!r} model and there is no recipes/{task}.yaml: pass --recipe")


def _load_model(model: str, config):
    """Load a model reference for generation (registry references use the recipe's tracking URI); a
    reference that cannot be loaded exits with code 2 and one line saying why."""
    from gamesense.models.refs import load_for_inference
    from gamesense.registry.mlflow_store import setup_tracking
    from gamesense.registry.refs import is_registry_ref

    if is_registry_ref(model):
        setup_tracking(config.registry.tracking_uri)
    try:
        return load_for_inference(model, dtype=config.model.dtype)
    except (ValueError, LookupError, OSError) as err:
        fail(err)


def _print_outcome(out, task, wall: float) -> None:
    from gamesense.evaluation.runner import metrics_table

    console = _console()
    run, data, trained, promo = out.run, out.run.data, out.trained, out.promotion
    columns = {"base": out.base_metrics, **{f"+{stage}": m for stage, m in trained.evaluations.items()},
               **task.reference_results(progress=False)}  # fmt: skip
    title = f"{task.name}: {data.counts['eval_rows']} rows of {data.eval_file}"
    console.print(metrics_table(columns, title=title, order=task.metric_order))
    for result in trained.results:
        m = result.metrics
        rate = f", {m['train_tokens_per_s']:.0f} tokens/s" if m.get("train_tokens") else ""
        extra = f", pairwise accuracy {m['pairwise_accuracy']:.4f}" if "pairwise_accuracy" in m else ""
        console.print(f"{result.stage}: {m['train_steps']:.0f} steps, loss {m['train_loss']:.4f}{rate}, "
                      f"{m['train_runtime_s'] / 60:.1f} min{extra}")  # fmt: skip
    if data.counts["train_skipped_rows"] or data.counts["eval_skipped_rows"]:
        console.print(f"set-aside rows: train {data.counts['train_skipped_rows']}, eval {data.counts['eval_skipped_rows']} "
                      "(see data/skipped_rows.json in the MLflow run)")  # fmt: skip
    console.print(f"registered [bold]{promo['model_name']}[/bold] version {promo['version']} -> "
                  f"[bold]{promo['alias']}[/bold]: {promo['reason']}")  # fmt: skip
    final = trained.latest("policy")
    console.print(f"adapter: {final.adapter_dir}\nrun: {run.run_dir} (MLflow run {run.run_id})\n"
                  f"try it: gamesense generate --model models:/{promo['model_name']}/{promo['version']} \"...\"\n"
                  f"wall time {wall / 60:.1f} min")  # fmt: skip


@app.command()
def finetune(
    recipe: Optional[str] = RecipeOpt,
    overrides: Optional[list[str]] = SetOpt,
    resume: bool = typer.Option(False, "--resume", help="continue the task's interrupted run: completed stages are "
                                "kept, the interrupted one resumes from its last checkpoint"),  # fmt: skip
    zenml: Optional[bool] = typer.Option(None, "--zenml/--no-zenml", help="run as a ZenML pipeline (default: recipe's zenml key)"),
) -> None:
    """Prepare data, evaluate the base model, train the recipe's stages (e.g. SFT, reward model, GRPO),
    evaluate each policy, register the final adapter in MLflow and promote it to champion only if it beats
    the base model and the current champion on the task's gate metric."""
    import time

    show_progress_logs()
    config, task = _recipe_and_task(recipe, overrides)
    use_zenml = config.zenml if zenml is None else zenml
    started = time.perf_counter()
    if use_zenml:
        from gamesense.pipelines.llm import run_zenml

        out = run_zenml(config, resume=resume, task=task)
    else:
        from gamesense.pipelines.llm_run import run_local

        out = run_local(config, resume=resume, task=task)
        if out is None:  # a non-main process of a multi-process (accelerate launch) run
            return
    _print_outcome(out, task, time.perf_counter() - started)


@app.command()
def evaluate(
    model: str = typer.Option(..., "--model", "-m", help="base id/path, adapter dir, or models:/NAME@ALIAS | models:/NAME/VERSION"),
    data: str = typer.Option(..., "--data", "-d", help="evaluation file in the task's format"),
    recipe: Optional[str] = RecipeOpt,
    overrides: Optional[list[str]] = SetOpt,
    output: Optional[str] = typer.Option(None, "--output", "-o", help="predictions JSONL (default: <workdir>/predictions/...)"),
    max_rows: Optional[int] = typer.Option(None, help="only the first N rows"),
) -> None:
    """Score any model on any evaluation file with the task's evaluations: prints the metrics table and
    generation throughput and writes one JSONL record per example (its columns, prediction, per-row scores)."""
    import re
    from pathlib import Path

    from gamesense.evaluation.runner import evaluate_model, metrics_table
    from gamesense.settings import work_dir

    config, task = _recipe_and_task(recipe, overrides, model)
    console = _console()
    try:
        report = task.load(data, max_rows)
    except ValueError as err:
        fail(err)
    for line, reason in report.skipped:
        console.print(f"[yellow]set aside line {line}: {reason}[/yellow]")
    if not report.examples and "static" in task.evaluation:
        fail(f"{report.path}: no usable rows to evaluate ({len(report.skipped)} set aside)")
    loaded = _load_model(model, config)
    slug = re.sub(r"[^\w.-]+", "_", f"{model}__{Path(data).stem}").strip("_")
    out_path = Path(output) if output else work_dir() / "predictions" / f"{slug}.jsonl"
    records = task.eval_records(report.examples) if "static" in task.evaluation else None
    result = evaluate_model(loaded, task, records, out_path.parent, config.generation, label=model)
    if result.predictions_path is not None and result.predictions_path != out_path:
        result.predictions_path.replace(out_path)
    metrics = dict(result.metrics, skipped_rows=float(len(report.skipped)))
    columns = {model: metrics, **task.reference_results(progress=False)}
    console.print(metrics_table(columns, title=f"{loaded.description} on {report.path} ({len(report.examples)} rows)",
                                order=task.metric_order))  # fmt: skip
    if "gen_tokens_per_s" in metrics:
        console.print(f"generation: {metrics['gen_tokens_per_s']:.0f} tokens/s over {metrics['eval_seconds']:.1f} s")
        console.print(f"predictions: {out_path}")


@app.command()
def generate(
    text: Optional[str] = typer.Argument(None, help="the user's input, formatted as the task's prompt (or give --file)"),
    model: str = typer.Option(..., "--model", "-m", help="as for evaluate, e.g. models:/gamesense-TASK@champion"),
    file: Optional[str] = typer.Option(None, "--file", "-f", help="UTF-8 text file, one input per line (blank lines "
                                       "are skipped and reported); decoded in batches of generation.batch_size"),  # fmt: skip
    output: Optional[str] = typer.Option(None, "--output", "-o", help="with --file: write one JSON object per input "
                                         'line, {"line", "input", "output", "raw"}, here (default: print one output '
                                         "per line, newlines inside an output shown as \\n)"),  # fmt: skip
    recipe: Optional[str] = RecipeOpt,
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Predictions for trying a model by hand: one for TEXT, or one per line of --file. Greedy decoding with
    the task's prompt, stop strings and output parsing, as in evaluation."""
    import json
    from pathlib import Path

    from gamesense.evaluation.generation import generate_batch
    from gamesense.settings import same_file

    # check the arguments before loading anything: a mistake must not cost a model load
    if (text is None) == (file is None):
        fail("give either TEXT or --file (exactly one)")
    if text is not None and not text.strip():
        fail("TEXT is empty: give the input to predict for")
    if output is not None and file is None:
        fail("--output needs --file")
    if output is not None and same_file(output, file):
        fail(f"--output {output} is the input file: choose another path")
    inputs = [(1, text)] if file is None else _read_input_lines(file)

    config, task = _recipe_and_task(recipe, overrides, model)
    loaded = _load_model(model, config)
    result = generate_batch(loaded.model, loaded.tokenizer, [task.prompt(t) for _, t in inputs], config.generation,
                            stop_strings=task.stop_strings, progress=file is not None)  # fmt: skip
    answers = [task.parse_output(raw) for raw in result.texts]
    if file is None:
        typer.echo(answers[0])
    elif output is None:
        for answer in answers:
            typer.echo(answer.replace("\n", "\\n"))  # one line per input, whatever the answer holds
    else:
        path = Path(output)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as out:
                for (line, prompt), answer, raw in zip(inputs, answers, result.texts):
                    out.write(json.dumps({"line": line, "input": prompt, "output": answer, "raw": raw}, ensure_ascii=False) + "\n")
        except OSError as err:
            fail(f"cannot write {output}: {err.strerror or err}")
        typer.echo(f"wrote {len(inputs)} predictions to {output} ({result.tokens_per_s:.0f} tokens/s)", err=True)


def _read_input_lines(file: str) -> list[tuple[int, str]]:
    """``(line number, stripped text)`` for every non-blank line of a UTF-8 file (a BOM is ignored); blank
    lines are reported on stderr. Exits with code 2 for a file that cannot be read, is not UTF-8, or has no
    non-blank line."""
    from pathlib import Path

    try:
        data = Path(file).read_bytes()
    except OSError as err:
        fail(f"cannot read --file {file}: {err.strerror or err}")
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        fail(f"--file {file} is not UTF-8 text: {err.reason} at line {line} (byte {err.start})")
    # split on "\n" only: str.splitlines also splits on form feeds and other separators, shifting line numbers
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start a blank one
    inputs = [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    blank = [n for n, line in enumerate(lines, start=1) if not line.strip()]
    if blank:
        shown = ", ".join(map(str, blank[:20])) + (", ..." if len(blank) > 20 else "")
        typer.secho(f"skipped {len(blank)} blank line(s) of {file}: {shown}", fg="yellow", err=True)
    if not inputs:
        fail(f"--file {file} has no input: every line is blank")
    return inputs


CHAT_MIN_NEW_TOKENS = 256  # a chat reply cap: the recipe's cap is sized for the task's short answers
_CHAT_HELP = """commands:
  /reset         forget the conversation (the next message starts over with the task's prompt)
  /help          this help
  /exit, /quit   leave (Ctrl-D too)
anything else is sent to the model; Ctrl-C while it answers stops the reply"""


@app.command()
def chat(
    model: str = typer.Option(..., "--model", "-m", help="as for evaluate, e.g. models:/gamesense-TASK@champion"),
    recipe: Optional[str] = RecipeOpt,
    overrides: Optional[list[str]] = SetOpt,
    temperature: float = typer.Option(0.7, min=0.0, help="sampling temperature; 0: greedy decoding"),
    top_p: float = typer.Option(0.9, "--top-p", help="nucleus sampling: keep the most likely tokens up to this "
                                "probability mass, in (0, 1] (1: all)"),  # fmt: skip
    repetition_penalty: float = typer.Option(1.1, "--repetition-penalty", help="> 1 discourages tokens already in "
                                             "the conversation (1: none); applies when greedy too"),  # fmt: skip
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="cap on each reply's tokens "
                                                 f"(default: the recipe's generation.max_new_tokens, at least {CHAT_MIN_NEW_TOKENS}, at most half "
                                                 "the model's context)"),  # fmt: skip
    seed: Optional[int] = typer.Option(None, help="seed the sampler: the same inputs then get the same replies"),
    stop: bool = typer.Option(True, "--stop/--no-stop", help="end each reply at the task's stop strings (e.g. a "
                              "newline for one-line answers), as generate does; --no-stop: only at EOS or the cap"),  # fmt: skip
) -> None:
    """Talk to any model in the terminal. The first message is wrapped in the task's prompt (its system
    instruction), later ones are added to the conversation, whose oldest turns are dropped when it outgrows
    the model's context. Replies are sampled (--temperature, --top-p) and printed as they come; type /help
    for the commands. --temperature 0 --repetition-penalty 1 --max-new-tokens <the recipe's> answers the
    first message exactly as `gamesense generate` does."""
    import sys

    from gamesense.evaluation import generation as gen
    from gamesense.models.decoding import stop_token_ids

    if not 0 < top_p <= 1:
        fail(f"--top-p {top_p} is not in (0, 1]")
    if repetition_penalty <= 0:
        fail(f"--repetition-penalty {repetition_penalty} must be > 0")
    config, task = _recipe_and_task(recipe, overrides, model)
    loaded = _load_model(model, config)
    tokenizer = loaded.tokenizer
    context = getattr(loaded.model.config, "max_position_embeddings", None)
    new_tokens = max_new_tokens or max(config.generation.max_new_tokens, CHAT_MIN_NEW_TOKENS)
    if max_new_tokens is None and context:
        new_tokens = min(new_tokens, context // 2)  # the default must leave room for the conversation
    stops = task.stop_strings if stop else ()
    stop_ids = stop_token_ids(tokenizer, stops)  # scans the vocabulary: once per session
    budget = None if context is None else context - new_tokens  # prompt tokens that leave room for a reply
    if budget is not None and budget < 1:
        fail(f"--max-new-tokens {new_tokens} leaves no room for a prompt in the model's context of {context} tokens")
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())

    typer.echo(f"chat with {loaded.description} (task {task.name}); /help for commands, /exit or Ctrl-D to leave", err=True)
    streamer = gen.text_streamer(tokenizer, stops)
    history: list[dict] = []
    while True:
        try:
            text = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            typer.echo()
            break
        if not text:
            continue
        if text.startswith("/"):
            command = text.lower()
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                history = []
                typer.echo("(conversation cleared)")
            elif command == "/help":
                typer.echo(_CHAT_HELP)
            else:
                typer.echo(f"unknown command {text}: /help lists the commands")
            continue
        messages = history + [{"role": "user", "content": text}] if history else task.prompt(text)
        try:
            messages, dropped = gen.fit_to_context(tokenizer, messages, budget)
        except ValueError as err:
            typer.secho(f"error: {err}", fg="red", err=True)
            continue
        if dropped:
            typer.echo(f"(dropped the {dropped} oldest messages: the conversation outgrew the model's context of "
                       f"{context} tokens)", err=True)  # fmt: skip
        typer.echo("model> ", nl=False)
        try:
            reply = gen.sample_chat(loaded.model, tokenizer, messages, new_tokens, temperature, top_p, repetition_penalty,
                                stops, stop_ids, streamer=streamer)  # fmt: skip
        except KeyboardInterrupt:
            streamer.end()
            typer.echo("(reply stopped; the conversation is as before this message)")
            continue
        history = messages + [{"role": "assistant", "content": reply}]


@app.command()
def export(
    model: str = typer.Option(..., "--model", "-m", help="models:/NAME@ALIAS | models:/NAME/VERSION, an adapter "
                              "directory or stage checkpoint, or a base model"),  # fmt: skip
    formats: Optional[list[str]] = typer.Option(None, "--format", "-f", help="merged (Hugging Face folder: "
                                                "safetensors, tokenizer, chat template) or gguf (llama.cpp / "
                                                "Ollama); repeatable (default: gguf)"),  # fmt: skip
    quants: Optional[list[str]] = typer.Option(None, "--quant", "-q", help="GGUF quantization, repeatable "
                                               "(default: q8_0): f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0; with "
                                               "llama-cpp-python installed also q6_k, q5_k_m, q4_k_m"),  # fmt: skip
    out: Optional[str] = typer.Option(None, "--out", "-o", help="output folder (default: <workdir>/exports/<name>)"),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="evaluation file for the parity check (default: "
                                       "what the recipe evaluates on: data.eval_file or the task's validation slice)"),  # fmt: skip
    parity: bool = typer.Option(True, "--parity/--no-parity", help="score every exported form beside the adapter "
                                "on the evaluation rows (llama.cpp's runtime too, where installed)"),  # fmt: skip
    max_rows: Optional[int] = typer.Option(None, "--max-rows", min=1, help="parity on the first N rows only"),
    log: bool = typer.Option(True, "--log/--no-log", help="log the exports on the registry version (artifacts and "
                             "export.* tags) when --model is a registry reference"),  # fmt: skip
    recipe: Optional[str] = RecipeOpt,
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Ship a model into a game: merge its LoRA adapter into the base weights and write a Hugging Face folder
    and/or GGUF files for llama.cpp and Ollama (each with an Ollama Modelfile holding the chat template, the
    task's system prompt and stop strings), then check parity: the task's own metrics on the same evaluation
    rows for the adapter and every exported form, read back by transformers and by llama.cpp. Exits 4 when a
    merged, f16/bf16/f32 form loses more than 0.5 points of the gate metric, or q8_0 more than 1 point."""
    from pathlib import Path

    from gamesense.evaluation.export_parity import PARITY_BOUNDS, parity_failures, parity_table, size_on_disk
    from gamesense.models.export import ExportError
    from gamesense.pipelines.export import check_export_options, export_name, run_export
    from gamesense.pipelines.llm_run import load_evaluation
    from gamesense.registry.mlflow_store import setup_tracking
    from gamesense.registry.refs import is_registry_ref
    from gamesense.settings import work_dir

    formats, quants = list(dict.fromkeys(formats or ["gguf"])), list(dict.fromkeys(quants or ["q8_0"]))
    try:
        check_export_options(formats, quants)
    except ExportError as err:
        fail(err)
    show_progress_logs()
    config, task = _recipe_and_task(recipe, overrides, model)
    if is_registry_ref(model):
        setup_tracking(config.registry.tracking_uri)
    records, rows_from = None, None
    if parity and "static" in task.evaluation:
        try:
            report = task.load(data, max_rows) if data else load_evaluation(config, task, max_rows=max_rows)[0]
        except (ValueError, NotImplementedError) as err:
            fail(err)
        if not report.examples:
            fail(f"{report.path}: no usable rows for the parity check ({len(report.skipped)} set aside)")
        records, rows_from = task.eval_records(report.examples), report.path
    try:
        target = Path(out) if out else work_dir() / "exports" / export_name(model)
        result = run_export(model, task, formats, quants, target, config.generation, records=records,
                            log_to_registry=log, check=parity)  # fmt: skip
    except (ExportError, FileNotFoundError, LookupError, ValueError) as err:
        fail(err)
    typer.echo(f"exported {model} in {result.export_seconds:.1f} s:")
    for kind, path in result.files.items():
        typer.echo(f"  {kind}: {path} ({size_on_disk(path) / 1e6:,.1f} MB)")
        if kind in result.modelfiles:
            typer.echo(f"  {kind} for Ollama: ollama create {path.stem} -f {result.modelfiles[kind]}")
    for kind, uri in result.logged.items():
        typer.echo(f"  logged on {model}: {uri}")
    if not result.parity:
        return
    console = _console()
    console.print(parity_table(result.parity, result.parity_metrics, title=f"parity on {len(records or [])} rows "
                               f"of {rows_from}" if records else "parity"))  # fmt: skip
    for row in result.parity:
        if row.error:
            typer.secho(f"{row.label} ({row.reader}): no score: {row.error}", fg="yellow", err=True)
    broken = parity_failures(result.parity, task.gate_metric, task.higher_is_better)
    if broken:
        fail("parity: " + "; ".join(broken), code=4)
    console.print(f"parity: within bounds ({task.gate_metric}: merged and f16 within {PARITY_BOUNDS['merged']} points "
                  f"of the adapter, q8_0 within {PARITY_BOUNDS['gguf q8_0']})")  # fmt: skip


@models_app.command("list")
def models_list(
    name: Optional[str] = typer.Argument(None, help="one registered model (default: all)"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: the working directory's SQLite store)"),
) -> None:
    """Registered versions with their aliases, gate metric and exports (``gamesense export``)."""
    from datetime import datetime

    from rich.table import Table

    from gamesense.registry.mlflow_store import export_kinds, list_model_versions, setup_tracking

    setup_tracking(tracking_uri)
    rows = list_model_versions(name)
    table = Table(title="model registry")
    with_exports = any(export_kinds(row["tags"]) for row in rows)  # the column only when some version has one
    for col in ("name", "version", "aliases", "created", "gate metric", *(("exports",) if with_exports else ()), "run"):
        table.add_column(col)
    for row in rows:
        tags = row["tags"]
        metric = tags.get("gate_metric")
        shown = f"{metric}={float(tags[metric]):.4f}" if metric in tags else ""
        exports = (", ".join(export_kinds(tags)),) if with_exports else ()
        table.add_row(row["name"], row["version"], ", ".join(row["aliases"]),
                      datetime.fromtimestamp(row["created"] / 1000).strftime("%Y-%m-%d %H:%M"), shown, *exports,
                      (row["run_id"] or "")[:8])  # fmt: skip
    _console().print(table if rows else "the registry is empty: run `gamesense finetune` first")


@models_app.command("promote")
def models_promote(
    name: str = typer.Argument(..., help="registered model, e.g. gamesense-TASK"),
    version: str = typer.Argument(..., help="version number to make champion"),
    alias: str = typer.Option(CHAMPION, help="alias to move"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: the working directory's SQLite store)"),
) -> None:
    """Move an alias (default ``champion``) to a version by hand, bypassing the evaluation gate."""
    from mlflow.exceptions import MlflowException

    from gamesense.registry.mlflow_store import set_alias, setup_tracking

    setup_tracking(tracking_uri)
    try:
        set_alias(name, version, alias)
    except MlflowException as err:
        fail(err.message)
    typer.echo(f"{name} version {version} is now @{alias}")


@recipe_app.command("show")
def recipe_show(
    recipe: str = typer.Argument(DEFAULT_RECIPE, help="recipe YAML file or a name under recipes/"),
    overrides: Optional[list[str]] = SetOpt,
    markdown: bool = typer.Option(False, "--markdown", help="a Markdown table (key | value | meaning), as in the README"),
) -> None:
    """Every key the recipe sets, its value and what it means (validated first)."""
    from gamesense.config import rows_to_markdown
    from gamesense.training.recipe import llm_recipe_rows

    _, task = _recipe_and_task(recipe, overrides)
    rows = llm_recipe_rows(recipe, task.Options, overrides)
    if markdown:
        typer.echo(rows_to_markdown(rows))
        return
    from rich.table import Table

    table = Table(title=str(recipe))
    for col in ("key", "value", "meaning"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    _console().print(table)


_mount_task_commands()
app.add_typer(synth_cli.build(_TaskCommandHost()), name="synth")  # gamesense synth <name>: tasks' data builders
install_error_boundary(app)  # every command: known errors -> one line, exit 2 (docs/operations.md)
