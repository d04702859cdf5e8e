"""The same registry served by vLLM on a GPU: every served model resolved to a local adapter directory, and the
``vllm serve`` command line that offers them under the names ``gamesense serve llm`` uses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gamesense.models.base import ModelUnavailable, resolve_base_model
from gamesense.registry.refs import CHAMPION
from gamesense.serving.llm.requests import Adapter
from gamesense.serving.llm.resolver import ModelResolver

#: LoRA ranks vLLM's ``--max-lora-rank`` accepts
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_modules(resolver: ModelResolver) -> dict[str, Adapter]:
    """Every served registry model under each name a request may use: ``NAME`` (the champion, when it has
    one) and ``NAME@ALIAS`` for each alias, resolved to a local adapter directory now.

    Raises:
        RequestError: a version that is not an adapter of the served base (see :meth:`ModelResolver.resolve`).
    """
    modules: dict[str, Adapter] = {}
    for model in resolver.served(refresh=True).values():
        for alias in model.aliases:
            modules[f"{model.name}@{alias}"] = resolver.resolve(f"{model.name}@{alias}")
        if CHAMPION in model.aliases:
            modules[model.name] = modules[f"{model.name}@{CHAMPION}"]
    return modules


def vllm_command(base_path: str, modules: dict[str, Adapter], host: str = "127.0.0.1", port: int = 8000,
                 max_loras: int = 8, served_names: Sequence[str] = ("base",)) -> list[str]:  # fmt: skip
    """The ``vllm serve`` command line that serves ``base_path`` and the adapters ``modules`` (name -> adapter)
    with the same model names as ``gamesense serve llm``.

    Flags: ``--enable-lora --lora-modules NAME=PATH ...``, ``--max-lora-rank`` (the largest adapter rank,
    rounded up to a rank vLLM accepts), ``--max-loras`` (adapters in one batch), ``--served-model-name``.
    Source: https://docs.vllm.ai/en/latest/features/lora.html
    """
    cmd = ["vllm", "serve", base_path, "--host", host, "--port", str(port), "--served-model-name", *served_names]
    if modules:
        rank = max(a.rank for a in modules.values())
        rank = next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1])
        distinct = len({a.key for a in modules.values()})
        cmd += ["--enable-lora", "--lora-modules", *(f"{name}={a.path}" for name, a in modules.items()),
                "--max-lora-rank", str(rank), "--max-loras", str(max(1, min(max_loras, distinct)))]
    return cmd


def registry_command(base: str, models: Sequence[str] | None, cache_dir: Path, host: str = "127.0.0.1",
                     port: int = 8000, max_loras: int = 8) -> list[str]:  # fmt: skip
    """The ``vllm serve`` command for the base model ``base`` and the registry models ``models`` (None: every
    model :class:`ModelResolver` would serve), their adapter versions downloaded into ``cache_dir`` now.

    Raises:
        RequestError: a served version that is not an adapter of ``base``; LookupError: an unknown alias.
    """
    resolver = ModelResolver(base, models, alias_ttl_s=0.0, cache_dir=cache_dir)
    try:
        local = resolve_base_model(base)
    except ModelUnavailable:  # a hub id this machine cannot fetch: vLLM fetches it where it runs
        local = base
    return vllm_command(local, vllm_modules(resolver), host, port, max_loras, ("base", base))
