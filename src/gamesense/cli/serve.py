"""``gamesense serve llm`` (the base model and the registry's LoRA adapters behind an OpenAI-compatible API) and
``gamesense serve engagement`` (the engagement model's API, :func:`gamesense.cli.engagement.serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from gamesense.cli import engagement as engagement_cli
from gamesense.cli.common import (GRACEFUL_SHUTDOWN_S, ApiKeyOpt, ApiKeysFileOpt, NoAuthOpt, PublicOpt, fail,
                                  server_api_keys, show_progress_logs)  # fmt: skip

app = typer.Typer(help="Online inference APIs: `serve llm` (OpenAI-compatible, LoRA adapters) and `serve engagement`.",
                  no_args_is_help=True)  # fmt: skip
app.command("engagement")(engagement_cli.serve)

BUILTIN_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"  # models.base.BUILTIN_MODEL_ID, kept import-free for --help


@app.command("llm")
def llm(
    host: str = typer.Option("127.0.0.1", help="interface to bind"),
    port: int = typer.Option(8000, help="TCP port"),
    base: str = typer.Option(BUILTIN_BASE, "--base", help="base model id or path (every adapter must be trained on it)"),
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="registry model to serve, e.g. gamesense-TASK "
                                              "(repeatable; default: every registered model whose versions carry a task "
                                              "tag and this base)"),  # fmt: skip
    max_batch: int = typer.Option(16, min=1, help="most requests decoded together"),
    max_adapters: int = typer.Option(8, min=1, help="LoRA adapters kept in memory (least recently used evicted)"),
    batch_wait_ms: float = typer.Option(5.0, min=0, help="when idle, how long a request waits for others to batch with"),
    alias_ttl_s: float = typer.Option(5.0, min=0, help="seconds an alias -> version answer is reused"),
    max_tokens: int = typer.Option(512, min=1, help="max_tokens of a request that gives none"),
    lora_kernel: str = typer.Option("batched", help="batched: all rows' LoRA deltas in two batched matmuls per layer; "
                                    "peft: PEFT's mixed-batch forward (any PEFT LoRA variant)"),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16 (auto: bf16 where the CPU/GPU has it)"),
    engine: str = typer.Option("hf", help="hf: this server (PyTorch + PEFT); vllm: start `vllm serve` on the same "
                               "registry (GPU)"),  # fmt: skip
    print_command: bool = typer.Option(False, "--print-command", help="with --engine vllm: print the command and exit"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: the working directory's SQLite store)"),
    max_body_bytes: int = typer.Option(8 * 1024 * 1024, min=1, help="largest request body (413 above)"),
    max_queued: int = typer.Option(256, min=0, help="most requests waiting to join a batch (429 with Retry-After "
                                   "above; 0: no limit)"),  # fmt: skip
    max_tokens_cap: int = typer.Option(2048, min=1, help="largest max_tokens a request may ask (400 above)"),
    max_stop_chars: int = typer.Option(256, min=1, help="longest stop string (400 above)"),
    request_timeout: float = typer.Option(300.0, min=0.1, help="seconds a request may take from its arrival, queueing "
                                          "included (504 above)"),  # fmt: skip
    api_key: Optional[list[str]] = ApiKeyOpt,
    api_keys_file: Optional[Path] = ApiKeysFileOpt,
    no_auth: bool = NoAuthOpt,
    public: Optional[list[str]] = PublicOpt,
    log_level: str = typer.Option("warning", help="uvicorn log level"),
) -> None:
    """Serve the base model and every registered LoRA adapter behind one OpenAI-compatible endpoint:
    /v1/models, /v1/chat/completions (stream too), /v1/completions, /healthz, /livez, /metrics. Request
    `model`: base, NAME (its champion), NAME@ALIAS, NAME/VERSION. With API keys, every path but /livez
    (and --public ones) needs Authorization: Bearer KEY. See docs/serving-llm.md and docs/operations.md."""
    if engine not in ("hf", "vllm"):
        fail(f"--engine {engine!r}: expected hf or vllm")
    if print_command and engine != "vllm":
        fail("--print-command needs --engine vllm")
    show_progress_logs()
    keys = server_api_keys(host, api_key, api_keys_file, no_auth) if engine == "hf" else ()
    if engine == "vllm":
        _vllm(host, port, base, model, max_adapters, tracking_uri, print_command)
        return
    import uvicorn

    from gamesense.serving.llm.api import create_app

    api = create_app(base, model or None, dtype=dtype, max_batch=max_batch, max_adapters=max_adapters,
                     batch_wait_ms=batch_wait_ms, alias_ttl_s=alias_ttl_s, default_max_tokens=max_tokens, lora_kernel=lora_kernel,
                     tracking_uri=tracking_uri, max_body_bytes=max_body_bytes, api_keys=keys, public_paths=public or (),
                     max_queued=max_queued, max_tokens_cap=max_tokens_cap, max_stop_chars=max_stop_chars,
                     request_timeout_s=request_timeout)  # fmt: skip
    typer.echo(f"serving {base} and the registry's adapters on http://{host}:{port}/v1", err=True)
    uvicorn.run(api, host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)  # fmt: skip


def _vllm(host: str, port: int, base: str, models: list[str] | None, max_adapters: int,
          tracking_uri: str | None, print_only: bool) -> None:  # fmt: skip
    """Resolve every served registry model to a local adapter directory and run (or print) ``vllm serve``."""
    import os
    import shlex
    import shutil

    from gamesense.registry.mlflow_store import setup_tracking
    from gamesense.serving.llm.vllm import registry_command
    from gamesense.settings import work_dir

    setup_tracking(tracking_uri)
    command = registry_command(base, models or None, work_dir() / "llm-serving" / "vllm-adapters", host, port, max_adapters)
    line = shlex.join(command)
    if print_only:
        typer.echo(line)
        return
    if shutil.which("vllm") is None:
        typer.echo(line)
        fail("vllm is not installed here (it needs a CUDA GPU: pip install vllm); run the command above on a GPU machine")
    typer.echo(f"starting: {line}", err=True)
    os.execvp(command[0], command)
