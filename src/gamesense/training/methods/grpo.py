"""Group relative policy optimisation (GRPO; Shao et al. 2024): TRL's ``GRPOTrainer`` + ``GRPOConfig`` on prompts.

It samples several completions per prompt with the current policy and scores them with the task's rule rewards
(:meth:`gamesense.tasks.base.Task.reward_functions`, TRL's signature ``(completions, **columns)``; the other
columns of a prompt record reach them) plus, when a reward stage ran before it, the learned reward model. It
continues the policy adapter.
"""

from __future__ import annotations

from gamesense.models.base import load_tokenizer
from gamesense.training.methods.base import StageInputs, TrainingMethod, load_policy
from gamesense.training.methods.reward import load_reward_model


class GRPO(TrainingMethod):
    """Reinforcement learning of the policy adapter from rewards on its own samples."""

    name = "grpo"
    config_class = "GRPOConfig"
    trains_on = "prompts"
    produces = "policy"
    samples_while_training = True

    def build_trainer(self, inputs: StageInputs, args):
        """Raises:
            ValueError: the task defines no reward function and no reward stage ran before this one.
        """
        from datasets import Dataset
        from trl import GRPOTrainer

        recipe = inputs.recipe
        tokenizer = load_tokenizer(recipe.model.base)
        reward_funcs: list = list(inputs.task.reward_functions())
        processing = [None] * len(reward_funcs)
        if inputs.reward_adapter is not None:
            reward_funcs.append(load_reward_model(recipe, inputs.reward_adapter, args.seed))
            processing.append(tokenizer)
        if not reward_funcs:
            raise ValueError(f"stage grpo needs rewards: task {inputs.task.name!r} defines no reward functions "
                             "and no reward stage ran before it")  # fmt: skip
        model, peft_config = load_policy(recipe, inputs.policy_adapter)
        return GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args,
                           train_dataset=Dataset.from_list(inputs.train_records), processing_class=tokenizer,
                           reward_processing_classes=processing, peft_config=peft_config)  # fmt: skip


METHOD = GRPO()
