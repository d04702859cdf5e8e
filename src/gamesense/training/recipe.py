"""The LLM recipe: one YAML file (``recipes/*.yaml``) that states everything one fine-tuning run uses.

Its shared sections (model, data, LoRA, runtime, generation, registry) are declared in :mod:`gamesense.config`;
``task_options`` are validated by the task; every other top-level key is a training stage's section, named after
a training method (:mod:`gamesense.training.methods`) and validated against that method's TRL config class, so
a stage's settings are TRL's own, not a hand-made mirror. ``stages`` lists the methods to run, in order; each
needs its section. A new method is therefore usable in recipes without any change here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from gamesense.config import (DataSection, GenerationSection, LoraSection, ModelSection, RecipeError, RegistrySection,
                              RuntimeSection, StrictModel, read_recipe, recipe_rows)  # fmt: skip
from gamesense.training.methods import find_method, get_method, known_methods


class LLMRecipe(StrictModel):
    """A recipe for one LLM gaming task (see ``recipes/*.yaml``): data, base model, adapter shape, the
    training stages with their TRL settings (one section per method, e.g. ``sft:``), evaluation decoding,
    registry and promotion gate.

    Raises (on validation, as :class:`~gamesense.config.RecipeError` through :func:`~gamesense.config.load_recipe`):
        an unknown key (a top-level key that is no section and no training method), a stage section key TRL's
        config does not have or of the wrong type, a stage listed without its section or listed twice.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True, protected_namespaces=())

    task: str = Field(description="task plugin name (a module under gamesense.tasks, or registered)")
    task_options: dict[str, Any] = Field(description="the task's own options, validated by the task")
    model: ModelSection
    data: DataSection
    lora: LoraSection
    stages: list[str] = Field(min_length=1, description="training stages in order, e.g. [sft] or [sft, reward, grpo]: "
                              "training methods, each with a section of its name (its TRL config's settings)")
    runtime: RuntimeSection
    generation: GenerationSection
    registry: RegistrySection
    zenml: bool = Field(description="run as a ZenML pipeline (false: the same steps as plain calls)")

    @model_validator(mode="after")
    def _stage_sections(self) -> LLMRecipe:
        extra = self.__pydantic_extra__ or {}
        for key, section in extra.items():
            method = find_method(key)
            if method is None:
                raise _recipe_error(f"recipe error: unknown key '{key}'")
            if section is None:
                continue
            if not isinstance(section, dict):
                raise _recipe_error(f"recipe error: '{key}': the settings of training method {key!r} must be a "
                                    f"mapping of {method.config_class} keys, got {section!r}")  # fmt: skip
            try:
                extra[key] = method.validate_settings(section)
            except RecipeError as err:
                raise _recipe_error(str(err)) from None
        for stage in self.stages:
            if find_method(stage) is None:
                raise ValueError(f"stages: unknown training method {stage!r}; known: {', '.join(known_methods())}")
            if extra.get(stage) is None:
                raise ValueError(f"stage {stage!r} is listed in stages but the recipe has no {stage!r} section")
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages: each stage kind may appear once, got {self.stages}")
        return self

    def stage_settings(self, stage: str) -> dict[str, Any]:
        """The TRL settings of ``stage`` as written in the recipe (a copy; empty when it has no section)."""
        return dict((self.__pydantic_extra__ or {}).get(stage) or {})

    def stage_sections(self) -> list[str]:
        """Names of the training-stage sections the recipe holds (listed in ``stages`` or not)."""
        return list(self.__pydantic_extra__ or {})


def _recipe_error(message: str) -> PydanticCustomError:
    return PydanticCustomError("recipe_error", "{message}", {"message": message})


def llm_recipe_rows(recipe: str | Path, options: type[BaseModel], overrides: list[str] | None = None):
    """Every key of an LLM recipe with its value and meaning (:func:`~gamesense.config.recipe_rows`): stage
    sections explained by their TRL config's help, ``task_options`` by the task's ``options`` model.

    Raises:
        RecipeError: the recipe file cannot be read; LookupError: a stage section of an unknown method.
    """
    stages = [key for key in read_recipe(recipe, overrides) if key not in LLMRecipe.model_fields]
    sections = {"task_options": options, **{key: get_method(key).settings_model() for key in stages}}
    return recipe_rows(recipe, LLMRecipe, overrides, sections=sections)
