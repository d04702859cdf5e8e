"""One base model, many LoRA adapters, one decode loop: the engine behind ``gamesense serve llm``.

The engine holds one base causal LM in memory. Adapters (PEFT LoRA directories) are loaded into it on first
use under a key that names the registry model and version, and deleted least-recently-used when more than
``max_adapters`` are loaded (never one that a running row uses). A scheduler thread decodes every running
request in ONE forward pass per step, each row with its own adapter (:class:`RowLoRA`, the rows' LoRA deltas
in two batched matmuls per layer; or PEFT's mixed-adapter forward, ``adapter_names=[key or "__base__" per
row]``, with ``lora_kernel="peft"``), its own sampling (greedy at temperature 0, else temperature and top-p
with a per-request ``torch.Generator``), repetition penalty, ``max_tokens``, stop strings and EOS.

Continuous batching: requests that arrive while a batch runs are prefilled between two steps and join the
running batch (left padding: the running KV cache and the new rows' cache are padded on the left to one
width and concatenated); a finished row leaves at once (its cache rows are dropped, and cache columns that
are padding for every remaining row are trimmed). With ``mixed_batches=False`` a batch only holds requests
for one adapter (the "one adapter at a time" baseline of ``benchmarks/llm_server.py``).

Text is streamed as it is decoded: each new token is decoded against the few before it
(:class:`~gamesense.serving.llm.requests.ReplyText`, tokenizers' ``DecodeStream``: a multi-byte character split
over tokens waits for its last byte), only the new characters are searched for stop strings, and text that
could be the start of a stop string is held back until it is known not to be one. The finished reply is
decoded once, whole.

The hot loop waits for the device once per step (the sampled tokens, which the host needs to stream and stop):
the KV cache grows in place (:class:`~gamesense.models.kv_cache.GrowingCache`), and the repetition penalty
(a ``(rows, vocab)`` mask of the tokens each row has seen), temperature and top-p are applied to the whole
batch at once on the device; only the draw of a sampled row uses its own generator.

Registry look-ups (alias -> version, downloads) happen in :mod:`gamesense.serving.llm.resolver`, called by the API
before a request is queued, never inside the decode loop.

Sources: PEFT "Inference with different LoRA adapters in the same batch"
(https://huggingface.co/docs/peft/developer_guides/lora#inference-with-different-lora-adapters-in-the-same-batch);
continuous batching as in vLLM/TGI (Yu et al., "Orca", OSDI 2022).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from gamesense.models.base import load_base_model, load_tokenizer
from gamesense.models.decoding import last_token_logits, left_padded, penalize_repetition
from gamesense.models.hardware import inference_dtype
from gamesense.models.kv_cache import GrowingCache
from gamesense.serving.llm.lora import RowLoRA
from gamesense.serving.llm.requests import (Adapter, Completion, EngineObserver, GenerationRequest, ReplyText,
                                            QueueFull, RequestError, StreamEvent, first_stop, held_back)  # fmt: skip

log = logging.getLogger(__name__)


@dataclass
class _Row:
    """A running request: its tokens and text, text sent so far, random generator."""

    request: GenerationRequest
    max_tokens: int
    generator: torch.Generator | None
    reply: ReplyText
    generated: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the reply already sent
    first_token_at: float = 0.0

    @property
    def adapter_name(self) -> str:
        return self.request.adapter_name


def off_main_thread(fn: Callable[[], object]) -> object:
    """``fn()`` run in a short-lived thread (its error raised here).

    Why: PyTorch's CPU wheels use libgomp, which keeps a thread pool per thread that ran a parallel region,
    and the pool of the main thread lives as long as the process. Once more pool threads exist than cores,
    libgomp stops spinning between parallel regions (its "throttled" wait), and every small matmul of the
    scheduler thread pays a wake-up: measured on 2 cores, a 1x576 @ 576x1536 bf16 matmul took 160 us in a
    thread after the main thread had run one, 63 us otherwise; decode steps of SmolLM2 ~55 ms instead of
    ~35 ms. Loading the model (parallel regions) in a thread that ends frees its pool.
    """
    result: dict[str, object] = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as err:  # re-raised in the caller
            result["error"] = err

    thread = threading.Thread(target=run, name="llm-load")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


class LLMEngine:
    """Base model + LoRA adapters + a scheduler thread that batches every running request.

    Args:
        base: base model id or path (the built-in SmolLM2 id resolves to its local copy).
        dtype: ``auto`` (bf16 on bf16-capable CPUs/GPUs, see :func:`gamesense.models.hardware.inference_dtype`)
            or a torch dtype name.
        max_batch: most requests decoded together (rows of one forward pass).
        max_adapters: most adapters in memory; the least recently used idle one is evicted beyond that.
        batch_wait_ms: when idle, how long the first request waits for others to share its first forward.
        mixed_batches: False: a batch holds requests for one adapter only (baseline for benchmarks).
        default_max_tokens: ``max_tokens`` of a request that does not give one (then clamped to the context).
        lora_kernel: ``batched`` (:class:`RowLoRA`: every row's LoRA delta in two batched matmuls per layer) or
            ``peft`` (PEFT's mixed-batch forward, ``adapter_names``: one sub-batch per adapter per layer).
        observer: metrics hooks (:class:`EngineObserver`).
        max_queued: most requests waiting to join a batch; :meth:`submit` refuses more (0: no limit).

    Raises:
        OSError: the base model cannot be loaded.
    """

    def __init__(self, base: str, dtype: str = "auto", max_batch: int = 16, max_adapters: int = 8,
                 batch_wait_ms: float = 5.0, mixed_batches: bool = True, default_max_tokens: int = 512,
                 lora_kernel: Literal["batched", "peft"] = "batched", observer: EngineObserver | None = None,
                 max_queued: int = 0):  # fmt: skip
        if lora_kernel not in ("batched", "peft"):
            raise ValueError(f"lora_kernel {lora_kernel!r}: expected batched or peft")
        self.lora_kernel = lora_kernel
        if max_batch < 1 or max_adapters < 1:
            raise ValueError(f"max_batch ({max_batch}) and max_adapters ({max_adapters}) must be >= 1")
        self.base = base
        self.max_batch, self.max_adapters = max_batch, max_adapters
        self.batch_wait_s = batch_wait_ms / 1000
        self.mixed_batches = mixed_batches
        self.default_max_tokens = default_max_tokens
        self.max_queued = max_queued
        self.observer = observer or EngineObserver()
        self.tokenizer = load_tokenizer(base)

        def load():
            model = load_base_model(base, dtype=dtype)
            target = inference_dtype(dtype)
            if not torch.cuda.is_available() and model.dtype != target:
                model.to(target)
            return model.eval()

        self.model = model = off_main_thread(load)
        self.device = next(model.parameters()).device
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        eos = {self.tokenizer.eos_token_id}
        configured = getattr(model.generation_config, "eos_token_id", None)
        eos |= set(configured) if isinstance(configured, list) else {configured}
        self.eos_ids = {int(i) for i in eos if i is not None}
        self.peft = None  # the PeftModel wrapping self.model once an adapter is loaded
        self._row_adapters: list[str] = []  # adapter of each row of the forward pass running now (peft kernel)
        self.row_lora: RowLoRA | None = None  # batched kernel, once an adapter is loaded
        self.loaded: OrderedDict[str, Adapter] = OrderedDict()  # LRU order: oldest first
        self.inbox: queue.Queue[GenerationRequest] = queue.Queue()
        self.waiting: deque[GenerationRequest] = deque()
        self.running: list[_Row] = []
        self.cache = None  # GrowingCache of the running rows
        self.mask: torch.Tensor | None = None  # (rows, cache length + 1 for the pending token)
        self.positions: torch.Tensor | None = None  # (rows,) position of each row's pending token
        self.pending: torch.Tensor | None = None  # (rows,) last sampled token of each row, not yet fed
        self.seen: torch.Tensor | None = None  # (rows, vocab) bool: tokens in each row's prompt or reply
        self.sampling: torch.Tensor | None = None  # (rows, 3): repetition penalty, temperature, top-p (1 -> inf)
        #: counters for tests, /healthz and benchmarks
        self.stats = {"steps": 0, "prefills": 0, "requests": 0, "max_rows_per_step": 0, "max_adapters_per_step": 0,
                      "adapter_loads": 0, "adapter_evictions": 0}  # fmt: skip
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- public API ---

    def start(self) -> None:
        """Start the scheduler thread (daemon)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="llm-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the scheduler; queued and running requests get an error event."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
        for req in [*self.waiting, *(r.request for r in self.running), *self._drain_inbox()]:
            req.sink(StreamEvent(error="server shutting down"))
        self.waiting.clear()
        self._reset_batch()

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a chat prompt: the tokenizer's chat template with the assistant's generation prompt.

        Raises:
            RequestError: the template rejects the messages (e.g. roles out of order).
        """
        try:
            return list(self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                           return_dict=False))  # fmt: skip
        except Exception as err:  # jinja2 TemplateError and friends: the messages do not fit the template
            raise RequestError(f"messages cannot be formatted by the chat template: {err}", param="messages") from None

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a raw completion prompt (the tokenizer's special tokens, e.g. BOS, included)."""
        return list(self.tokenizer(text)["input_ids"])

    def submit(self, request: GenerationRequest) -> int:
        """Queue a request; its sink will get text pieces, then a :class:`Completion` or an error.

        Returns:
            the ``max_tokens`` it will decode at most (clamped to the context left after the prompt).

        Raises:
            RequestError: empty prompt, or a prompt that fills the context (code ``context_length_exceeded``).
            QueueFull: ``max_queued`` requests are waiting already.
        """
        n = len(request.prompt_ids)
        if n == 0:
            raise RequestError("the prompt is empty", param="prompt")
        if n >= self.context:
            raise RequestError(f"this model's context is {self.context} tokens and the prompt has {n}: shorten it",
                               param="messages", code="context_length_exceeded")  # fmt: skip
        if self.max_queued and self.queue_length() >= self.max_queued:
            raise QueueFull(self.max_queued)
        self.stats["requests"] += 1
        self.inbox.put(request)
        return min(request.params.max_tokens, self.context - n)

    def queue_length(self) -> int:
        """Requests waiting to join a batch."""
        return self.inbox.qsize() + len(self.waiting)

    def loaded_adapters(self) -> list[str]:
        """Keys of the adapters in memory, least recently used first."""
        return list(self.loaded)

    # --- scheduler ---

    def _drain_inbox(self) -> list[GenerationRequest]:
        out = []
        while True:
            try:
                out.append(self.inbox.get_nowait())
            except queue.Empty:
                return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.running and not self.waiting:
                try:
                    first = self.inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                self.waiting.append(first)
                # idle: give concurrent requests a moment to share the first forward pass
                deadline = time.perf_counter() + self.batch_wait_s
                while len(self.waiting) < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                    try:
                        self.waiting.append(self.inbox.get(timeout=left))
                    except queue.Empty:
                        break
            self.waiting.extend(self._drain_inbox())
            try:
                with torch.inference_mode():
                    self._admit()
                    if self.running:
                        self._step()
            except Exception as err:  # a failed forward fails its batch, never the server
                log.exception("decode step failed")
                for row in self.running:
                    row.request.sink(StreamEvent(error=f"generation failed: {type(err).__name__}: {err}"))
                self._reset_batch()

    def _reset_batch(self) -> None:
        self.running, self.cache, self.mask, self.positions, self.pending = [], None, None, None, None
        self.seen = self.sampling = None

    def _admit(self) -> None:
        """Move waiting requests into the running batch (adapters loaded, prompts prefilled)."""
        free = self.max_batch - len(self.running)
        if free <= 0 or not self.waiting:
            return
        in_use = {r.adapter_name for r in self.running}
        only = None if self.mixed_batches else (next(iter(in_use)) if in_use else None)
        if only is not None and any(r.adapter_name != only for r in self.waiting):
            return  # one adapter at a time, first come first served: let the batch drain, then switch
        admitted: list[GenerationRequest] = []
        kept: deque[GenerationRequest] = deque()
        while self.waiting:
            req = self.waiting.popleft()
            if req.cancelled:
                continue
            name = req.adapter_name
            if only is None and not self.mixed_batches:
                only = name
            if len(admitted) >= free or (only is not None and name != only):
                kept.append(req)
                continue
            if req.adapter is not None:
                try:
                    if not self._ensure_adapter(req.adapter, in_use):
                        kept.append(req)  # every loaded adapter is in use: wait for a row to finish
                        continue
                except Exception as err:  # a broken adapter fails its requests only
                    log.warning("cannot load adapter %s: %s", req.adapter.key, err)
                    req.sink(StreamEvent(error=f"cannot load adapter {req.adapter.model} version "
                                               f"{req.adapter.version}: {type(err).__name__}: {err}"))  # fmt: skip
                    continue
            in_use.add(name)
            admitted.append(req)
        self.waiting = kept
        if admitted:
            self._prefill(admitted)

    def _ensure_adapter(self, adapter: Adapter, in_use: set[str]) -> bool:
        """Load ``adapter`` if needed, evicting the least recently used idle one beyond ``max_adapters``.

        Returns:
            False when it is not loaded and cannot be (all ``max_adapters`` loaded ones are in use).
        """
        if adapter.key in self.loaded:
            self.loaded.move_to_end(adapter.key)
            return True
        idle = [k for k in self.loaded if k not in in_use]
        if len(self.loaded) >= self.max_adapters and not idle:
            return False
        if self.peft is None:
            from peft import PeftModel

            # autocast_adapter_dtype=False: keep the LoRA weights in the base's dtype (bf16 matmuls on CPU)
            self.peft = PeftModel.from_pretrained(self.model, str(adapter.path), adapter_name=adapter.key,
                                                  autocast_adapter_dtype=False).eval()  # fmt: skip
        else:
            self.peft.load_adapter(str(adapter.path), adapter_name=adapter.key, autocast_adapter_dtype=False)
            self.peft.eval()
        self.loaded[adapter.key] = adapter
        self.stats["adapter_loads"] += 1
        self.observer.adapters_changed(len(self.loaded), "load", adapter.key)
        log.info("loaded adapter %s (%s version %s)", adapter.key, adapter.model, adapter.version)
        while len(self.loaded) > self.max_adapters and idle:
            old = idle.pop(0)
            # PEFT will not delete the active adapter: make the new one active first
            self.peft.set_adapter(adapter.key)
            self.peft.delete_adapter(old)
            del self.loaded[old]
            self.stats["adapter_evictions"] += 1
            self.observer.adapters_changed(len(self.loaded), "evict", old)
            log.info("evicted adapter %s", old)
        if self.lora_kernel == "batched":
            if self.row_lora is None:
                self.row_lora = RowLoRA(self.peft)
            try:
                self.row_lora.rebuild(list(self.loaded))
            except ValueError:  # an adapter the batched kernel cannot run: unload it, keep the others
                del self.loaded[adapter.key]
                if self.loaded:  # PEFT will not delete the active adapter: activate another first
                    self.peft.set_adapter(next(iter(self.loaded)))
                    self.peft.delete_adapter(adapter.key)
                self.row_lora.rebuild(list(self.loaded))
                raise
        else:
            self._route_rows()
        return True

    def _logits(self, rows: list[_Row], cache, **inputs) -> torch.Tensor:
        """Last-position logits ``(len(rows), vocab)`` in float32, each row through its own adapter."""
        names = [r.adapter_name for r in rows]
        if self.row_lora is not None:
            self.row_lora.select(names)
        else:
            self._row_adapters = names
        return last_token_logits(self.model, cache, **inputs).float()

    def _route_rows(self) -> None:
        """``lora_kernel="peft"``: give every LoRA layer a forward pre-hook that passes ``adapter_names`` (one
        per row, from ``self._row_adapters``): PEFT's mixed-adapter batch path. PEFT's own
        ``PeftModel.forward(adapter_names=)`` registers such hooks on every call, walking all modules (~12 ms
        a step for SmolLM2); these are registered once per new LoRA layer, after each adapter load."""
        from peft.tuners.lora import LoraLayer

        def route(module, args, kwargs):
            kwargs["adapter_names"] = self._row_adapters
            return args, kwargs

        for module in self.peft.modules():
            if isinstance(module, LoraLayer) and not getattr(module, "_gamesense_routed", False):
                module.register_forward_pre_hook(route, with_kwargs=True)
                module._gamesense_routed = True

    def _prefill(self, requests: list[GenerationRequest]) -> None:
        """Run the new prompts (one left-padded forward pass), sample their first tokens, join the batch.

        A request that cannot start fails alone: its error goes to its sink, the running batch is untouched, and
        when the shared forward pass fails each new request is tried on its own.
        """
        rows = []
        for req in requests:
            try:
                generator = None
                if req.params.temperature > 0:
                    seed = req.params.seed if req.params.seed is not None else random.getrandbits(63)
                    generator = torch.Generator(device=self.device).manual_seed(seed)
                limit = min(req.params.max_tokens, self.context - len(req.prompt_ids))
                rows.append(_Row(req, limit, generator, ReplyText(self.tokenizer)))
            except Exception as err:  # e.g. a seed the generator cannot take
                req.sink(StreamEvent(error=f"cannot start the request: {type(err).__name__}: {err}"))
        if not rows:
            return
        try:
            input_ids, mask, positions = (t.to(self.device) for t in left_padded([r.request.prompt_ids for r in rows], self.pad_id))
            cache = GrowingCache()
            logits = self._logits(rows, cache, input_ids=input_ids, attention_mask=mask, position_ids=positions)
            self.stats["prefills"] += 1
            seen = torch.zeros(logits.shape, dtype=torch.bool, device=self.device)
            seen[input_ids.new_tensor([i for i, r in enumerate(rows) for _ in r.request.prompt_ids]),
                 input_ids.new_tensor([t for r in rows for t in r.request.prompt_ids])] = True  # fmt: skip
            sampling = torch.tensor([[p.repetition_penalty, p.temperature, p.top_p if p.top_p < 1 else float("inf")]
                                     for p in (r.request.params for r in rows)], device=self.device)  # fmt: skip
            tokens = self._sample(rows, logits, seen, sampling)
        except Exception as err:
            if len(rows) > 1:  # find the request at fault: each alone
                for row in rows:
                    self._prefill([row.request])
                return
            log.exception("prefill failed")
            rows[0].request.sink(StreamEvent(error=f"generation failed: {type(err).__name__}: {err}"))
            return
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
        start = len(self.running)
        self._merge(rows, cache, mask, positions[:, -1] + 1, tokens, seen, sampling)
        self._advance(start)

    def _merge(self, rows: list[_Row], cache, mask: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor,
               seen: torch.Tensor, sampling: torch.Tensor) -> None:  # fmt: skip
        """Append prefilled rows to the running batch: both KV caches left-padded to one width."""
        if not self.running:
            self.running, self.cache, self.mask, self.positions, self.pending = rows, cache, mask, positions, tokens
            self.seen, self.sampling = seen, sampling
            return
        # the masks have one column more than the caches (the pending token): pad both to the wider one
        width = max(self.mask.shape[1], mask.shape[1])

        def pad_left(t: torch.Tensor, dim: int, to: int) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim] = to - t.shape[dim]
            return t if shape[dim] == 0 else torch.cat([t.new_zeros(shape), t], dim=dim)

        for old, new in zip(self.cache.layers, cache.layers):
            # cache tensors: (batch, kv heads, length, head dim); padded positions are masked out
            old.keys = torch.cat([pad_left(old.keys, 2, width - 1), pad_left(new.keys, 2, width - 1)], dim=0)
            old.values = torch.cat([pad_left(old.values, 2, width - 1), pad_left(new.values, 2, width - 1)], dim=0)
        self.mask = torch.cat([pad_left(self.mask, 1, width), pad_left(mask, 1, width)], dim=0)
        self.running = self.running + rows
        self.positions = torch.cat([self.positions, positions])
        self.pending = torch.cat([self.pending, tokens])
        self.seen, self.sampling = torch.cat([self.seen, seen]), torch.cat([self.sampling, sampling])

    def _step(self) -> None:
        """Feed every row's pending token (one forward pass), sample the next ones."""
        rows = self.running
        logits = self._logits(rows, self.cache, input_ids=self.pending[:, None], attention_mask=self.mask,
                              position_ids=self.positions[:, None])  # fmt: skip
        adapters = len({r.adapter_name for r in rows})
        self.stats["steps"] += 1
        self.stats["max_rows_per_step"] = max(self.stats["max_rows_per_step"], len(rows))
        self.stats["max_adapters_per_step"] = max(self.stats["max_adapters_per_step"], adapters)
        self.observer.step(len(rows), adapters)
        self.pending = self._sample(rows, logits, self.seen, self.sampling)
        self.positions = self.positions + 1
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(rows), 1))], dim=-1)
        self._advance(0)

    def _sample(self, rows: list[_Row], logits: torch.Tensor, seen: torch.Tensor, sampling: torch.Tensor) -> torch.Tensor:
        """Next token per row ``(len(rows),)``: repetition penalty, then greedy or temperature + top-p, for the
        whole batch at once; marks the tokens in ``seen``.

        Args:
            rows: the rows of ``logits``.
            logits: ``(rows, vocab)`` float32, changed in place.
            seen: ``(rows, vocab)`` bool, the tokens already in each row (prompt and reply).
            sampling: ``(rows, 3)``: repetition penalty, temperature, top-p (inf where 1: no filtering).
        """
        if any(r.request.params.repetition_penalty != 1.0 for r in rows):
            penalized = penalize_repetition(logits, sampling[:, 0:1])
            logits = torch.where(seen, penalized, logits)
        tokens = logits.argmax(-1)
        sampled = [i for i, r in enumerate(rows) if r.request.params.temperature > 0]
        if sampled:
            index = torch.tensor(sampled, device=logits.device)
            probs = torch.softmax(logits[index] / sampling[index, 1:2], dim=-1)
            if any(rows[i].request.params.top_p < 1.0 for i in sampled):
                sorted_probs, order = probs.sort(dim=-1, descending=True)
                # drop tokens once the mass before them reaches top_p (the most likely token always stays)
                sorted_probs[sorted_probs.cumsum(-1) - sorted_probs >= sampling[index, 2:3]] = 0
                probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
            for j, i in enumerate(sampled):  # each row draws from its own generator: same seed, same reply
                tokens[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
        seen[torch.arange(len(rows), device=logits.device), tokens] = True
        return tokens

    def _advance(self, start: int) -> None:
        """Record the new (pending) token of rows ``start:``, stream their text, and drop finished (or cancelled)
        rows from the batch."""
        now = time.perf_counter()
        keep: list[int] = list(range(start))
        # the step's one wait for the device: the sampled tokens
        for i, (row, token) in enumerate(zip(self.running[start:], self.pending[start:].tolist()), start=start):
            req, params = row.request, row.request.params
            if req.cancelled:
                continue
            if not row.generated:
                row.first_token_at = now
            row.generated.append(token)
            eos = token in self.eos_ids and not params.ignore_eos
            before = row.reply.push(token)
            stopped = first_stop(row.reply.text, params.stop, before) >= 0
            finish = None
            if eos or stopped:
                finish = "stop"
            elif len(row.generated) >= row.max_tokens:
                finish = "length"
            if finish is None:
                text = row.reply.text
                end = len(text) - held_back(text, params.stop)
                piece, row.sent = text[row.sent : max(end, row.sent)], max(end, row.sent)
                req.sink(StreamEvent(text=piece))
                keep.append(i)
                continue
            text = self.tokenizer.decode(row.generated, skip_special_tokens=True)  # whole, once
            cut = first_stop(text, params.stop)
            final = text[:cut] if cut >= 0 else text
            if len(final) > row.sent:
                req.sink(StreamEvent(text=final[row.sent :]))
            completion = Completion(final, finish, len(req.prompt_ids), len(row.generated), now - req.submitted,
                                    row.first_token_at - req.submitted)  # fmt: skip
            self.observer.tokens(req.adapter.model if req.adapter else "base", completion.prompt_tokens,
                                 completion.completion_tokens)  # fmt: skip
            req.sink(StreamEvent(done=completion))
        if len(keep) == len(self.running):
            return
        if not keep:
            self._reset_batch()
            return
        index = torch.tensor(keep, device=self.device)
        for layer in self.cache.layers:
            layer.batch_select_indices(index)
        self.running = [self.running[i] for i in keep]
        self.mask, self.positions, self.pending = self.mask[index], self.positions[index], self.pending[index]
        self.seen, self.sampling = self.seen[index], self.sampling[index]
        # columns that are left padding for every remaining row: drop them from the cache and the mask
        first = int(self.mask.any(0).nonzero()[0])
        if first > 0:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.mask = self.mask[:, first:]
