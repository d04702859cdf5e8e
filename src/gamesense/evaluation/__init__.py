"""Evaluation layer: batched greedy decoding and task metrics, base model vs fine-tuned side by side."""
