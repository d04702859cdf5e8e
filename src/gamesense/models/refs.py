"""Resolve a model reference to a ready-to-generate model.

A reference is one of:
- a registry reference: ``models:/gamesense-viggo@champion`` or ``models:/gamesense-viggo/3``;
- a PEFT adapter directory (holds ``adapter_config.json``): loaded on its base model and merged;
- anything else: a base model (hub id, local path, or the built-in SmolLM2 id).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from gamesense.models.base import load_base_model, load_tokenizer

_REGISTRY_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


@dataclass
class LoadedModel:
    """A model ready for :func:`gamesense.evaluation.generation.generate_batch`.

    Attributes:
        model: causal LM in eval mode, LoRA weights merged into the base.
        tokenizer: matching tokenizer (pad token distinct from EOS where possible).
        description: what was loaded, e.g. ``adapter /x on HuggingFaceTB/SmolLM2-135M-Instruct``.
        base: base model reference.
    """

    model: object
    tokenizer: object
    description: str
    base: str


def resolve_adapter_dir(ref: str) -> Path | None:
    """Local adapter directory for an adapter path or a registry reference; None for a base model.

    Raises:
        ValueError: malformed ``models:/`` reference.
        LookupError: registry reference that names no version (unknown model, alias or version).
    """
    if ref.startswith("models:/"):
        match = _REGISTRY_REF.match(ref)
        if not match:
            raise ValueError(f"model reference {ref!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        from mlflow.exceptions import MlflowException

        from gamesense.registry.mlflow_store import download_version

        try:
            path = download_version(match["name"], match["alias"] or match["version"])
        except MlflowException as err:
            raise LookupError(f"model reference {ref!r} not found in the registry: {err.message}") from None
        return path
    path = Path(ref).expanduser()
    if (path / "adapter_config.json").is_file():
        return path
    return None


def load_for_inference(ref: str, dtype: str = "auto") -> LoadedModel:
    """Load any model reference (see module doc) for generation; adapters are merged for speed.

    Raises:
        ValueError / LookupError: see :func:`resolve_adapter_dir`; OSError from transformers when a base
        model cannot be found.
    """
    adapter_dir = resolve_adapter_dir(ref)
    if adapter_dir is None:
        model = load_base_model(ref, dtype=dtype)
        tokenizer = load_tokenizer(ref)
        description, base = f"base {ref}", ref
    else:
        from peft import PeftModel

        base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
        model = load_base_model(base, dtype=dtype)
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
        tokenizer = load_tokenizer(str(adapter_dir) if has_tokenizer else base)
        description = f"adapter {ref} on {base}"
    model.eval()
    if not torch.cuda.is_available() and dtype == "auto":
        from gamesense.training.sft import cpu_supports_bf16

        if cpu_supports_bf16():
            model.to(torch.bfloat16)  # native bf16 matmuls: ~2x faster decoding on this class of CPU
    return LoadedModel(model=model, tokenizer=tokenizer, description=description, base=base)
