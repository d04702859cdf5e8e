"""Prometheus metrics of the LLM server: requests by model and status, latency and time to first token, tokens,
rows and adapters per decode step, adapters in memory, queue length."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gamesense.serving.llm.requests import EngineObserver



class ServerMetrics(EngineObserver):
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("gamesense_llm_requests_total", "requests by model and HTTP status",
                                ["endpoint", "model", "status"], registry=r)  # fmt: skip
        self.latency = Histogram("gamesense_llm_request_latency_seconds", "request to last token", ["endpoint"],
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128), registry=r)  # fmt: skip
        self.ttft = Histogram("gamesense_llm_time_to_first_token_seconds", "request to first token", ["endpoint"],
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10), registry=r)  # fmt: skip
        self.prompt_tokens = Counter("gamesense_llm_prompt_tokens_total", "prompt tokens", ["model"], registry=r)
        self.generated = Counter("gamesense_llm_generated_tokens_total", "tokens generated", ["model"], registry=r)
        self.batch_rows = Histogram("gamesense_llm_batch_size", "rows per decode step", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64))  # fmt: skip
        self.batch_adapters = Histogram("gamesense_llm_batch_adapters", "distinct adapters (base counts) per decode step",
                                        registry=r, buckets=(1, 2, 3, 4, 8, 16))  # fmt: skip
        self.loaded = Gauge("gamesense_llm_loaded_adapters", "LoRA adapters in memory", registry=r)
        self.adapter_events = Counter("gamesense_llm_adapter_events_total", "adapter loads and evictions", ["event"],
                                      registry=r)  # fmt: skip
        self.queue = Gauge("gamesense_llm_queue_length", "requests waiting to join a batch", registry=r)

    def step(self, rows: int, adapters: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_adapters.observe(adapters)

    def adapters_changed(self, loaded: int, event: str, key: str) -> None:
        self.loaded.set(loaded)
        self.adapter_events.labels(event).inc()

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        self.prompt_tokens.labels(model).inc(prompt)
        self.generated.labels(model).inc(completion)
