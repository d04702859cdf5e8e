"""``gamesense engagement ...`` and ``gamesense serve`` (player-engagement model).

Heavy libraries are imported inside commands so ``gamesense --help`` stays fast. Every command takes
``--recipe`` (default ``engagement``) and repeatable ``--set key=value`` overrides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from gamesense.cli.common import (GRACEFUL_SHUTDOWN_S, ApiKeyOpt, ApiKeysFileOpt, NoAuthOpt, PublicOpt, fail,
                                  load_recipe_or_exit, server_api_keys)  # fmt: skip

app = typer.Typer(help="Player-engagement model (High/Medium/Low): train, promote, predict, monitor.", no_args_is_help=True)

RecipeOpt = typer.Option("engagement", "--recipe", "-r", help="recipe name (recipes/NAME.yaml) or path")
SetOpt = typer.Option(None, "--set", help="override a recipe key, e.g. --set lightgbm.n_estimators=80 (repeatable)")


def _recipe(recipe: str, overrides: Optional[list[str]]):
    from gamesense.tasks.engagement import EngagementRecipe

    return load_recipe_or_exit(recipe, EngagementRecipe, overrides)


def _print(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _pipeline(name: str, recipe, **kwargs):
    from gamesense.pipelines import engagement as pipes

    return pipes.run(name, recipe, **kwargs)


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, "--data", help="labelled CSV/Parquet (default: recipe data.train_file)"),
    recipe: str = RecipeOpt,
    set_: Optional[list[str]] = SetOpt,
    no_register: bool = typer.Option(False, "--no-register", help="log the run but do not register a version"),
) -> None:
    """Train LightGBM + baselines, log to MLflow, register the model as alias `challenger`."""
    cfg = _recipe(recipe, set_)
    from gamesense.tasks.engagement import SchemaError

    try:
        if cfg.zenml:
            result = _pipeline("train", cfg, data_file=str(data) if data else None)
        else:
            from gamesense.training.engagement import train_engagement

            result = train_engagement(cfg, str(data) if data else None, register=not no_register).to_dict()
    except (SchemaError, ValueError) as err:
        fail(err)
    rows = [(name, m["accuracy"], m["macro_f1"]) for name, m in result["metrics"].items()]
    for name, acc, f1 in rows:
        typer.echo(f"{name:22s} accuracy={acc:.4f} macro_f1={f1:.4f}")
    if result.get("cv"):
        typer.echo(f"{'lightgbm CV':22s} accuracy={result['cv']['cv_accuracy_mean']:.4f}±{result['cv']['cv_accuracy_std']:.4f} "
                   f"macro_f1={result['cv']['cv_macro_f1_mean']:.4f}±{result['cv']['cv_macro_f1_std']:.4f}")  # fmt: skip
    validation = result.get("validation") or {}
    if validation.get("rejected"):
        typer.secho(f"{validation['rejected']} of {validation['rows']} rows rejected and not used; reasons per row in "
                    f"{validation.get('rejects_file')}", fg="yellow", err=True)  # fmt: skip
    typer.echo(f"run {result['run_id']}  {result['model_name']} v{result['version']} -> challenger  ({result['seconds']:.1f}s)")


@app.command()
def promote(
    eval_file: Optional[Path] = typer.Option(None, "--eval-file", "--data", help="held-out labelled file, never the training file (default: recipe data.eval_file)"),
    recipe: str = RecipeOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Evaluate challenger and champion on one held-out file; move `champion` only if the challenger's macro-F1 is
    higher. Concurrent promotes of one model decide one at a time."""
    cfg = _recipe(recipe, set_)
    from gamesense.registry.promotion import ConcurrentPromotionError
    from gamesense.tasks.engagement import SchemaError

    try:
        if cfg.zenml:
            record = _pipeline("promote", cfg, eval_file=str(eval_file) if eval_file else None)
        else:
            from gamesense.pipelines.engagement_gate import promote_engagement

            record = promote_engagement(cfg, str(eval_file) if eval_file else None)
    except (SchemaError, ValueError, LookupError, ConcurrentPromotionError) as err:
        fail(err)
    typer.echo(("PROMOTED" if record["promote"] else "KEPT") + f": {record['reason']}")


