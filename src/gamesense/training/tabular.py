"""Tabular training, evaluation and champion/challenger promotion (engagement model), logged to MLflow.

``train_engagement`` fits LightGBM plus the baselines on one stratified split, cross-validates LightGBM on
the train part, logs params/metrics/plots (baselines as nested runs), logs the sklearn pipeline with
signature and input example, registers it and points ``challenger`` at the new version.
``promote_engagement`` scores challenger and champion on one evaluation file and moves ``champion`` only
when the challenger's macro-F1 is higher.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gamesense.config import resolve_data_path
from gamesense.settings import work_dir
from gamesense.tasks import engagement as task

log = logging.getLogger(__name__)

# skops (MLflow's safe default format) refuses types not on this allow-list; it is stored with the model.
SKOPS_TRUSTED_TYPES = [
    "collections.OrderedDict",
    "gamesense.tasks.engagement._feature_names",
    "gamesense.tasks.engagement.add_features",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMClassifier",
]
PIP_REQUIREMENTS = ["scikit-learn==1.9.1", "lightgbm==4.7.0", "pandas==2.3.3", "numpy", "gamesense"]


@dataclass
class TrainResult:
    """What one training run produced. ``metrics``: held-out metrics per model name."""

    run_id: str
    model_name: str
    version: str | None
    metrics: dict[str, dict[str, Any]]
    cv: dict[str, float]
    seconds: float
    validation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_training_frame(path: str | Path, max_rows: int | None = None, seed: int = 42) -> tuple[pd.DataFrame, Any]:
    """Read and validate a labelled file; optionally a stratified subsample of ``max_rows``.

    Returns:
        (valid frame, :class:`~gamesense.tasks.engagement.ValidationResult`).

    Raises:
        SchemaError: unreadable file or missing columns; ValueError: no valid rows.
    """
    result = task.validate_frame(task.read_table(resolve_data_path(path)), require_target=True)
    df = result.valid
    if df.empty:
        raise ValueError(f"{path}: no valid rows ({result.report()})")
    if max_rows and len(df) > max_rows:
        from sklearn.model_selection import train_test_split

        df, _ = train_test_split(df, train_size=max_rows, stratify=df[task.TARGET], random_state=seed)
        df = df.reset_index(drop=True)
    return df, result


def _scalar_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {prefix + k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def train_engagement(recipe: task.EngagementRecipe, data_file: str | None = None, register: bool = True) -> TrainResult:
    """Train LightGBM + baselines, log everything to MLflow and register LightGBM as ``challenger``.

    Args:
        recipe: the engagement recipe; ``data_file`` overrides ``recipe.data.train_file``.
        register: register the model and set the ``challenger`` alias.

    Raises:
        SchemaError / ValueError: unusable data.
    """
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.model_selection import StratifiedKFold, cross_validate, train_test_split

    from gamesense.registry.mlflow_store import CHALLENGER, set_alias, setup_tracking

    t0 = time.perf_counter()
    cfg = recipe.data
    path = data_file or cfg.train_file
    df, validation = load_training_frame(path, cfg.max_rows, cfg.seed)
    train_df, test_df = train_test_split(df, test_size=cfg.test_size, stratify=df[task.TARGET], random_state=cfg.seed)
    X_train, y_train = task.split_xy(train_df)
    X_test, y_test = task.split_xy(test_df)
    setup_tracking(recipe.registry.tracking_uri, recipe.registry.experiment)
    params = recipe.lightgbm.model_dump()
    all_metrics: dict[str, dict[str, Any]] = {}
    cv_summary: dict[str, float] = {}
    version = None
    with mlflow.start_run(run_name="engagement-lightgbm") as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags({"task": "engagement", "model_family": "lightgbm", "data_file": str(path)})
        mlflow.log_params({f"lgbm_{k}": v for k, v in params.items()})
        mlflow.log_params({"data_file": str(path), "rows_valid": len(df), "rows_rejected": len(validation.rejects),
                           "rows_train": len(train_df), "rows_test": len(test_df), "test_size": cfg.test_size,
                           "cv_folds": cfg.cv_folds, "seed": cfg.seed,
                           "features": ",".join(task.FEATURES + task.ENGINEERED_FEATURES)})  # fmt: skip
        model = task.build_lightgbm(params, seed=cfg.seed)
        if cfg.cv_folds and cfg.cv_folds > 1:
            cv = cross_validate(
                task.build_lightgbm(params, seed=cfg.seed), X_train, y_train,
                cv=StratifiedKFold(cfg.cv_folds, shuffle=True, random_state=cfg.seed),
                scoring={"accuracy": "accuracy", "macro_f1": "f1_macro"}, n_jobs=1,
            )  # fmt: skip
            for name in ("accuracy", "macro_f1"):
                scores = cv[f"test_{name}"]
                cv_summary[f"cv_{name}_mean"], cv_summary[f"cv_{name}_std"] = float(scores.mean()), float(scores.std())
            mlflow.log_metrics(cv_summary)
        fit_start = time.perf_counter()
        model.fit(X_train, y_train)
        mlflow.log_metric("fit_seconds", time.perf_counter() - fit_start)
        metrics = task.compute_metrics(y_test, model.predict(X_test))
        all_metrics["lightgbm"] = metrics
        mlflow.log_metrics(_scalar_metrics(metrics, "test_"))
        tmpdir = Path(tmp)
        (tmpdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        mlflow.log_artifact(str(tmpdir / "metrics.json"))
        if recipe.plots:
            task.plot_confusion_matrix(metrics["confusion_matrix"], tmpdir / "confusion_matrix.png", "LightGBM (held-out)")
            imp = task.feature_importance(model)
            task.plot_feature_importance(imp, tmpdir / "feature_importance.png")
            imp.to_csv(tmpdir / "feature_importance.csv", header=["gain"])
            for name in ("confusion_matrix.png", "feature_importance.png", "feature_importance.csv"):
                mlflow.log_artifact(str(tmpdir / name), artifact_path="plots")

        for name in recipe.baselines:
            with mlflow.start_run(run_name=f"engagement-{name}", nested=True):
                mlflow.set_tags({"task": "engagement", "model_family": name, "role": "baseline"})
                start = time.perf_counter()
                baseline = task.build_baseline(name, seed=cfg.seed).fit(X_train, y_train)
                mlflow.log_metric("fit_seconds", time.perf_counter() - start)
                bm = task.compute_metrics(y_test, baseline.predict(X_test))
                all_metrics[name] = bm
                mlflow.log_metrics(_scalar_metrics(bm, "test_"))
                if recipe.plots:
                    png = tmpdir / f"confusion_matrix_{name}.png"
                    task.plot_confusion_matrix(bm["confusion_matrix"], png, f"{name} (held-out)")
                    mlflow.log_artifact(str(png), artifact_path="plots")
            mlflow.log_metric(f"baseline_{name}_macro_f1", bm["macro_f1"])
            mlflow.log_metric(f"baseline_{name}_accuracy", bm["accuracy"])

        example = X_test.head(5).astype({c: str for c in task.CATEGORICAL_FEATURES})
        with warnings.catch_warnings():  # "integer columns cannot hold missing values": validated upstream
            warnings.simplefilter("ignore", UserWarning)
            signature = infer_signature(example, model.predict(example))
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            pip_requirements=PIP_REQUIREMENTS,
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
            registered_model_name=recipe.registry.model_name if register else None,
        )
        if register:
            version = str(info.registered_model_version)
            set_alias(recipe.registry.model_name, version, CHALLENGER)
            mlflow.set_tag("registered_version", version)
        seconds = time.perf_counter() - t0
        mlflow.log_metric("train_seconds", seconds)
    return TrainResult(run.info.run_id, recipe.registry.model_name, version, all_metrics, cv_summary, seconds,
                       validation.report())  # fmt: skip


# --- evaluation and promotion ---------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A registered engagement model ready to predict. ``predictor``: the fast path (None if not LightGBM)."""

    name: str
    version: str
    pipeline: Any
    predictor: task.FastPredictor | None
    run_id: str | None = None

    def predict_frame(self, X: pd.DataFrame) -> pd.DataFrame:
        """Predicted level + probabilities per row (see :meth:`FastPredictor.predict_frame`)."""
        if self.predictor is not None:
            return self.predictor.predict_frame(X)
        proba = self.pipeline.predict_proba(X[task.FEATURES].astype({c: str for c in task.CATEGORICAL_FEATURES}))
        classes = [str(c) for c in self.pipeline.classes_]
        out = pd.DataFrame(index=X.index)
        out[task.PREDICTION] = np.asarray(classes)[proba.argmax(axis=1)]
        for i, cls in enumerate(classes):
            out[task.PROBA_PREFIX + cls] = proba[:, i]
        return out


