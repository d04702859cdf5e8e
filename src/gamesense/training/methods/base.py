"""What a training method is: one TRL trainer + its config class, the records it trains on, what it produces.

A method is a :class:`TrainingMethod` subclass in its own module of :mod:`gamesense.training.methods`, exposed
as ``METHOD`` (an instance); its name is the stage kind recipes list (``stages: [sft, dpo]``) and the name of
the recipe section passed to its TRL config class as is. The generic loop around every method (checkpoints,
resume, callbacks, saving the adapter, metrics) is :func:`gamesense.training.stage.run_stage`; a method only
builds its trainer.

LoRA is shared by every method: policy methods continue one adapter (the first trains a new one on the base
model, later ones load the previous policy's adapter as trainable), so the registered artifact is always one
plain PEFT adapter.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from gamesense.config import RecipeError, first_sentence, format_validation_error
from gamesense.models.base import load_base_model
from gamesense.tasks.base import Record, Task

if TYPE_CHECKING:
    from gamesense.training.recipe import LLMRecipe

#: the record formats a method trains on: ``sft`` (prompt/completion), ``preference`` (prompt/chosen/rejected),
#: ``prompts`` (prompt and the task's columns: the method samples its own completions)
RecordKind = Literal["sft", "preference", "prompts"]


def build_records(kind: RecordKind, task: Task, examples: list) -> list[Record]:
    """The records of ``kind`` built from typed examples by the task.

    Raises:
        NotImplementedError: the task cannot build them (e.g. no preference pairs).
    """
    if kind == "preference":
        return task.preference_records(examples)
    records = task.sft_records(examples)
    if kind == "prompts":  # the method samples its own completions; the other columns feed the reward functions
        return [{k: v for k, v in r.items() if k != "completion"} for r in records]
    return records


class StageResult(BaseModel):
    """What one training stage produced.

    Attributes:
        stage: the method's name (``sft``, ``reward``, ``dpo``, ``grpo``, ...).
        produces: ``policy`` (a generating adapter) or ``reward_model``.
        adapter_dir: PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``) and tokenizer.
        metrics: train_loss, train_runtime_s, train_tokens (non-pad, where the trainer counts them),
            train_tokens_per_s, train_steps, train_epochs, train_bf16 (0/1), resumed_from_step (0: fresh), plus
            the method's own (the reward method: ``pairwise_accuracy`` on held-out pairs).
        log_history: the trainer's log records (``loss``, ``learning_rate``, ... per logging step).
        is_main_process: False on the other ranks of a multi-process (DDP) run, which save nothing.
    """

    stage: str
    produces: Literal["policy", "reward_model"]
    adapter_dir: str
    metrics: dict[str, float]
    log_history: list[dict[str, Any]] = []
    is_main_process: bool = True


@dataclass
class StageInputs:
    """Everything a stage trains from.

    Attributes:
        recipe: the run's recipe (base model, LoRA shape, runtime, the stage's TRL settings).
        task: the recipe's task (rewards come from it).
        train_records: records in the method's format (:attr:`TrainingMethod.trains_on`).
        stage_dir: ``checkpoints/`` and ``adapter/`` go here.
        eval_records: held-out records the method reports on (:attr:`TrainingMethod.scores_on`); None: none.
        policy_adapter: adapter of the previous policy stage to continue (None: a new adapter).
        reward_adapter: adapter of a previous reward stage (used by ``grpo``).
        resume: continue from the newest checkpoint in the stage's checkpoint folder (fresh when none).
        show_progress: a progress bar with loss and tokens/s.
    """

    recipe: LLMRecipe
    task: Task
    train_records: list[Record]
    stage_dir: Path
    eval_records: list[Record] | None = None
    policy_adapter: Path | None = None
    reward_adapter: Path | None = None
    resume: bool = False
    show_progress: bool = True


class TrainingMethod(ABC):
    """One training method, TRL's layout: a trainer and its config class side by side.

    Class attributes:
        name: the stage kind in recipes and the name of the recipe section holding its TRL settings.
        config_class: the TRL config class (name in the ``trl`` package) the section is validated against and
            passed to.
        trains_on: the record format it trains on (:data:`RecordKind`).
        produces: ``policy`` (an adapter that generates; evaluated and registered) or ``reward_model``.
        scores_on: held-out records it reports a metric on (None: none).
        samples_while_training: it generates with the model during training, outside autocast (PEFT's input
            cast must then stay on).
    """

    name: ClassVar[str]
    config_class: ClassVar[str]
    trains_on: ClassVar[RecordKind]
    produces: ClassVar[Literal["policy", "reward_model"]]
    scores_on: ClassVar[RecordKind | None] = None
    samples_while_training: ClassVar[bool] = False

    def config_type(self) -> type:
        """TRL's config dataclass of this method (``trl.SFTConfig`` for ``sft``)."""
        import trl

        return getattr(trl, self.config_class)

    def settings_model(self) -> type[BaseModel]:
        """A pydantic model of the keyword arguments of :meth:`config_type`: every ``__init__`` field with its
        annotated type (descriptions: the first sentence of TRL's help), none required, unknown keys forbidden.
        ``bf16`` also takes ``"auto"`` (bf16 where the hardware has native bf16; resolved at training time)."""
        return _settings_model(self.config_type())

    def validate_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The recipe section of this method checked against its TRL config class; returned as given (types
        coerced).

        Raises:
            RecipeError: unknown key or wrong type, naming ``<name>.<key>``.
        """
        try:
            validated = self.settings_model().model_validate(settings)
        except ValidationError as err:
            raise RecipeError(format_validation_error(err, prefix=f"{self.name}.")) from None
        return validated.model_dump(exclude_unset=True)

    @abstractmethod
    def build_trainer(self, inputs: StageInputs, args):
        """The TRL trainer of this method on ``inputs`` with ``args`` (an instance of :meth:`config_type`).

        Raises:
            ValueError: the inputs cannot train this method (e.g. GRPO without any reward).
        """

    def after_training(self, trainer, inputs: StageInputs, adapter_dir: Path, main_process: bool) -> dict[str, float]:
        """Work after training, once the adapter is saved (files next to it, held-out scores); returns metrics to
        add to the stage's. Default: nothing."""
        return {}


