"""Shared fixtures: a tiny random Llama with the real SmolLM2 tokenizer, and an isolated working directory
(MLflow SQLite store, ZenML store, checkpoints) per test."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VIGGO_DIR = REPO.parent / "shared" / "datasets" / "viggo"


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh GAMESENSE_WORKDIR; MLflow and ZenML stores live inside it."""
    path = tmp_path / "work"
    monkeypatch.setenv("GAMESENSE_WORKDIR", str(path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama (hidden 32) saved with the real SmolLM2 tokenizer: same vocabulary and chat
    template as the default base model, trains and decodes in milliseconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from gamesense.models.base import load_tokenizer

    tokenizer = load_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def viggo_dir() -> Path:
    if not (VIGGO_DIR / "train.csv").is_file():
        pytest.skip("ViGGO data not found next to the repository (../shared/datasets/viggo)")
    return VIGGO_DIR
