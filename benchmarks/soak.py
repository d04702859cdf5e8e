"""Soak test of the LLM server run as a service: many clients for minutes, some of them leaving early.

    .venv/bin/python benchmarks/soak.py [--clients 32] [--minutes 2] [--max-tokens 48] [--max-queued 256]

Starts the real ``gamesense serve llm`` (SmolLM2-135M-Instruct, three random LoRA adapters registered in a fresh
MLflow store, an API key) as its own process on 127.0.0.1 and runs ``--clients`` threads for ``--minutes``
minutes (bounded to 30). Each client loops: a chat completion for adapter ``client mod 3`` (every fourth
request the base model), streamed or not (alternating), 8 to ``--max-tokens`` tokens; one request in five
is abandoned: a whole answer given up after 1 s, or a stream closed after its first chunk.

Prints: requests, answers by status (200, 429 refusals, abandoned, others; every 5xx is a failure), p50/p99
latency and generated tokens/s of the completed ones, the server's RSS at minute 1 and at the end (growth must
stay under 10%), the rows still decoding 2 s after the last client stopped (must be 0), and the size of
``/metrics`` before and after (bounded labels). Exit status 1 when a target is missed. Name the CPU beside
the figures (``lscpu``).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engagement_inference import free_port  # noqa: E402  (benchmarks/ is not a package)
from llm_server import PROMPTS, percentile, random_adapters  # noqa: E402

KEY = "sk-soak-" + "0" * 24


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_request(http: httpx.Client, model: str, prompt: str, max_tokens: int, stream: bool, leave: bool) -> tuple[str, float, int]:
    """(outcome, seconds, completion tokens): outcome is the HTTP status, or ``left`` for an abandoned request."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
            "stream": stream, "stream_options": {"include_usage": True} if stream else None}  # fmt: skip
    started = time.perf_counter()
    if not stream:
        try:
            r = http.post("/v1/chat/completions", json=body, timeout=1.0 if leave else 600)
        except httpx.TimeoutException:
            return "left", time.perf_counter() - started, 0
        tokens = r.json()["usage"]["completion_tokens"] if r.status_code == 200 else 0
        return str(r.status_code), time.perf_counter() - started, tokens
    with http.stream("POST", "/v1/chat/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            r.read()
            return str(r.status_code), time.perf_counter() - started, 0
        tokens, failed = 0, False
        for line in r.iter_lines():
            if leave and line.startswith("data: {"):
                return "left", time.perf_counter() - started, 0  # closing the stream drops the connection
            if line.startswith("data: {") and '"error"' in line[:20]:
                failed = True
            if '"usage": {' in line or '"usage":{' in line:
                tokens = int(line.split('"completion_tokens":')[1].split(",")[0])
    return ("stream_error" if failed else "200"), time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--max-queued", type=int, default=256)
    args = parser.parse_args()
    minutes = min(args.minutes, 30.0)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    os.environ["GAMESENSE_WORKDIR"] = str(work)

    from gamesense.registry.mlflow_store import setup_tracking
    from gamesense.serving.llm.engine import off_main_thread

    setup_tracking()
    print("making 3 random LoRA adapters (r=16, all-linear) ...", flush=True)
    models = off_main_thread(lambda: random_adapters(work))
    port = free_port()
    env = {**os.environ, "GAMESENSE_API_KEYS": KEY}
    server = subprocess.Popen([sys.executable, "-m", "gamesense", "serve", "llm", "--port", str(port), "--max-queued",
                               str(args.max_queued), *[a for m in models for a in ("-m", m)]], env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/livez", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        with httpx.Client(base_url=url, headers=headers) as http:  # warm-up: every adapter loaded once
            for model in models:
                http.post("/v1/chat/completions", json={"model": model, "max_tokens": 2, "messages": [{"role": "user",
                          "content": "hi"}]}, timeout=120).raise_for_status()  # fmt: skip
            metrics_before = len(http.get("/metrics").text.splitlines())
        print(f"{args.clients} clients for {minutes:g} min over {', '.join(models)} (+ base); server pid {server.pid}",
              flush=True)  # fmt: skip

        outcomes: Counter[str] = Counter()
        latencies: list[float] = []
        tokens = [0]
        lock = threading.Lock()
        stop_at = time.monotonic() + minutes * 60

        def client(c: int) -> None:
            rng = random.Random(c)
            with httpx.Client(base_url=url, headers=headers) as http:
                n = 0
                while time.monotonic() < stop_at:
                    model = "base" if n % 4 == 3 else models[c % len(models)]
                    leave = rng.random() < 0.2
                    try:
                        outcome, seconds, count = one_request(http, model, rng.choice(PROMPTS), rng.randint(8, args.max_tokens),
                                                              stream=n % 2 == 1, leave=leave)  # fmt: skip
                    except httpx.HTTPError as err:
                        outcome, seconds, count = f"transport:{type(err).__name__}", 0.0, 0
                    with lock:
                        outcomes[outcome] += 1
                        if outcome == "200":
                            latencies.append(seconds)
                            tokens[0] += count
                    n += 1

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(min(60.0, minutes * 60 / 2))
        rss_first = rss_mb(server.pid)
        for t in threads:
            t.join()
        wall = time.monotonic() - started
        rss_end = rss_mb(server.pid)
        time.sleep(2)
        with httpx.Client(base_url=url, headers=headers) as http:
            running = http.get("/healthz").json()["running"]
            metrics_after = len(http.get("/metrics").text.splitlines())
    finally:
        server.terminate()
        server.wait(timeout=60)

    total = sum(outcomes.values())
    server_errors = {k: v for k, v in outcomes.items() if k != "left" and (not k.isdigit() or k.startswith("5"))}
    growth = (rss_end - rss_first) / rss_first * 100
    print(f"\n{total} requests in {wall:.0f} s: {dict(sorted(outcomes.items()))}")
    if latencies:
        print(f"completed: p50 {percentile(latencies, 50):.2f} s, p99 {percentile(latencies, 99):.2f} s, "
              f"{tokens[0] / wall:.0f} generated tokens/s")  # fmt: skip
    print(f"server RSS: {rss_first:.0f} MB at minute 1, {rss_end:.0f} MB at the end ({growth:+.1f}%)")
    print(f"rows decoding 2 s after the clients stopped: {running}")
    print(f"/metrics lines: {metrics_before} before, {metrics_after} after")
    missed = [name for name, bad in (("5xx or transport errors", server_errors), ("RSS growth >= 10%", growth >= 10),
                                     ("rows still decoding", running), ("unanswered", not total)) if bad]  # fmt: skip
    print("targets met" if not missed else f"targets missed: {', '.join(missed)}")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