@functools.cache
def _settings_model(cls: type) -> type[BaseModel]:
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.init:
            help_text = first_sentence((field.metadata or {}).get("help") or "")
            fields[field.name] = (hints.get(field.name, Any), Field(None, description=help_text))
    fields["bf16"] = (bool | Literal["auto"] | None,
                      Field(None, description="bf16 mixed precision; auto: where native"))  # fmt: skip
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    return create_model(f"{cls.__name__}Settings", __config__=config, **fields)


# --- LoRA, shared by every method ---------------------------------------------------------------------------


def lora_config(recipe: LLMRecipe, task_type: str = "CAUSAL_LM", model=None):
    """PEFT ``LoraConfig`` from the recipe's ``lora`` section.

    Args:
        model: the model the adapters go on; needed with ``lora.top_layers`` (its decoder layers are counted).

    Raises:
        ValueError: ``lora.top_layers`` without ``model``, or with ``target_modules`` given as a regex.
    """
    from peft import LoraConfig

    lora = recipe.lora
    targets = lora.target_modules
    if lora.top_layers is not None:
        if model is None:
            raise ValueError("lora.top_layers needs the model, to count its decoder layers")
        targets = top_layer_targets(model, lora.target_modules, lora.top_layers)
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                      task_type=task_type)  # fmt: skip


_DECODER_LINEAR = re.compile(r"(?:.*\.)?layers\.(\d+)\.(?:.*\.)?([^.]+)")


def top_layer_targets(model, target_modules: str | list[str], top_layers: int) -> str:
    """A PEFT ``target_modules`` regex for the recipe's target modules inside the last ``top_layers`` decoder
    layers (``...layers.<i>...``). Gradients then stop at the lowest adapted layer, so the backward pass skips the
    layers below it: with 15 of SmolLM2-135M's 30 layers a CPU step is ~1.4x faster.

    Raises:
        ValueError: ``target_modules`` is a regex (only ``all-linear`` or a list of names can be narrowed), or the
            model has no ``layers.<i>`` linear modules among the targets.
    """
    import torch

    if isinstance(target_modules, str) and target_modules != "all-linear":
        raise ValueError(f"lora.top_layers works with target_modules all-linear or a list of names, "
                         f"not the pattern {target_modules!r}")  # fmt: skip
    wanted = None if target_modules == "all-linear" else set(target_modules)
    names = set()
    for name, module in model.named_modules():
        match = _DECODER_LINEAR.fullmatch(name)
        if match and isinstance(module, torch.nn.Linear) and (wanted is None or match[2] in wanted):
            names.add(match[2])
    if not names:
        raise ValueError(f"lora.top_layers: no linear modules {sorted(wanted or [])} inside layers.<i> of the model")
    num_layers = model.config.num_hidden_layers
    layers = "|".join(str(i) for i in range(max(0, num_layers - top_layers), num_layers))
    return rf".*\.layers\.({layers})\.(?:.*\.)?({'|'.join(sorted(names))})"


def load_policy(recipe: LLMRecipe, adapter: Path | None):
    """``(model, peft_config)``: the base model with a new LoRA config, or with ``adapter`` loaded trainable (and
    no config: the trainer then trains the loaded adapter)."""
    model = load_base_model(recipe.model.base, dtype=recipe.model.dtype, load_in_4bit=recipe.model.load_in_4bit,
                            attn_implementation=recipe.model.attn_implementation, training=True)  # fmt: skip
    if adapter is None:
        return model, lora_config(recipe, model=model)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter), is_trainable=True), None


def preference_dataset(records: list[Record]):
    """A ``datasets.Dataset`` of the ``prompt``/``chosen``/``rejected`` columns of preference records (the other
    columns would reach the trainer's collator)."""
    from datasets import Dataset

    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records])
