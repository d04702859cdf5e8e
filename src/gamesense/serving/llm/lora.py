"""Every row's LoRA delta in two batched matmuls per layer, whatever mix of adapters a decode batch uses.

Sources: the gathered LoRA kernels of Punica (Chen et al., 2023) and S-LoRA (Sheng et al., 2023), in plain
PyTorch; PEFT keeps loading, holding and deleting the adapters."""

from __future__ import annotations

import torch

from gamesense.serving.llm.requests import BASE_ROW


class RowLoRA:
    """Every row's LoRA delta in two batched matmuls per layer, whatever mix of adapters the rows use.

    PEFT's mixed-batch forward (``adapter_names``) splits each layer's input into one sub-batch per adapter
    (index, two matmuls, scatter-add for each): with SmolLM2's 210 LoRA layers that is thousands of small ops
    a step. Here the loaded adapters' weights are stacked per layer once, after each load or eviction
    (``A``: ``(slots, r_max, in)``, ``B * scaling``: ``(slots, out, r_max)``, slot 0 all zeros for base rows,
    smaller ranks zero-padded), and a forward hook adds ``bmm(bmm(x, A[slot]^T), B[slot]^T)`` to the base
    layer's output: the idea of Punica's / S-LoRA's gathered LoRA kernels (Chen et al., 2023; Sheng et al.,
    2023), in plain PyTorch. PEFT still loads, holds and deletes the adapters; its own LoRA forward is told to
    add nothing (each layer's active adapter is set to a name no adapter has).

    Only plain LoRA on linear layers: an adapter with a variant (DoRA...) or LoRA on embeddings raises
    ``ValueError`` at load (use ``lora_kernel="peft"``).
    """

    def __init__(self, peft):
        self.peft = peft
        self.slots: dict[str, int] = {}
        self.rows: torch.Tensor | None = None  # (batch,) slot of each row; None: every row is base

    def rebuild(self, keys: list[str]) -> None:
        """Stack the weights of the adapters ``keys`` (slot i+1 for keys[i]) in every LoRA layer."""
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora import Linear as LoraLinear

        self.slots = {key: i + 1 for i, key in enumerate(keys)}
        for module in self.peft.modules():
            if not isinstance(module, LoraLayer):
                continue
            present = [k for k in keys if k in module.lora_A or k in getattr(module, "lora_embedding_A", {})]
            if not isinstance(module, LoraLinear) or any(k in module.lora_variant for k in present):
                raise ValueError(f"adapter(s) {', '.join(present)}: only plain LoRA on linear layers is batched "
                                 f"here ({type(module).__name__}); serve with lora_kernel='peft'")  # fmt: skip
            module._active_adapter = BASE_ROW  # PEFT's forward: base layer only; the hook adds the deltas
            base = module.get_base_layer()
            weight = base.weight
            rank = max((module.r[k] for k in present), default=1)
            a = weight.new_zeros((len(keys) + 1, rank, base.in_features))
            b = weight.new_zeros((len(keys) + 1, base.out_features, rank))
            for key in present:
                slot, r = self.slots[key], module.r[key]
                a[slot, :r] = module.lora_A[key].weight
                b[slot, :, :r] = module.lora_B[key].weight * module.scaling[key]
            module._gamesense_lora = (a, b)
            if not getattr(module, "_gamesense_hooked", False):
                module.register_forward_hook(self._add_delta)
                module._gamesense_hooked = True

    def select(self, names: list[str]) -> None:
        """The adapter (or ``__base__``) of each row of the next forward pass."""
        slots = [self.slots.get(n, 0) for n in names]
        self.rows = torch.tensor(slots, device=self.peft.device) if any(slots) else None

    def _add_delta(self, module, args, output):
        if self.rows is None:
            return None
        a, b = module._gamesense_lora
        x = args[0]
        delta = torch.bmm(torch.bmm(x.to(a.dtype), a.index_select(0, self.rows).transpose(1, 2)),
                          b.index_select(0, self.rows).transpose(1, 2))  # fmt: skip
        return output + delta.to(output.dtype)
