"""Player engagement (High / Medium / Low) from game telemetry: everything specific to this tabular task.

- :mod:`~gamesense.tasks.engagement.schema`: the 13 columns, reading/writing, :func:`validate_frame`;
- :mod:`~gamesense.tasks.engagement.model`: the engineered feature, the LightGBM pipeline and the baselines;
- :mod:`~gamesense.tasks.engagement.metrics`: held-out metrics;
- :mod:`~gamesense.tasks.engagement.recipe`: the recipe (``recipes/engagement.yaml``).

Its training, serving and monitoring live in the generic layers, named for it:
:mod:`gamesense.training.engagement`, :mod:`gamesense.serving.engagement`, :mod:`gamesense.monitoring.engagement`
and :mod:`gamesense.pipelines.engagement`. Not an LLM task: it defines no ``TASK``.
"""

from gamesense.tasks.engagement.metrics import compute_metrics
from gamesense.tasks.engagement.model import (_feature_names, add_features, build_baseline, build_lightgbm,
                                              build_pipeline, build_preprocessor, feature_importance,
                                              plot_feature_importance)  # fmt: skip
from gamesense.tasks.engagement.recipe import (DriftRule, EngagementData, EngagementRecipe, EngagementRegistry,
                                               EngagementServing, LightGBMParams)  # fmt: skip
from gamesense.tasks.engagement.schema import (CATEGORICAL_FEATURES, CATEGORIES, CLASSES, COLUMNS,
                                               ENGINEERED_FEATURES, FEATURES, ID_COLUMN, MAX_ID_LENGTH, NUMERIC,
                                               NUMERIC_FEATURES, PREDICTION, PROBA_PREFIX, RAW_NUMERIC_FEATURES, TARGET,
                                               NumericSpec, SchemaError, ValidationResult, player_ids, read_table,
                                               split_xy, validate_frame, write_table)  # fmt: skip

# models registered before the package split name `gamesense.tasks.engagement.add_features` / `._feature_names`
# in their skops file: both stay importable from here.
__all__ = ["CATEGORICAL_FEATURES", "CATEGORIES", "CLASSES", "COLUMNS", "ENGINEERED_FEATURES", "FEATURES", "ID_COLUMN",
           "MAX_ID_LENGTH", "NUMERIC", "NUMERIC_FEATURES", "PREDICTION", "PROBA_PREFIX", "RAW_NUMERIC_FEATURES",
           "TARGET", "DriftRule", "EngagementData", "EngagementRecipe", "EngagementRegistry", "EngagementServing",
           "LightGBMParams", "NumericSpec", "SchemaError", "ValidationResult", "_feature_names", "add_features",
           "build_baseline", "build_lightgbm", "build_pipeline", "build_preprocessor", "compute_metrics",
           "feature_importance", "plot_feature_importance", "player_ids", "read_table", "split_xy", "validate_frame",
           "write_table"]
