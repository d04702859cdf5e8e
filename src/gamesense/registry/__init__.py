"""MLflow tracking and model registry: store set-up, versions, aliases and the promotion gate."""

from gamesense.registry.mlflow_store import (
    CHALLENGER,
    CHAMPION,
    PromotionDecision,
    decide_promotion,
    get_version_by_alias,
    list_model_versions,
    set_alias,
    setup_tracking,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "PromotionDecision",
    "decide_promotion",
    "get_version_by_alias",
    "list_model_versions",
    "set_alias",
    "setup_tracking",
]
