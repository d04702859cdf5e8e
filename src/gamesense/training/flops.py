"""Training FLOPs of a decoder-only transformer, counted from its shapes (for model FLOPs utilisation).

Counting follows Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", 2022, appendix B: a
matmul of an ``m x k`` by a ``k x n`` matrix costs ``2 m k n``; the backward pass of a linear layer costs its
forward twice when its weight trains (input and weight gradients) and once when the weight is frozen (input
gradient only); attention's score and value products cost ``4 * L * d_attn`` per token and layer forward
(full ``L``, as PaLM counts them) and twice that backward. Element-wise work (norms, activations, softmax)
is left out, as MFU conventionally does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecoderShape:
    """The shapes that matter for FLOPs. ``lora_rank`` 0 with ``full=False`` means nothing trains."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    lora_rank: int = 0
    full: bool = False

    @classmethod
    def from_config(cls, config, lora_rank: int = 0, full: bool = False) -> DecoderShape:
        """From a transformers Llama-style config (``hidden_size``, ``intermediate_size``, ...)."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.num_attention_heads,
                   kv_heads, head_dim, config.vocab_size, lora_rank, full)  # fmt: skip

    def linears(self) -> list[tuple[int, int]]:
        """``(in, out)`` of the seven projections of one layer (q, k, v, o, gate, up, down)."""
        d, a, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [(d, a), (d, kv), (d, kv), (a, d), (d, self.intermediate), (d, self.intermediate), (self.intermediate, d)]


def sequence_training_flops(shape: DecoderShape, length: int, loss_tokens: int) -> float:
    """FLOPs of one forward + backward pass over one sequence.

    Args:
        shape: the model (LoRA on every projection when ``lora_rank`` > 0, as ``target_modules: all-linear``).
        length: non-pad tokens of the sequence.
        loss_tokens: positions whose logits are computed (the completion, for a completion-only loss that runs
            the LM head there only; ``length`` for a full-sequence loss).

    Returns:
        FLOPs (float).
    """
    base = sum(i * o for i, o in shape.linears()) * shape.layers
    lora = sum(shape.lora_rank * (i + o) for i, o in shape.linears()) * shape.layers
    frozen_factor = 3 if shape.full else 2  # forward + input grad (+ weight grad when it trains)
    linear = 2 * length * (base * frozen_factor + lora * 3)
    attention = 3 * 4 * length * length * shape.heads * shape.head_dim * shape.layers
    head = 2 * loss_tokens * shape.hidden * shape.vocab * (3 if shape.full else 2)
    return float(linear + attention + head)