def load_model(model_name: str, ref: str = "champion", model_uri: str | None = None) -> LoadedModel:
    """Load a registered version by alias or number (``ref``), or any MLflow ``model_uri``.

    The alias is resolved to a version first, so the version reported is the one loaded even when the
    alias moves concurrently.

    Raises:
        LookupError: alias or version not found.
    """
    import mlflow

    from gamesense.registry.mlflow_store import get_version_by_alias

    run_id = None
    if model_uri and not model_uri.startswith("models:/"):
        version, uri = model_uri, model_uri
    else:
        if model_uri:  # models:/name@alias or models:/name/version
            body = model_uri[len("models:/"):]
            model_name, ref = (body.split("@", 1) if "@" in body else body.split("/", 1))
        if str(ref).isdigit():
            version = str(ref)
        else:
            mv = get_version_by_alias(model_name, ref)
            if mv is None:
                raise LookupError(f"model {model_name!r} has no alias {ref!r}: train and promote first")
            version, run_id = str(mv.version), mv.run_id
        uri = f"models:/{model_name}/{version}"
    try:
        pipeline = mlflow.sklearn.load_model(uri)
    except Exception as err:  # MlflowException, OSError: name the URI
        raise LookupError(f"cannot load {uri}: {str(err).splitlines()[0]}") from err
    try:
        predictor = task.FastPredictor(pipeline)
    except (TypeError, KeyError, AttributeError):
        predictor = None
    return LoadedModel(model_name, version, pipeline, predictor, run_id)


def evaluate_model(model: LoadedModel, df: pd.DataFrame) -> dict[str, Any]:
    """Held-out metrics (see :func:`compute_metrics`) of ``model`` on a validated labelled frame."""
    pred = model.predict_frame(df)[task.PREDICTION]
    return task.compute_metrics(df[task.TARGET].astype(str), pred.astype(str))


def promote_engagement(recipe: task.EngagementRecipe, eval_file: str | None = None) -> dict[str, Any]:
    """Champion/challenger gate: evaluate both on ``eval_file`` (default: the recipe's data file) and move
    ``champion`` to the challenger only when its macro-F1 is higher (by more than ``registry.min_delta``).

    The decision and reason are logged as an MLflow run (experiment ``<experiment>-promotion``), as tags on
    the challenger version, and appended to ``<workdir>/engagement/promotions.jsonl``.

    Returns:
        dict with ``promote``, ``reason``, ``challenger``/``champion`` versions and scores.

    Raises:
        LookupError: no challenger.
    """
    import mlflow
    from mlflow import MlflowClient

    from gamesense.registry.mlflow_store import (CHALLENGER, CHAMPION, decide_promotion, get_version_by_alias,
                                                 set_alias, setup_tracking)  # fmt: skip

    reg = recipe.registry
    setup_tracking(reg.tracking_uri, reg.experiment + "-promotion")
    path = eval_file or recipe.data.train_file
    df, _ = load_training_frame(path)
    challenger_mv = get_version_by_alias(reg.model_name, CHALLENGER)
    if challenger_mv is None:
        raise LookupError(f"model {reg.model_name!r} has no {CHALLENGER!r} version: run `gamesense engagement train`")
    champion_mv = get_version_by_alias(reg.model_name, CHAMPION)
    challenger = load_model(reg.model_name, str(challenger_mv.version))
    cand = evaluate_model(challenger, df)
    baselines: dict[str, float | None] = {}
    champ_metrics = None
    if champion_mv is None:
        baselines["champion"] = None
    elif str(champion_mv.version) == str(challenger_mv.version):
        baselines[f"champion v{champion_mv.version}"] = cand[reg.metric]  # same version: nothing to gain
    else:
        champ_metrics = evaluate_model(load_model(reg.model_name, str(champion_mv.version)), df)
        baselines[f"champion v{champion_mv.version}"] = champ_metrics[reg.metric]
    decision = decide_promotion(reg.metric, cand[reg.metric], baselines, min_delta=reg.min_delta)
    client = MlflowClient()
    if decision.promote:
        set_alias(reg.model_name, challenger_mv.version, CHAMPION)
        client.delete_registered_model_alias(reg.model_name, CHALLENGER)
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": reg.model_name,
        "promote": decision.promote,
        "reason": decision.reason,
        "metric": reg.metric,
        "challenger": str(challenger_mv.version),
        "challenger_score": cand[reg.metric],
        "champion": str(champion_mv.version) if champion_mv else None,
        "champion_score": champ_metrics[reg.metric] if champ_metrics else None,
        "eval_file": str(path),
        "eval_rows": len(df),
    }
    with mlflow.start_run(run_name=f"promote-v{challenger_mv.version}"):
        mlflow.set_tags({"task": "engagement", "decision": "promoted" if decision.promote else "kept",
                         "reason": decision.reason[:5000]})  # fmt: skip
        mlflow.log_params({k: record[k] for k in ("challenger", "champion", "eval_file", "eval_rows", "metric")})
        mlflow.log_metrics({"challenger_" + k: v for k, v in _scalar_metrics(cand).items()})
        if champ_metrics:
            mlflow.log_metrics({"champion_" + k: v for k, v in _scalar_metrics(champ_metrics).items()})
        mlflow.log_metric("promoted", float(decision.promote))
    client.set_model_version_tag(reg.model_name, str(challenger_mv.version), "promotion_decision",
                                 "promoted" if decision.promote else "kept")  # fmt: skip
    client.set_model_version_tag(reg.model_name, str(challenger_mv.version), "promotion_reason", decision.reason[:5000])
    log_path = work_dir() / "engagement" / "promotions.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    return record
