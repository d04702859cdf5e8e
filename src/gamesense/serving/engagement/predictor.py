"""Registered engagement models at inference time: loading a version from the registry
(:func:`load_engagement_model`), and :class:`FastPredictor`, a vectorised predict path equivalent to the fitted
scikit-learn pipeline, whose LightGBM trees are compiled to native code
(:mod:`gamesense.serving.engagement.compiled_trees`) where possible."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gamesense.registry.mlflow_store import resolve_version
from gamesense.registry.refs import RegistryRef, is_registry_ref, parse_model_name
from gamesense.serving.engagement.compiled_trees import compile_booster
from gamesense.tasks import engagement as task


class FastPredictor:
    """Vectorised equivalent of ``pipeline.predict_proba`` for a fitted LightGBM engagement pipeline.

    The sklearn pipeline stays the logged model; this reads its fitted parameters (scaler mean/scale,
    one-hot categories, LightGBM booster) and builds the model matrix with numpy instead of going through
    ColumnTransformer/OneHotEncoder on object columns, which dominates batch time.

    Trees are compiled to native code with lleaves when available (:mod:`gamesense.serving.engagement.compiled_trees`);
    otherwise LightGBM's ``Booster.predict`` scores the matrix.

    Args:
        pipeline: a fitted pipeline from :func:`gamesense.tasks.engagement.build_lightgbm`.
        num_threads: threads for large batches (0: library default).
        compiled: try the compiled trees.

    Raises:
        TypeError: the pipeline is not a LightGBM engagement pipeline.
    """

    def __init__(self, pipeline, num_threads: int = 0, compiled: bool = True):
        steps = getattr(pipeline, "named_steps", {})
        model = steps.get("model")
        if model is None or not hasattr(model, "booster_"):
            raise TypeError("FastPredictor needs a fitted LightGBM engagement pipeline")
        pre = steps["preprocess"]
        scaler = pre.named_transformers_["num"]
        encoder = pre.named_transformers_["cat"]
        self.mean = np.asarray(scaler.mean_, dtype=np.float64)
        self.scale = np.asarray(scaler.scale_, dtype=np.float64)
        self.categories = [list(c) for c in encoder.categories_]
        self.booster = model.booster_
        self.classes = [str(c) for c in model.classes_]
        self.num_threads = num_threads
        self.n_columns = len(task.NUMERIC_FEATURES) + sum(len(c) for c in self.categories)
        self.compiled = compile_booster(self.booster) if compiled else None

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """Model matrix, shape ``(n_rows, n_columns)`` float64, identical to the pipeline's preprocess output."""
        n = len(X)
        M = np.zeros((n, self.n_columns), dtype=np.float64)
        for j, name in enumerate(task.RAW_NUMERIC_FEATURES):
            M[:, j] = X[name].to_numpy(np.float64)
        j = len(task.RAW_NUMERIC_FEATURES)
        M[:, j] = M[:, task.RAW_NUMERIC_FEATURES.index("SessionsPerWeek")] * M[
            :, task.RAW_NUMERIC_FEATURES.index("AvgSessionDurationMinutes")
        ]
        k = len(task.NUMERIC_FEATURES)
        M[:, :k] -= self.mean
        M[:, :k] /= self.scale
        rows = np.arange(n)
        off = k
        for name, cats in zip(task.CATEGORICAL_FEATURES, self.categories):
            col = X[name]
            if isinstance(col.dtype, pd.CategoricalDtype) and list(col.cat.categories) == cats:
                codes = col.cat.codes.to_numpy()
            else:
                codes = pd.Categorical(col, categories=cats).codes
            ok = codes >= 0
            M[rows[ok], off + codes[ok]] = 1.0
            off += len(cats)
        return M

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Class probabilities, shape ``(n_rows, 3)``, columns in :attr:`classes` order."""
        if len(X) == 0:
            return np.zeros((0, len(self.classes)))
        M = self.transform(X)
        if self.compiled is not None:
            return self.compiled.predict(M)
        # one thread for small inputs: OpenMP start-up/spinning dominates and hurts tail latency
        return self.booster.predict(M, num_threads=1 if len(X) < 1000 else self.num_threads)

    def predict_frame(self, X: pd.DataFrame) -> pd.DataFrame:
        """Predicted level and one ``proba_<class>`` column per class, index aligned with ``X``."""
        proba = self.predict_proba(X)
        out = pd.DataFrame(index=X.index)
        out[task.PREDICTION] = pd.Categorical.from_codes(proba.argmax(axis=1), categories=self.classes) if len(X) else []
        for i, cls in enumerate(self.classes):
            out[task.PROBA_PREFIX + cls] = proba[:, i]
        return out


@dataclass
class EngagementModel:
    """A registered engagement model ready to predict. ``predictor``: the fast path (None if not LightGBM)."""

    name: str
    version: str
    pipeline: Any
    predictor: FastPredictor | None
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


def load_engagement_model(ref: str | RegistryRef) -> EngagementModel:
    """Load a registered version: ``ref`` is a registry reference (``NAME``, its champion; ``NAME@ALIAS``,
    ``NAME/VERSION``, ``models:/...``), or any other MLflow model URI (``runs:/...``, a path).

    An alias is resolved to a version first, so the version reported is the one loaded even when the alias moves
    concurrently.

    Raises:
        LookupError: alias or version not found, or the model cannot be loaded.
        ValueError: a name of none of those forms (e.g. ``models:/`` without a version or alias).
    """
    import mlflow

    local = isinstance(ref, str) and (ref.startswith((".", "/", "~")) or Path(ref).expanduser().exists())
    if isinstance(ref, str) and not is_registry_ref(ref) and (":/" in ref or local):
        name, version, run_id, uri = ref, ref, None, ref  # a run or a path: no registry version to name
    else:
        parsed = parse_model_name(ref) if isinstance(ref, str) else ref
        try:
            mv = resolve_version(parsed)
        except LookupError:
            what = f"alias {parsed.alias!r}" if parsed.alias else f"version {parsed.version}"
            raise LookupError(f"model {parsed.name!r} has no {what}: train and promote first") from None
        name, version, run_id = parsed.name, str(mv.version), mv.run_id
        uri = f"models:/{name}/{version}"
    try:
        pipeline = mlflow.sklearn.load_model(uri)
    except Exception as err:  # MlflowException, OSError: name the URI
        raise LookupError(f"cannot load {uri}: {str(err).splitlines()[0]}") from err
    try:
        predictor = FastPredictor(pipeline)
    except (TypeError, KeyError, AttributeError):
        predictor = None
    return EngagementModel(name, version, pipeline, predictor, run_id)
