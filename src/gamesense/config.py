"""Recipes: YAML files validated by pydantic, overridable from the command line.

A recipe is one YAML file (see ``recipes/``). ``--set a.b=value`` overrides one key; the value is parsed
as YAML, so ``--set training.max_steps=50`` gives an int and ``--set lora.target_modules=[q_proj,v_proj]``
a list. Unknown keys and wrong types raise :class:`RecipeError` with a one-line message naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

T = TypeVar("T", bound=BaseModel)

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


class RecipeError(ValueError):
    """A recipe that cannot be used; the message is one line naming the offending key."""


class StrictModel(BaseModel):
    """Base for recipe sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a nested dict (in place; also returned).

    Raises:
        RecipeError: an override without ``=`` or whose path runs through a non-mapping value.
    """
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. training.max_steps=50")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"recipe error: unknown key '{key}'"
    if first["type"] == "missing":
        return f"recipe error: missing key '{key}'"
    return f"recipe error: '{key}': {first['msg']} (got {first.get('input')!r})"


def resolve_recipe_path(recipe: str | Path) -> Path:
    """Find a recipe by path, or by bare name (``viggo`` -> ``recipes/viggo.yaml``).

    Raises:
        RecipeError: no such file.
    """
    path = Path(recipe)
    candidates = [path, RECIPES_DIR / path, RECIPES_DIR / f"{path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise RecipeError(f"recipe not found: {recipe} (looked in . and {RECIPES_DIR})")


def load_recipe(recipe: str | Path, model_cls: type[T], overrides: list[str] | None = None) -> T:
    """Read a YAML recipe, apply ``--set`` overrides and validate it as ``model_cls``.

    Raises:
        RecipeError: file missing, not a YAML mapping, unknown key or wrong type (one line naming the key).
    """
    path = resolve_recipe_path(recipe)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe error: {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe error: {path} must hold a mapping of sections, got {type(data).__name__}")
    apply_overrides(data, overrides or [])
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_format_validation_error(err)) from None


def resolve_data_path(path: str | Path) -> Path:
    """Resolve a data path from a recipe: as given (relative to the current directory), else relative to the
    repository root that holds ``recipes/`` (so the built-in recipes work from any directory)."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    fallback = RECIPES_DIR.parent / path
    return fallback if fallback.exists() else path


# --- the LLM fine-tuning recipe, shared by every text-to-text gaming task -------------------------------


class ModelSection(StrictModel):
    """Which base model to adapt and how to load it."""

    base: str = Field("HuggingFaceTB/SmolLM2-135M-Instruct", description="hub id or local path")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, fp32 on CPU"
    )
    load_in_4bit: bool = Field(False, description="QLoRA: 4-bit NF4 base weights via bitsandbytes (GPU only)")
    attn_implementation: str | None = Field(None, description="e.g. sdpa, flash_attention_2; None: library default")


class DataSection(StrictModel):
    """Training and evaluation files (CSV or JSONL in the task's format)."""

    train_file: str = "../shared/datasets/viggo/train.csv"
    eval_file: str = "../shared/datasets/viggo/validation.csv"
    max_train_rows: int | None = Field(None, ge=1, description="use only the first N training rows")
    max_eval_rows: int | None = Field(None, ge=1, description="use only the first N evaluation rows")


class LoraSection(StrictModel):
    """LoRA adapter shape (PEFT ``LoraConfig``)."""

    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("all-linear")


class TrainingSection(StrictModel):
    """Optimisation knobs, named as in TRL's ``SFTConfig``."""

    output_dir: str | None = Field(None, description="checkpoints; default: <workdir>/runs/<task>/checkpoints")
    max_steps: int = Field(-1, description="-1: run num_train_epochs")
    num_train_epochs: float = Field(1.0, gt=0)
    per_device_train_batch_size: int = Field(16, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_length: int = Field(256, ge=8, description="truncate longer examples (tokens)")
    packing: bool = Field(False, description="sample packing instead of dynamic padding")
    save_steps: int = Field(50, ge=1, description="checkpoint every N optimizer steps (for --resume)")
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(10, ge=1)
    seed: int = 42
    mixed_precision: Literal["auto", "bf16", "no"] = Field(
        "auto", description="auto: bf16 autocast on GPUs and on CPUs with AVX512-BF16/AMX, else fp32"
    )
    gradient_checkpointing: bool = False
    fused_loss: bool | None = Field(
        None, description="TRL's chunked LM-head loss kernel (saves GPU memory, slow on CPU); None: on GPU only"
    )


class GenerationSection(StrictModel):
    """Batched greedy decoding for evaluation."""

    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(32, ge=1)


class RegistrySection(StrictModel):
    """MLflow tracking and model registry."""

    tracking_uri: str | None = Field(None, description="None: SQLite store in the working directory")
    experiment: str = "gamesense-viggo"
    model_name: str = "gamesense-viggo"
    metric: str = Field("exact_match", description="promotion metric (higher is better)")


class LLMRecipe(StrictModel):
    """A LoRA fine-tuning recipe for one text-to-text gaming task (see ``recipes/viggo.yaml``)."""

    task: Literal["viggo"] = "viggo"
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    system_prompt: str | None = Field(None, description="None: the task's default short instruction")
    lora: LoraSection = LoraSection()
    training: TrainingSection = TrainingSection()
    generation: GenerationSection = GenerationSection()
    registry: RegistrySection = RegistrySection()
    zenml: bool = Field(True, description="run as a ZenML pipeline (False: the same steps as plain calls)")
