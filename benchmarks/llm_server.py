"""LLM server benchmark: mixed-adapter batches against one adapter at a time, and a stream's first token.

    PYTHONPATH=src .venv/bin/python benchmarks/llm_server.py [--requests 4] [--clients 8] [--max-tokens 32]

The real SmolLM2-135M-Instruct base with three LoRA adapters: the registered models of ``--workdir`` that
were trained on it (``--workdir`` given), else three random adapters (r=16, all linear layers, random B so
they change the outputs) registered in a fresh MLflow store. The app runs under uvicorn on 127.0.0.1 in
this process; ``--clients`` threads with the official ``openai`` client each send ``--requests`` chat
completions of exactly ``--max-tokens`` tokens (greedy, ``ignore_eos``), client i asking adapter i mod 3.

Measured for (a) mixed batches (the default engine), (b) the same with PEFT's mixed-batch forward
(``lora_kernel="peft"``) and (c) ``mixed_batches=False`` (a batch only holds
one adapter's requests: serving one adapter at a time): p50/p99 latency, requests/s, generated tokens/s.
Then time to first token of a stream (first content chunk), median of ``--ttft-runs`` requests sent one
at a time to the idle server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # support.served_on_localhost: uvicorn on a free port

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPTS = [
    "Give me a one-line tip for the game Snake.",
    "What does a flush beat in poker?",
    "Describe a cozy farming game in a sentence.",
    "Name three classic arcade games.",
    "How do I get better at chess openings?",
    "Write a short taunt for a racing game rival.",
    "What is a roguelike?",
    "Summarise the rules of tic-tac-toe.",
]


def random_adapters(root: Path) -> list[str]:
    """Three random LoRA adapters on the base, registered as champions in the current MLflow store."""
    import torch
    from peft import LoraConfig, get_peft_model

    from gamesense.models.base import load_base_model
    from gamesense.registry.mlflow_store import register_version, set_alias

    names = []
    for i in range(3):
        torch.manual_seed(i)
        model = load_base_model(BASE, dtype="float32")
        config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
        peft = get_peft_model(model, config)
        for name, param in peft.named_parameters():
            if "lora_B" in name:  # random but small: outputs change, text stays text
                torch.nn.init.normal_(param, std=0.002)
        path = root / f"adapter{i}"
        peft.save_pretrained(path)
        name = f"gamesense-bench{i}"
        version = register_version(name, path.as_uri(), None, {"task": "bench", "base_model": BASE})
        set_alias(name, version.version, "champion")
        names.append(name)
    return names


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def load_phase(client, models: list[str], clients: int, requests: int, max_tokens: int) -> dict:
    """``clients`` threads, each sending ``requests`` chat completions one after the other."""

    def one_client(c: int) -> list[tuple[float, int]]:
        out = []
        for r in range(requests):
            started = time.perf_counter()
            reply = client.chat.completions.create(
                model=models[c % len(models)], temperature=0, max_tokens=max_tokens, extra_body={"ignore_eos": True},
                messages=[{"role": "user", "content": PROMPTS[(c + r) % len(PROMPTS)]}])  # fmt: skip
            out.append((time.perf_counter() - started, reply.usage.completion_tokens))
        return out

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for batch in pool.map(one_client, range(clients)) for x in batch]
    wall = time.perf_counter() - started
    latencies = [lat for lat, _ in results]
    tokens = sum(n for _, n in results)
    return {"p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99), "requests_per_s": len(results) / wall,
            "tokens_per_s": tokens / wall, "requests": len(results), "wall_s": wall}  # fmt: skip


def ttft(client, model: str, runs: int) -> list[float]:
    """Seconds to the first content chunk of a stream, one request at a time."""
    times = []
    for i in range(runs):
        started = time.perf_counter()
        stream = client.chat.completions.create(model=model, temperature=0, max_tokens=8, stream=True,
                                                messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])  # fmt: skip
        first = None
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
        times.append(first if first is not None else float("nan"))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="use the registered adapters of this GameSense working directory")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--ttft-runs", type=int, default=10)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    os.environ["GAMESENSE_WORKDIR"] = args.workdir or tempfile.mkdtemp(prefix="llm-bench-")

    import openai
    import torch
    from support import served_on_localhost

    from gamesense.models.hardware import configure_threads
    from gamesense.registry.mlflow_store import setup_tracking
    from gamesense.serving.llm.api import create_app
    from gamesense.serving.llm.engine import off_main_thread
    from gamesense.serving.llm.resolver import ModelResolver

    setup_tracking()
    plan = configure_threads("auto")
    print(plan.describe(), f"| load average {os.getloadavg()[0]:.2f}", flush=True)
    models = sorted(ModelResolver(BASE, None, 0, Path(os.environ["GAMESENSE_WORKDIR"]) / "tmp").served())[:3] if args.workdir else []
    if len(models) < 3:
        print("making 3 random LoRA adapters (r=16, all-linear) ...", flush=True)
        # in a thread that ends: the main thread must not keep a libgomp pool (see serving.llm.engine.off_main_thread)
        models = off_main_thread(lambda: random_adapters(Path(os.environ["GAMESENSE_WORKDIR"])))
    print(f"adapters: {', '.join(models)}; {args.clients} clients x {args.requests} requests x {args.max_tokens} tokens",
          flush=True)  # fmt: skip
    results = {}
    modes = [("mixed batches", True, "batched"), ("mixed batches, PEFT kernel", True, "peft"),
             ("one adapter at a time", False, "batched")]
    for label, mixed, kernel in modes:
        app = create_app(BASE, models, dtype=args.dtype, max_batch=16, mixed_batches=mixed, lora_kernel=kernel)
        with served_on_localhost(app, start_timeout_s=120) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
            load_phase(client, models, len(models), 1, 4)  # warm-up: adapters loaded, kernels initialised
            results[label] = load_phase(client, models, args.clients, args.requests, args.max_tokens)
            engine = app.state.engine
            results[label]["max_rows_per_step"] = engine.stats["max_rows_per_step"]
            results[label]["max_adapters_per_step"] = engine.stats["max_adapters_per_step"]
            if label == "mixed batches":
                single = load_phase(client, models, 1, 3, args.max_tokens)
                first = ttft(client, models[0], args.ttft_runs)
        print(f"{label}: {results[label]}", flush=True)
    print(f"\nSmolLM2-135M-Instruct ({app.state.engine.model.dtype}, torch {torch.__version__}, {plan.threads} threads), "
          f"{args.clients} concurrent clients over 3 adapters, {args.max_tokens}-token chat completions:")  # fmt: skip
    print(f"| {'mode':26s} | p50 latency | p99 latency | requests/s | tokens/s | rows/step (max) |")
    print("|---|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label:26s} | {r['p50_s']:.2f} s | {r['p99_s']:.2f} s | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
              f"{r['max_rows_per_step']} |")  # fmt: skip
    print(f"| one client, alone          | {single['p50_s']:.2f} s | {single['p99_s']:.2f} s | {single['requests_per_s']:.2f} | "
          f"{single['tokens_per_s']:.0f} | 1 |")  # fmt: skip
    print(f"stream time to first token (alone, median of {len(first)}): {statistics.median(first) * 1000:.0f} ms "
          f"(min {min(first) * 1000:.0f}, max {max(first) * 1000:.0f})")  # fmt: skip


if __name__ == "__main__":
    main()
