"""GameSense: turn gaming data into production models (LLM adapters and tabular models) with MLOps around them."""

__version__ = "0.1.0"