@app.command()
def predict(
    input: Path = typer.Option(..., "--input", "-i", help="players to score (CSV/Parquet; target optional)"),
    output: Path = typer.Option(..., "--output", "-o", help="predictions file (.csv or .parquet)"),
    model_uri: Optional[str] = typer.Option(None, "--model-uri", help="NAME@ALIAS, NAME/VERSION, models:/..., runs:/... "
                                            "or a path (default: the recipe's model_name@serving.alias)"),  # fmt: skip
    rejects: Optional[Path] = typer.Option(None, "--rejects", help="rejects file (default: <workdir>/engagement/rejects/)"),
    keep_scored: bool = typer.Option(True, "--keep-scored/--no-keep-scored", help="keep inputs+predictions for monitoring"),
    recipe: str = RecipeOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Batch scoring: predicted level and class probabilities per player."""
    cfg = _recipe(recipe, set_)
    from gamesense.tasks.engagement import SchemaError

    try:
        if cfg.zenml:
            summary = _pipeline("predict", cfg, input_file=str(input), output_file=str(output), model_uri=model_uri)
        else:
            from gamesense.serving.engagement.batch import score_file

            summary = score_file(cfg, input, output, model_uri, rejects, keep_scored)
    except (SchemaError, LookupError) as err:
        fail(err)
    _print(summary)


@app.command()
def monitor(
    current: Optional[Path] = typer.Option(None, "--current", "--input", help="batch to check (default: newest kept scored batch)"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="training data (default: recipe data.train_file)"),
    reports_dir: Optional[Path] = typer.Option(None, "--reports-dir", help="default: <workdir>/engagement/reports"),
    recipe: str = RecipeOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Drift report (Evidently) + retraining decision. Exit code 0: no drift; 1: retraining is due; 2: bad input
    or error (unreadable batch, fewer than drift.min_rows valid rows): no decision, do not retrain."""
    cfg = _recipe(recipe, set_)
    from gamesense.tasks.engagement import SchemaError

    try:
        if cfg.zenml:
            result = _pipeline("monitor", cfg, current_file=str(current) if current else None, retrain=False)
        else:
            from gamesense.monitoring.engagement import monitor_engagement

            result = monitor_engagement(cfg, current, reference, reports_dir).to_dict()
    except (SchemaError, LookupError, OSError, KeyError) as err:
        fail(err)  # exit 2, never 1: a broken batch must not trigger retraining
    for name, col in result["columns"].items():
        mark = "DRIFT" if col["drifted"] else "ok"
        typer.echo(f"  {name:28s} {col['method']:32s} {col['score']:.4f} (threshold {col['threshold']}) {mark}")
    typer.echo(f"drift share {result['drift_share']:.2f} ({result['n_drifted']} columns) on {result['rows_current']} rows; "
               f"report: {result['html_report']}")  # fmt: skip
    if result.get("rows_current_rejected"):
        typer.echo(f"{result['rows_current_rejected']} rows of the batch broke the schema and were left out")
    if result["retrain"]:
        typer.secho("RETRAIN: " + "; ".join(result["reasons"]), fg="yellow")
        raise typer.Exit(1)
    typer.echo("OK: no retraining needed")


@app.command("simulate-drift")
def simulate_drift_cmd(
    input: Path = typer.Option(..., "--input", "-i", help="clean batch (CSV/Parquet)"),
    output: Path = typer.Option(..., "--output", "-o", help="perturbed batch (.csv or .parquet)"),
    strength: float = typer.Option(1.0, min=0.0, max=1.0, help="0: unchanged .. 1: strong drift"),
    seed: int = typer.Option(0),
) -> None:
    """Write a perturbed copy (shorter/fewer sessions, older players, harder games) to see the loop fire."""
    from gamesense.monitoring.engagement import simulate_drift
    from gamesense.settings import same_file
    from gamesense.tasks.engagement import SchemaError, read_table, validate_frame, write_table

    try:
        if same_file(output, input):
            raise SchemaError(f"--output {output} is the input file: choose another path")
        checked = validate_frame(read_table(input))
        if checked.valid.empty:
            raise SchemaError(f"{input}: no valid rows to perturb ({checked.report()['reasons'] or 'empty'})")
        out = simulate_drift(checked.valid, strength, seed)
        write_table(out, output)
    except SchemaError as err:
        fail(err)
    skipped = f" ({len(checked.rejects)} rows that break the schema left out)" if len(checked.rejects) else ""
    typer.echo(f"wrote {len(out)} drifted rows to {output}{skipped}")


@app.command()
def pipeline(
    name: str = typer.Argument(..., help="train | promote | predict | monitor (monitor-then-retrain)"),
    data: Optional[Path] = typer.Option(None, "--data", help="train/promote data; monitor: current batch"),
    output: Optional[Path] = typer.Option(None, "--output", help="predict: predictions file"),
    retrain: bool = typer.Option(True, "--retrain/--no-retrain", help="monitor: retrain + promote on drift"),
    recipe: str = RecipeOpt,
    set_: Optional[list[str]] = SetOpt,
) -> None:
    """Run one of the ZenML pipelines (local orchestrator, store under <workdir>/zenml)."""
    cfg = _recipe(recipe, set_)
    kwargs: dict = {}
    if (name == "promote" and not data or name == "monitor" and retrain) and not cfg.data.eval_file:
        fail(f"the {name} pipeline promotes: set data.eval_file to a held-out labelled file (--set data.eval_file=FILE)"
             + (" or pass --data" if name == "promote" else ""))  # fmt: skip
    if name == "train":
        kwargs["data_file"] = str(data) if data else None
    elif name == "promote":
        kwargs["eval_file"] = str(data) if data else None
    elif name == "predict":
        if not data or not output:
            fail(ValueError("predict pipeline needs --data and --output"))
        kwargs.update(input_file=str(data), output_file=str(output))
    elif name == "monitor":
        kwargs.update(current_file=str(data) if data else None, retrain=retrain)
    else:
        fail(ValueError(f"unknown pipeline {name!r}"))
    _print(_pipeline(name, cfg, **kwargs))


def serve(
    host: str = typer.Option("127.0.0.1", help="interface to bind"),
    port: int = typer.Option(8000, help="TCP port"),
    recipe: str = RecipeOpt,
    set_: Optional[list[str]] = SetOpt,
    reload_interval: Optional[float] = typer.Option(None, help="seconds between alias checks (default: recipe)"),
    api_key: Optional[list[str]] = ApiKeyOpt,
    api_keys_file: Optional[Path] = ApiKeysFileOpt,
    no_auth: bool = NoAuthOpt,
    public: Optional[list[str]] = PublicOpt,
    log_level: str = typer.Option("warning", help="uvicorn log level"),
) -> None:
    """Start the online inference API (FastAPI + uvicorn); follows the `champion` alias without restart. With API
    keys, every path but /livez (and --public ones) needs Authorization: Bearer KEY (docs/operations.md)."""
    cfg = _recipe(recipe, set_)
    keys = server_api_keys(host, api_key, api_keys_file, no_auth)
    import uvicorn

    from gamesense.serving.engagement.api import create_app

    api = create_app(cfg.registry.model_name, cfg.serving.alias, cfg.registry.tracking_uri,
                     reload_interval or cfg.serving.reload_interval_s, max_batch=cfg.serving.max_batch,
                     max_body_bytes=cfg.serving.max_body_bytes, api_keys=keys, public_paths=public or ())  # fmt: skip
    uvicorn.run(api, host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)  # fmt: skip
