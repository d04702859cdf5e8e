"""Resolve a model reference to a model ready to generate.

A reference is one of:
- a registry reference: ``models:/gamesense-<task>@champion`` or ``models:/gamesense-<task>/3``;
- a PEFT adapter directory (holds ``adapter_config.json``): loaded on its base model and merged;
- a ``.gguf`` file (e.g. from ``gamesense export``): read back by transformers' GGUF reader (tokenizer and chat
  template from the file's metadata), computing in fp32 whatever the requested dtype;
- anything else: a base model (hub id, local path, or the built-in SmolLM2 id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gamesense.models.base import load_base_model, load_tokenizer
from gamesense.models.hardware import inference_dtype
from gamesense.registry.refs import is_registry_ref, parse_model_ref


@dataclass
class InferenceModel:
    """A causal LM ready for generation and scoring.

    Attributes:
        model: causal LM in eval mode, LoRA weights merged into the base.
        tokenizer: matching tokenizer (pad token distinct from EOS where possible).
        description: what was loaded, e.g. ``adapter /x on HuggingFaceTB/SmolLM2-135M-Instruct``.
        base: base model reference.
        tags: the registry version's tags (task, metrics) for registry references, else empty.
    """

    model: object
    tokenizer: object
    description: str
    base: str
    tags: dict[str, str] = field(default_factory=dict)


def resolve_adapter_dir(ref: str) -> tuple[Path | None, dict[str, str]]:
    """Local adapter directory for an adapter path or a registry reference (None for a base model), and the
    registry version's tags.

    Raises:
        ValueError: malformed ``models:/`` reference.
        LookupError: registry reference that names no version (unknown model, alias or version).
    """
    if is_registry_ref(ref):
        from gamesense.registry.mlflow_store import download_version, resolve_version

        version = resolve_version(parse_model_ref(ref))
        return download_version(version), dict(version.tags or {})
    path = Path(ref).expanduser()
    if (path / "adapter_config.json").is_file():
        return path, {}
    return None, {}


def adapter_base(adapter_dir: Path) -> str:
    """The base model reference a PEFT adapter was trained on (its ``adapter_config.json``)."""
    return json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]


def load_merged_adapter(adapter_dir: Path, dtype: str = "auto"):
    """A PEFT adapter loaded on its base model (weights in ``dtype``, see
    :func:`~gamesense.models.base.load_base_model`) and merged into it: ``(model, tokenizer, base)``; the tokenizer
    is the adapter's where it saved one, else the base's."""
    from peft import PeftModel

    base = adapter_base(adapter_dir)
    model = PeftModel.from_pretrained(load_base_model(base, dtype=dtype), str(adapter_dir)).merge_and_unload()
    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    return model, load_tokenizer(str(adapter_dir) if has_tokenizer else base), base


def load_for_inference(ref: str, dtype: str = "auto") -> InferenceModel:
    """Load any model reference (see module doc) for generation; adapters are merged for speed, and on a CPU
    with native bf16 the merged weights are cast to bf16 (see :func:`~gamesense.models.hardware.inference_dtype`).

    Raises:
        ValueError / LookupError: see :func:`resolve_adapter_dir`; FileNotFoundError: a local-looking path
        that does not exist; OSError from transformers when a base model cannot be found.
    """
    if ref.endswith(".gguf"):
        model, tokenizer = _load_gguf(Path(ref).expanduser())
        return InferenceModel(model=model, tokenizer=tokenizer, description=f"GGUF {ref}", base=ref)
    adapter_dir, tags = resolve_adapter_dir(ref)
    if adapter_dir is None:
        if ref.startswith((".", "/", "~")) and not Path(ref).expanduser().exists():
            raise FileNotFoundError(f"model {ref!r}: no such file or directory")
        model = load_base_model(ref, dtype=dtype)
        tokenizer = load_tokenizer(ref)
        description, base = f"base {ref}", ref
    else:
        model, tokenizer, base = load_merged_adapter(adapter_dir, dtype)
        description = f"adapter {ref} on {base}"
    model.eval()
    target = inference_dtype(dtype)
    if not torch.cuda.is_available() and model.dtype != target:
        model.to(target)
    return InferenceModel(model=model, tokenizer=tokenizer, description=description, base=base, tags=tags)


def _load_gguf(path: Path):
    """A GGUF file through transformers' reader: ``(model in eval mode, tokenizer)``; the pad token is set as for
    any other model.

    Raises:
        FileNotFoundError: no such file.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gamesense.models.base import set_pad_token

    if not path.is_file():
        raise FileNotFoundError(f"model {str(path)!r}: no such file")
    # fp32: transformers keeps GGUF weights packed and computes in fp32; another dtype only adds casts
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = set_pad_token(AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))
    if model.config.pad_token_id is None or model.config.pad_token_id == model.config.eos_token_id:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer
