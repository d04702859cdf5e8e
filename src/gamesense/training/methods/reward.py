"""Reward modelling: TRL's ``RewardTrainer`` + ``RewardConfig`` on ``prompt``/``chosen``/``rejected`` pairs.

The reward model is the base model with a one-output sequence-classification head and a new LoRA adapter. It
starts from the latest policy merged into the base weights, as InstructGPT's reward model starts from the SFT
model (Ouyang et al. 2022, sec. 3.5), so it begins with the task's features instead of the base model's; the
policy it started from is recorded next to its adapter (:data:`REWARD_INIT_FILE`). Its pairwise accuracy on
held-out pairs is reported as TRL's ``RewardTrainer`` measures it.
"""

from __future__ import annotations

import json
from pathlib import Path

from gamesense.models.base import load_tokenizer, resolve_base_model, whole_weights
from gamesense.models.hardware import attention_implementation, load_dtype
from gamesense.tasks.base import Record
from gamesense.training.methods.base import StageInputs, TrainingMethod, lora_config, preference_dataset

#: written next to a reward model's adapter: the policy adapter merged into the base before it was trained
REWARD_INIT_FILE = "initialised_from.json"


class Reward(TrainingMethod):
    """A learned reward model (a scalar score per answer) from preference pairs; GRPO uses it next to the
    task's rule rewards."""

    name = "reward"
    config_class = "RewardConfig"
    trains_on = "preference"
    produces = "reward_model"
    scores_on = "preference"

    def build_trainer(self, inputs: StageInputs, args):
        from trl import RewardTrainer

        recipe = inputs.recipe
        model = load_reward_model(recipe, None, args.seed, init_policy=inputs.policy_adapter)
        return RewardTrainer(model=model, args=args, train_dataset=preference_dataset(inputs.train_records),
                             processing_class=load_tokenizer(recipe.model.base),
                             peft_config=lora_config(recipe, "SEQ_CLS", model))  # fmt: skip

    def after_training(self, trainer, inputs: StageInputs, adapter_dir: Path, main_process: bool) -> dict[str, float]:
        """Records the policy the reward model started from; scores the held-out pairs."""
        if main_process and inputs.policy_adapter is not None:
            started_from = {"policy_adapter": str(Path(inputs.policy_adapter).resolve())}
            (adapter_dir / REWARD_INIT_FILE).write_text(json.dumps(started_from))
        if not inputs.eval_records:
            return {}
        return {"pairwise_accuracy": pairwise_accuracy(trainer, inputs.eval_records)}


@whole_weights()  # merged whole, also after a ZeRO-3 trainer config exists; the trainer shards it afterwards
def load_reward_model(recipe, adapter: Path | None = None, seed: int = 42, init_policy: Path | None = None):
    """The base model with a one-output sequence-classification head (a reward model). The new head's
    initialisation is seeded so runs repeat.

    Args:
        recipe: the run's :class:`~gamesense.training.recipe.LLMRecipe` (base model, dtype, attention).
        adapter: a trained reward-model adapter to merge; the policy adapter it names in
            :data:`REWARD_INIT_FILE` (if any) is merged before it.
        init_policy: a policy adapter to merge into the base weights first (see the module doc).
    """
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(seed)
    kwargs = {"num_labels": 1, "dtype": load_dtype(recipe.model.dtype, training=True)}
    attention = attention_implementation(recipe.model.attn_implementation, training=True)
    if attention:
        kwargs["attn_implementation"] = attention
    model = AutoModelForSequenceClassification.from_pretrained(resolve_base_model(recipe.model.base), **kwargs)
    model.config.pad_token_id = load_tokenizer(recipe.model.base).pad_token_id
    if adapter is not None and (Path(adapter) / REWARD_INIT_FILE).is_file():
        init_policy = Path(json.loads((Path(adapter) / REWARD_INIT_FILE).read_text())["policy_adapter"])
    for merged in (init_policy, adapter):
        if merged is None:
            continue
        config = PeftConfig.from_pretrained(str(merged))
        if config.task_type == "CAUSAL_LM":  # a policy adapter: its decoder layers have the same names here
            config.task_type = None  # a plain PeftModel, without the causal-LM generation hooks
        model = PeftModel.from_pretrained(model, str(merged), config=config).merge_and_unload()
    return model


def pairwise_accuracy(trainer, pairs: list[Record]) -> float:
    """Share of held-out pairs whose chosen answer the reward model scores above the rejected one (ties count
    as wrong), as TRL's ``RewardTrainer`` measures it during evaluation."""
    metrics = trainer.evaluate(eval_dataset=preference_dataset(pairs))
    return float(metrics["eval_accuracy"])


METHOD = Reward()
