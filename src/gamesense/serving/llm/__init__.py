"""The OpenAI-compatible LLM server (``gamesense serve llm``), cut by reason to change as vLLM's
``entrypoints/openai/`` is:

- :mod:`~gamesense.serving.llm.protocol`: OpenAI's wire types (request bodies, the error object);
- :mod:`~gamesense.serving.llm.requests`: what the engine takes and gives back (sampling settings, adapter,
  stream events, completion);
- :mod:`~gamesense.serving.llm.engine`: one base model, LoRA adapters, continuous batching in one decode loop;
- :mod:`~gamesense.serving.llm.lora`: every row's LoRA delta in two batched matmuls per layer;
- :mod:`~gamesense.serving.llm.resolver`: model names -> the base model or a registry adapter;
- :mod:`~gamesense.serving.llm.vllm`: the same registry served by ``vllm serve``;
- :mod:`~gamesense.serving.llm.metrics` and :mod:`~gamesense.serving.llm.api`: Prometheus metrics and the routes.
"""
