"""Production monitoring: data and prediction drift (Evidently) and the retraining rule."""
