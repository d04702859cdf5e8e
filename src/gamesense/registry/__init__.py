"""MLflow tracking and model registry: store set-up, model references, versions, aliases and the one
promotion gate that every GameSense model (LLM adapter or tabular) goes through."""
