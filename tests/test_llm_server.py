"""``gamesense serve llm``: the OpenAI-compatible server, called with the official ``openai`` client.

Real parts: a tiny random Llama with the SmolLM2 tokenizer as the base, three LoRA adapters made on it with
random B matrices (``init_lora_weights=False``, so each changes the outputs), registered in a real MLflow
SQLite store, the app behind uvicorn on 127.0.0.1. Decoding is greedy in float32 so answers are exact.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from support import isolated_workdir, served_on_localhost
from typer.testing import CliRunner

from gamesense.serving.llm.requests import held_back

ALPHA, BETA, FOREIGN = "gamesense-alpha", "gamesense-beta", "gamesense-foreign"
FIXED = {"ignore_eos": True}  # fixed-length answers: a random model may emit EOS at any step


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model_dir):
    """MLflow store: alpha v1 (champion), alpha v2 (challenger), beta v1 (champion), and foreign v1, an
    adapter whose config names another base model."""
    from gamesense.registry.mlflow_store import register_version, set_alias, setup_tracking

    root = tmp_path_factory.mktemp("llm-server")
    with isolated_workdir(root):
        setup_tracking()
        tags = {"task": "test", "base_model": str(tiny_model_dir)}
        dirs = {name: make_adapter(tiny_model_dir, root / name, seed) for seed, name in enumerate(["a1", "a2", "b1"], 1)}
        foreign = shutil.copytree(dirs["b1"], root / "foreign")
        config = json.loads((foreign / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "someone/other-base"
        (foreign / "adapter_config.json").write_text(json.dumps(config))
        for name, path, alias in [(ALPHA, dirs["a1"], "champion"), (ALPHA, dirs["a2"], "challenger"),
                                  (BETA, dirs["b1"], "champion")]:  # fmt: skip
            set_alias(name, register_version(name, path.as_uri(), None, tags).version, alias)
        v = register_version(FOREIGN, foreign.as_uri(), None, {"task": "test", "base_model": "someone/other-base"})
        set_alias(FOREIGN, v.version, "champion")
        yield root


def start(tiny_model_dir, **kwargs):
    from gamesense.serving.llm.api import create_app

    options = {"models": [ALPHA, BETA, FOREIGN], "dtype": "float32", "batch_wait_ms": 200, "alias_ttl_s": 0.3} | kwargs
    return create_app(str(tiny_model_dir), **options)


@pytest.fixture(scope="module")
def server(registry, tiny_model_dir):
    """(app, base URL, openai client) of a server over the registry."""
    with isolated_workdir(registry):
        app = start(tiny_model_dir)
        with served_on_localhost(app) as url:
            yield app, url, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def chat(client, model: str, text: str, max_tokens: int = 12, **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], temperature=0,
                                          max_tokens=max_tokens, extra_body=FIXED, **kwargs)  # fmt: skip


def test_models_list_has_base_every_served_model_and_alias(server):
    _, _, client = server
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "base"
    assert {ALPHA, f"{ALPHA}@champion", f"{ALPHA}@challenger", BETA, f"{BETA}@champion"} <= set(ids)
    assert all(m.owned_by == "gamesense" and m.object == "model" for m in client.models.list().data)


def test_default_discovery_serves_task_models_on_this_base_only(registry, tiny_model_dir):
    from gamesense.serving.llm.resolver import ModelResolver

    with isolated_workdir(registry):
        served = ModelResolver(str(tiny_model_dir), None, 5.0, registry / "cache").served()
    assert set(served) == {ALPHA, BETA}  # the foreign adapter's versions name another base


def test_chat_completion_text_usage_and_adapters_that_change_the_answer(server, tiny_model_dir):
    app, _, client = server
    reply = chat(client, ALPHA, "Describe the game Snake.")
    prompt = app.state.engine.encode_chat([{"role": "user", "content": "Describe the game Snake."}])
    assert reply.object == "chat.completion" and reply.model == ALPHA
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content and choice.finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == \
        (len(prompt), 12, len(prompt) + 12)
    answers = {m: chat(client, m, "Describe the game Snake.").choices[0].message.content
               for m in ["base", str(tiny_model_dir), ALPHA, f"{ALPHA}@champion", f"{ALPHA}/1", f"models:/{ALPHA}/1",
                         f"{ALPHA}@challenger", BETA]}  # fmt: skip
    assert answers["base"] == answers[str(tiny_model_dir)]
    assert answers[ALPHA] == answers[f"{ALPHA}@champion"] == answers[f"{ALPHA}/1"] == answers[f"models:/{ALPHA}/1"]
    assert len({answers["base"], answers[ALPHA], answers[f"{ALPHA}@challenger"], answers[BETA]}) == 4


def test_stream_joins_to_the_greedy_answer_with_role_finish_and_usage(server):
    _, _, client = server
    full = chat(client, BETA, "Tell me about poker.", max_tokens=20)
    chunks = list(chat(client, BETA, "Tell me about poker.", max_tokens=20, stream=True,
                       stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_stop_string_cuts_the_answer_and_is_never_streamed(server):
    _, _, client = server
    full = chat(client, ALPHA, "Say something.", max_tokens=24).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.find(stop)]
    reply = chat(client, ALPHA, "Say something.", max_tokens=24, stop=[stop, "never-there"])
    assert reply.choices[0].message.content == expected and reply.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(client, ALPHA, "Say something.", max_tokens=24,
                                                                      stop=stop, stream=True))  # fmt: skip
    assert streamed == expected


def test_held_back_text_waits_for_stop_prefixes_and_split_characters():
    assert held_back("the end. ST", ["STOP"]) == 2
    assert held_back("the end.", ["STOP"]) == 0
    assert held_back("caf\ufffd", []) == 1  # half of a multi-byte character
    assert held_back("abc", ["c", "bcd"]) == 2


def test_text_completion(server):
    _, _, client = server
    out = client.completions.create(model=f"{ALPHA}@challenger", prompt="Once upon a time", max_tokens=6, temperature=0,
                                    extra_body=FIXED)  # fmt: skip
    assert out.object == "text_completion" and out.choices[0].text and out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 6
    again = client.completions.create(model=f"{ALPHA}/2", prompt=["Once upon a time"], max_tokens=6, temperature=0,
                                      extra_body=FIXED)  # fmt: skip
    assert again.choices[0].text == out.choices[0].text


def test_sampling_with_a_seed_repeats_and_differs_from_greedy(server):
    _, _, client = server
    kwargs = {"model": BETA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "temperature": 1.0,
              "top_p": 0.95, "extra_body": {**FIXED, "repetition_penalty": 1.2}}  # fmt: skip
    first = client.chat.completions.create(seed=7, **kwargs).choices[0].message.content
    assert client.chat.completions.create(seed=7, **kwargs).choices[0].message.content == first
    assert client.chat.completions.create(seed=8, **kwargs).choices[0].message.content != first


def test_unknown_model_is_404_and_foreign_base_400_in_openai_format(server, tiny_model_dir):
    _, url, client = server
    for name in ["gpt-4o", f"{ALPHA}@nope", f"{ALPHA}/99"]:
        with pytest.raises(openai.NotFoundError) as err:
            chat(client, name, "hi")
        assert err.value.code == "model_not_found" and err.value.body["param"] == "model", name
        assert err.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, FOREIGN, "hi")
    assert "someone/other-base" in err.value.message and str(tiny_model_dir) in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}], n=2)
    assert err.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, "base", "word " * 600)  # the tiny model's context is 512 tokens
    assert err.value.code == "context_length_exceeded"


def test_bad_body_is_422_naming_the_field(server):
    _, url, client = server
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(model="base", messages=[{"role": "robot", "content": "hi"}])
    assert err.value.body["param"] == "messages.0.role" and err.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}], temperature=5)
    assert err.value.body["param"] == "temperature"
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "base"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages"
    r = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    huge = {"model": "base", "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(**huge)
    assert err.value.status_code == 413 and "larger than 8388608 bytes" in err.value.body["message"]
    assert err.value.body["type"] == "invalid_request_error"


def ask_all(client, models: list[str], prompts: list[str], concurrent: bool) -> list[str]:
    def one(i: int) -> str:
        return chat(client, models[i], prompts[i], max_tokens=10 + 3 * i).choices[0].message.content

    if not concurrent:
        return [one(i) for i in range(len(models))]
    with ThreadPoolExecutor(len(models)) as pool:
        return list(pool.map(one, range(len(models))))


MIXED = ["base", ALPHA, f"{ALPHA}@challenger", BETA, ALPHA, BETA]
PROMPTS = ["hi", "Describe Snake in one line.", "What beats a flush?", "x", "Rate this game: 9/10 RPG.", "hello there"]


def test_mixed_adapter_batch_returns_what_each_adapter_returns_alone(server):
    app, url, client = server
    alone = ask_all(client, MIXED, PROMPTS, concurrent=False)
    engine = app.state.engine
    engine.stats["max_adapters_per_step"] = 0
    together = ask_all(client, MIXED, PROMPTS, concurrent=True)
    assert together == alone
    assert engine.stats["max_adapters_per_step"] >= 3  # the requests really shared forward passes
    metrics = httpx.get(f"{url}/metrics").text
    steps = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("gamesense_llm_batch_adapters_count")))
    single = float(next(line.split()[-1] for line in metrics.splitlines()
                        if line.startswith('gamesense_llm_batch_adapters_bucket{le="1.0"}')))  # fmt: skip
    assert single < steps


def test_lru_eviction_with_one_adapter_slot_and_peft_kernel_answers_the_same(server, registry, tiny_model_dir):
    _, _, client = server
    expected = ask_all(client, MIXED, PROMPTS, concurrent=False)
    with isolated_workdir(registry):
        app = start(tiny_model_dir, max_adapters=1, lora_kernel="peft")  # PEFT's adapter_names forward
        with served_on_localhost(app) as url:
            small = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
            assert ask_all(small, MIXED, PROMPTS, concurrent=True) == expected
            health = httpx.get(f"{url}/healthz").json()
    assert len(health["loaded_adapters"]) == 1 and health["stats"]["adapter_evictions"] >= 2


def test_alias_move_is_served_after_the_ttl(server):
    from gamesense.registry.mlflow_store import set_alias

    app, _, client = server
    v1, v2 = (chat(client, f"{ALPHA}/{v}", "Which version are you?").choices[0].message.content for v in (1, 2))
    assert chat(client, ALPHA, "Which version are you?").choices[0].message.content == v1
    try:
        set_alias(ALPHA, 2, "champion")
        time.sleep(0.5)  # alias_ttl_s=0.3
        assert chat(client, ALPHA, "Which version are you?").choices[0].message.content == v2
        assert "gamesense_alpha_v2" in app.state.engine.loaded_adapters()
    finally:
        set_alias(ALPHA, 1, "champion")
        time.sleep(0.5)


def test_healthz_and_metrics(server):
    _, url, client = server
    chat(client, BETA, "hi")
    health = httpx.get(f"{url}/healthz").json()
    assert health["status"] == "ok" and health["queue_length"] == 0 and "gamesense_beta_v1" in health["loaded_adapters"]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'gamesense_llm_requests_total{endpoint="/v1/chat/completions",model="gamesense-beta",status="200"}' in metrics
    assert 'status="404"' in metrics and "gamesense_llm_time_to_first_token_seconds_bucket" in metrics
    assert 'gamesense_llm_generated_tokens_total{model="gamesense-beta"}' in metrics
    assert "gamesense_llm_loaded_adapters" in metrics and "gamesense_llm_queue_length 0.0" in metrics


def test_cli_vllm_command_resolves_every_served_adapter(registry, tiny_model_dir):
    from gamesense.cli import app as cli

    with isolated_workdir(registry):
        res = CliRunner().invoke(cli, ["serve", "llm", "--engine", "vllm", "--print-command", "--base", str(tiny_model_dir),
                                       "-m", ALPHA, "-m", BETA, "--port", "8011"])  # fmt: skip
    assert res.exit_code == 0, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith(f"vllm serve {tiny_model_dir} --host 127.0.0.1 --port 8011 --served-model-name base")
    assert "--enable-lora --lora-modules" in line and "--max-lora-rank 8" in line and "--max-loras 3" in line
    for name in [f"{ALPHA}@champion=", f"{ALPHA}@challenger=", f"{BETA}=", f"{ALPHA}="]:
        assert f" {name}" in line, name
    res = CliRunner().invoke(cli, ["serve", "engagement", "--help"])
    assert res.exit_code == 0 and "--reload-interval" in res.output
