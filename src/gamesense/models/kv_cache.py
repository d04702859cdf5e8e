"""A KV cache that grows in place, for our decode loops (evaluation's batched greedy decoding, the LLM engine).

transformers' ``DynamicCache`` appends each step's keys and values with ``torch.cat``, so every decode step
copies the whole cache of every layer: O(length) memory traffic per token, O(length^2) per reply. On a CPU
that copy is a large share of a decode step once replies get long (see ``benchmarks/decoding.py``).
:class:`GrowingCache` keeps each layer's keys and values in a buffer with spare columns and writes the new
ones in place; a full buffer is reallocated to twice its length (or to the reserve asked for), so an append
costs O(new tokens), amortized. The model sees a view of the filled columns, with the same values a
``DynamicCache`` would hold, so the logits are identical.

Everything else is ``DynamicCache``'s: a layer's ``keys`` / ``values`` may still be assigned (the engine
left-pads and concatenates caches of joining rows, and trims columns that became padding for every row);
the assigned tensor becomes the buffer, and the next append grows it.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


def _filled(name: str) -> property:
    """The filled columns of buffer ``name`` (``keys`` or ``values``), shape ``(batch, kv heads, length, head
    dim)``; assigning a tensor makes it the buffer, filled to its full length."""

    def get(self):
        buffer = self._buffers[name]
        return buffer[:, :, : self._lengths[name]] if buffer is not None and buffer.dim() == 4 else buffer

    def put(self, value):
        self._buffers[name] = value
        self._lengths[name] = value.shape[-2] if value is not None and value.dim() == 4 else 0

    return property(get, put)


class GrowingLayer(DynamicLayer):
    """One layer of :class:`GrowingCache`.

    Args:
        reserve: spare columns allocated beyond what an append needs when the buffer must grow (e.g. the
            tokens still to decode); 0: grow by doubling.
    """

    keys = _filled("keys")
    values = _filled("values")

    def __init__(self, reserve: int = 0):
        self._buffers: dict[str, torch.Tensor | None] = {"keys": None, "values": None}
        self._lengths = {"keys": 0, "values": 0}
        self.reserve = reserve
        super().__init__()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``(batch, kv heads, new, head dim)`` keys and values; returns all of them (views)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._append("keys", key_states)
        self._append("values", value_states)
        return self.keys, self.values

    def _append(self, name: str, new: torch.Tensor) -> None:
        buffer, length = self._buffers[name], self._lengths[name]
        n = new.shape[-2]
        if buffer is None or buffer.dim() != 4 or length + n > buffer.shape[-2]:
            capacity = max(length + n + self.reserve, 2 * length)
            grown = new.new_empty((*new.shape[:2], capacity, new.shape[-1]))
            if length:
                grown[:, :, :length] = buffer[:, :, :length]
            self._buffers[name] = buffer = grown
        buffer[:, :, length : length + n] = new
        self._lengths[name] = length + n

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (spare columns kept, so the next append does not reallocate)."""
        for name, buffer in self._buffers.items():
            if buffer is not None and buffer.dim() == 4:
                self._buffers[name] = buffer.index_select(0, indices.to(buffer.device))


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` whose layers are :class:`GrowingLayer` (created lazily, one per decoder layer).

    Args:
        reserve: spare columns per growth, see :class:`GrowingLayer` (evaluation passes ``max_new_tokens``,
            so its prompts' cache is allocated once).
    """

    def __init__(self, reserve: int = 0):
        Cache.__init__(self, layer_class_to_replicate=lambda: GrowingLayer(reserve))
