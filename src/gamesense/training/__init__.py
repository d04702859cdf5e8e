"""Training layer: LoRA supervised fine-tuning of LLMs (TRL + PEFT) and tabular model training."""
