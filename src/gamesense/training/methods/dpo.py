"""Direct preference optimisation (DPO; Rafailov et al. 2023): TRL's ``DPOTrainer`` + ``DPOConfig`` on
``prompt``/``chosen``/``rejected`` pairs. It continues the policy adapter; its reference model is a frozen copy
of the adapter it starts from (TRL adds it)."""

from __future__ import annotations

from gamesense.models.base import load_tokenizer
from gamesense.training.methods.base import StageInputs, TrainingMethod, load_policy, preference_dataset


class DPO(TrainingMethod):
    """Preference tuning of the policy adapter without a reward model."""

    name = "dpo"
    config_class = "DPOConfig"
    trains_on = "preference"
    produces = "policy"

    def build_trainer(self, inputs: StageInputs, args):
        from trl import DPOTrainer

        recipe = inputs.recipe
        model, peft_config = load_policy(recipe, inputs.policy_adapter)
        return DPOTrainer(model=model, args=args, train_dataset=preference_dataset(inputs.train_records),
                          processing_class=load_tokenizer(recipe.model.base), peft_config=peft_config)  # fmt: skip


METHOD = DPO()
