"""Root of the ``gamesense`` CLI: LLM commands here, task groups mounted from their own modules.

Heavy libraries (torch, transformers, mlflow) are imported inside commands so ``--help`` stays instant.
"""

from __future__ import annotations

import typer

from gamesense.cli import engagement as engagement_cli
from gamesense.cli.common import load_recipe_or_exit

app = typer.Typer(
    help="GameSense: turn gaming data into production models (LLM adapters, tabular models) with "
    "MLflow tracking, a model registry with champion/challenger aliases, ZenML pipelines and drift monitoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="What the MLflow model registry holds; move the champion alias by hand.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(engagement_cli.app, name="engagement")
app.command("serve")(engagement_cli.serve)


def _console():
    from rich.console import Console

    return Console()


def _load_llm_recipe(recipe: str, overrides: list[str]):
    from gamesense.config import LLMRecipe

    return load_recipe_or_exit(recipe, LLMRecipe, overrides)


def _load_model(model: str, config):
    """Load a model reference for generation (registry references use the recipe's tracking URI); a
    reference that cannot be loaded exits with code 2 and one line saying why."""
    from gamesense.models.refs import load_for_inference
    from gamesense.registry.mlflow_store import setup_tracking

    if model.startswith("models:/"):
        setup_tracking(config.registry.tracking_uri)
    try:
        return load_for_inference(model)
    except (ValueError, LookupError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


RecipeOpt = typer.Option("viggo", "--recipe", "-r", help="recipe YAML file, or a name under recipes/ (viggo)")
SetOpt = typer.Option(None, "--set", "-s", help="override a recipe key, e.g. --set training.max_steps=50 (repeatable)")


@app.command()
def finetune(
    recipe: str = RecipeOpt,
    overrides: list[str] = SetOpt,
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its last checkpoint"),
    zenml: bool = typer.Option(None, "--zenml/--no-zenml", help="run as a ZenML pipeline (default: recipe's zenml key)"),
) -> None:
    """Prepare data, evaluate the base model, LoRA fine-tune, evaluate the adapter, register it in MLflow
    and promote it to champion only if it beats the base model and the current champion."""
    import logging
    import time

    from gamesense.evaluation.runner import metrics_table

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = _load_llm_recipe(recipe, overrides or [])
    use_zenml = config.zenml if zenml is None else zenml
    started = time.perf_counter()
    if use_zenml:
        from gamesense.pipelines.llm import run_zenml

        out = run_zenml(config.model_dump(), resume=resume)
    else:
        from gamesense.pipelines.llm_steps import run_local

        out = run_local(config, resume=resume)
        if out is None:  # a non-main process of a multi-process (accelerate launch) run
            return
    wall = time.perf_counter() - started
    console = _console()
    console.print(metrics_table({"base": out["base_metrics"], "fine-tuned": out["finetuned_metrics"]},
                                title=f"{config.task}: {out['data']['eval_rows']} rows of {out['data']['eval_file']}"))
    promo, trained, data = out["promotion"], out["trained"], out["data"]
    tm = trained["metrics"]
    console.print(f"training: {tm['train_steps']:.0f} steps, loss {tm['train_loss']:.4f}, "
                  f"{tm['train_tokens_per_s']:.0f} tokens/s, {tm['train_runtime_s'] / 60:.1f} min")
    if data["train_skipped_rows"] or data["eval_skipped_rows"]:
        console.print(f"skipped rows: train {data['train_skipped_rows']}, eval {data['eval_skipped_rows']} "
                      "(see data/skipped_rows.json in the MLflow run)")
    console.print(f"registered [bold]{promo['model_name']}[/bold] version {promo['version']} -> "
                  f"[bold]{promo['alias']}[/bold]: {promo['reason']}")
    console.print(f"adapter: {trained['adapter_dir']}\nrun: {data['run_dir']} (MLflow run {data['run_id']})\n"
                  f"try it: gamesense generate --model models:/{promo['model_name']}/{promo['version']} \"...\"\n"
                  f"wall time {wall / 60:.1f} min")


@app.command()
def evaluate(
    model: str = typer.Option(..., "--model", "-m", help="base id/path, adapter dir, or models:/NAME@ALIAS | models:/NAME/VERSION"),
    data: str = typer.Option(..., "--data", "-d", help="evaluation file in the task's format (CSV or JSONL)"),
    recipe: str = RecipeOpt,
    overrides: list[str] = SetOpt,
    output: str = typer.Option(None, "--output", "-o", help="predictions JSONL (default: <workdir>/predictions/...)"),
    max_rows: int = typer.Option(None, help="only the first N rows"),
) -> None:
    """Score any model on any evaluation file: prints the metrics table and generation throughput and
    writes one JSONL record per example (input, reference, prediction, per-row scores)."""
    import re
    from pathlib import Path

    from gamesense.evaluation.runner import evaluate_records, metrics_table, task_records
    from gamesense.settings import work_dir
    from gamesense.tasks import get_task

    config = _load_llm_recipe(recipe, overrides or [])
    task = get_task(config.task)
    console = _console()
    try:
        report = task.load(data, max_rows)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    for line, reason in report.skipped:
        console.print(f"[yellow]skipped line {line}: {reason}[/yellow]")
    loaded = _load_model(model, config)
    slug = re.sub(r"[^\w.-]+", "_", f"{model}__{Path(data).stem}").strip("_")
    out_path = Path(output) if output else work_dir() / "predictions" / f"{slug}.jsonl"
    result = evaluate_records(loaded, task, task_records(task, report.examples, config.system_prompt), out_path,
                              max_new_tokens=config.generation.max_new_tokens, batch_size=config.generation.batch_size)
    metrics = dict(result.metrics, skipped_rows=float(len(report.skipped)))
    console.print(metrics_table({model: metrics}, title=f"{loaded.description} on {report.path} ({len(report.examples)} rows)"))
    console.print(f"generation: {metrics['gen_tokens_per_s']:.0f} tokens/s over {metrics['eval_seconds']:.1f} s")
    console.print(f"predictions: {out_path}")


@app.command()
def generate(
    text: str = typer.Argument(..., help="what the player said"),
    model: str = typer.Option("models:/gamesense-viggo@champion", "--model", "-m", help="as for evaluate"),
    recipe: str = RecipeOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """One prediction, for trying a model by hand."""
    from gamesense.evaluation.generation import generate_batch
    from gamesense.tasks import get_task

    config = _load_llm_recipe(recipe, overrides or [])
    task = get_task(config.task)
    loaded = _load_model(model, config)
    out = generate_batch(loaded.model, loaded.tokenizer, [task.build_prompt(text, config.system_prompt)], max_new_tokens=config.generation.max_new_tokens, progress=False)
    typer.echo(task.extract_output(out.texts[0]))


@models_app.command("list")
def models_list(
    name: str = typer.Argument(None, help="one registered model (default: all)"),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: the working directory's SQLite store)"),
) -> None:
    """Registered versions with their aliases and key metrics."""
    from datetime import datetime

    from rich.table import Table

    from gamesense.registry.mlflow_store import list_model_versions, setup_tracking

    setup_tracking(tracking_uri)
    rows = list_model_versions(name)
    table = Table(title="model registry")
    for col in ("name", "version", "aliases", "created", "metrics", "run"):
        table.add_column(col)
    for row in rows:
        tags = row["tags"]
        shown = [k for k in ("exact_match", "slot_f1", "macro_f1", "accuracy") if k in tags]
        table.add_row(row["name"], row["version"], ", ".join(row["aliases"]),
                      datetime.fromtimestamp(row["created"] / 1000).strftime("%Y-%m-%d %H:%M"),
                      " ".join(f"{k}={float(tags[k]):.4f}" for k in shown), (row["run_id"] or "")[:8])
    _console().print(table if rows else "the registry is empty: run `gamesense finetune` first")


@models_app.command("promote")
def models_promote(
    name: str = typer.Argument(..., help="registered model, e.g. gamesense-viggo"),
    version: str = typer.Argument(..., help="version number to make champion"),
    alias: str = typer.Option("champion", help="alias to move"),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: the working directory's SQLite store)"),
) -> None:
    """Move an alias (default ``champion``) to a version by hand, bypassing the evaluation gate."""
    from mlflow.exceptions import MlflowException

    from gamesense.registry.mlflow_store import set_alias, setup_tracking

    setup_tracking(tracking_uri)
    try:
        set_alias(name, version, alias)
    except MlflowException as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{name} version {version} is now @{alias}")
