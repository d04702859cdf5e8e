"""Training layer: the LLM recipe (:mod:`~gamesense.training.recipe`), one module per training method
(:mod:`~gamesense.training.methods`: SFT, reward model, DPO, GRPO, found by name), the loop that runs one stage
(:mod:`~gamesense.training.stage`), trainer callbacks, FLOP counting, and the engagement model's tabular training
(:mod:`~gamesense.training.engagement`)."""
