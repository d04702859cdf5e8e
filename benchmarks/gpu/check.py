"""GameSense GPU check: one part per subcommand, each run in its own process by benchmarks/gpu/run.sh.

    python3 benchmarks/gpu/check.py env|prep|train MODEL|anchor|decode|serve|qlora|summary

Results go to $GPU_CHECK_WORK/results/<part>.json (rewritten after every measurement, so a part killed by its
time cap keeps what it measured); ``summary`` merges them into $OUT/summary.json and prints a short table.
Everything runs on random-initialised models built from configs (no weights exist on the device) with the
real SmolLM2 tokenizer (benchmarks/gpu/tok) and the ViGGO files in $GPU_CHECK_DATA (benchmarks/gpu/data/viggo
where prepare.sh copied them, else ../shared/datasets/viggo).
GPU_CHECK_SMOKE=1: tiny models and sizes, for a dry run on a CPU.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

SMOKE = os.environ.get("GPU_CHECK_SMOKE", "0") == "1"
G = Path(__file__).resolve().parent
ROOT = G.parent.parent
WORK = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/gpucheck"))
RESULTS = WORK / "results"
DATA = Path(os.environ.get("GPU_CHECK_DATA") or next(
    (d for d in (G / "data" / "viggo", ROOT.parent / "shared" / "datasets" / "viggo") if d.is_dir()), G / "data" / "viggo"))
TOK = G / "tok"
DEADLINE = float(os.environ.get("GPU_CHECK_PART_DEADLINE") or 0)  # epoch seconds; 0: none

# shapes of the two models, over the SmolLM2-135M config in tok/config.json
SHAPES = {
    "135m": {},
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
             "num_key_value_heads": 32, "head_dim": 64, "rope_parameters": {"rope_theta": 130000.0, "rope_type": "default"}},
}  # fmt: skip
if SMOKE:
    SHAPES = {
        "135m": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "head_dim": 16},
        "1.7b": {"hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 4, "head_dim": 24},
    }  # fmt: skip

# sizes: real run / smoke run
TRAIN = {  # model -> (optimizer steps, steady state from step, [(batch, runtime.compile)])
    "135m": (60, 6, [(16, True), (64, True), (64, False)]),
    "1.7b": (30, 6, [(64, False), (128, False)]),
}
DECODE = {"prompts": 512, "max_new_tokens": 64, "batches": [128, 512]}
SERVE = {"max_batch": 32, "clients": 32, "requests": 3, "max_tokens": 64}
QLORA = {"model": "1.7b", "batch": 64, "steps": 16, "from": 4}
ANCHOR = {"steps": 12, "batch": 16, "rows": 256}
if SMOKE:
    TRAIN = {"135m": (4, 1, [(4, True), (4, False)]), "1.7b": (3, 1, [(4, True)])}
    DECODE = {"prompts": 12, "max_new_tokens": 6, "batches": [8, 12]}
    SERVE = {"max_batch": 4, "clients": 3, "requests": 2, "max_tokens": 6}
    QLORA = {"model": "135m", "batch": 4, "steps": 3, "from": 1}
    ANCHOR = {"steps": 3, "batch": 2, "rows": 8}


# --- helpers --------------------------------------------------------------------------------------------------


def left() -> float:
    return DEADLINE - time.time() if DEADLINE else float("inf")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def record(part: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / f".{part}.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(RESULTS / f"{part}.json")


def read(part: str) -> dict:
    try:
        return json.loads((RESULTS / f"{part}.json").read_text())
    except (OSError, ValueError):
        return {}


def error_text(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:400] if text else ''}"


def failed(err: BaseException) -> str:
    traceback.print_exc()
    return error_text(err)


def errors(runs, measured: bool = True) -> None:
    """Exit with code 3 (run.sh: "partial") when any of ``runs`` (dicts) failed, or, with ``measured``, when none
    of them measured anything (all skipped for time)."""
    runs = [r for r in runs if isinstance(r, dict)]
    bad = [r for r in runs if r.get("error")]
    if bad:
        print(f"error: {len(bad)} of {len(runs)} measurements failed: {bad[0]['error']}", flush=True)
        sys.exit(3)
    if measured and not any(r.get("tokens_per_s") for r in runs):
        reasons = {r.get("skipped") for r in runs if r.get("skipped")}
        print(f"error: nothing measured ({'; '.join(sorted(reasons)) or 'no runs'})", flush=True)
        sys.exit(3)


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_gpu() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_mem() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}  # fmt: skip


def reset_mem() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def model_dir(name: str) -> Path:
    return WORK / "models" / name


def matmul_tflops(dtype_name: str, m: int, k: int, n: int, reps: int = 10) -> dict:
    """Best and median TFLOP/s of m x k @ k x n matmuls on the GPU (CPU without one), timed with CUDA events."""
    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    sync()
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
    flops = 2 * m * k * n
    del a, b
    free_gpu()
    return {"shape": f"{m}x{k}x{n}", "dtype": dtype_name, "best_tflops": round(flops / min(times) / 1e12, 4),
            "median_tflops": round(flops / statistics.median(times) / 1e12, 4)}  # fmt: skip


def peak_bf16() -> float:
    """bf16 matmul peak (TFLOP/s) measured by the env part, else measured now."""
    peak = read("env").get("peak", {}).get("bf16_8192", {}).get("best_tflops")
    if not peak:
        size = 512 if SMOKE else 8192
        peak = matmul_tflops("bfloat16", size, size, size, reps=5)["best_tflops"]
    return float(peak)


def recipe_for(model: str, overrides: list[str]):
    """The built-in viggo recipe, pointed at a random model and at the copied tree's data (the project's own
    ``--set`` overrides)."""
    from gamesense.config import load_recipe
    from gamesense.training.recipe import LLMRecipe

    base = [f"model.base={model_dir(model)}", f"data.train_file={DATA / 'train.csv'}",
            f"data.eval_file={DATA / 'validation.csv'}"]  # fmt: skip
    if SMOKE:
        base.append("runtime.fused_loss=true")  # the GPU default (TRL's fused loss), exercised on the CPU too
    return load_recipe("viggo", LLMRecipe, base + overrides)


# --- part: env ------------------------------------------------------------------------------------------------


def part_env() -> None:
    import importlib
    import platform

    out: dict = {"python": sys.version.split()[0], "platform": platform.platform(), "smoke": SMOKE}
    record("env", out)
    import torch

    versions = {}
    for name in ("gamesense", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "pydantic", "tokenizers", "huggingface_hub",
                 "safetensors", "numpy", "pandas", "pyarrow", "triton", "bitsandbytes"):  # fmt: skip
        try:
            module = importlib.import_module(name)
            versions[name] = f"{getattr(module, '__version__', '?')} ({Path(module.__file__).parent.parent})"
        except Exception as err:  # noqa: BLE001 - any import failure is a finding
            versions[name] = f"not importable: {error_text(err)}"
    out["versions"] = versions
    for k, v in versions.items():
        say(f"{k:16s} {v}")
    out["cuda"] = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
                   "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out["cuda"].update(device=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                           sms=props.multi_processor_count, bf16=torch.cuda.is_bf16_supported(),
                           flash_sdp=torch.backends.cuda.flash_sdp_enabled(), mem_efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled())  # fmt: skip
    say(f"cuda: {out['cuda']}")
    out["cpu"] = {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gcc": shutil.which("gcc"), "cc": shutil.which("cc")}
    record("env", out)

    size = 512 if SMOKE else 8192
    out["peak"] = {}
    for label, args in ((f"bf16_{size}", ("bfloat16", size, size, size)),
                        (f"fp32_{size}", ("float32", size, size, size)),
                        ("bf16_mlp_135m_b16", ("bfloat16", 16 * 96, 576, 1536)),
                        ("bf16_mlp_1.7b_b16", ("bfloat16", 16 * 96, 2048, 8192))):  # fmt: skip
        try:
            out["peak"][label.replace(str(size), "8192") if SMOKE else label] = matmul_tflops(*args, reps=3 if "fp32" in label else 10)
        except Exception as err:  # noqa: BLE001
            out["peak"][label] = {"error": failed(err)}
        record("env", out)
    say(f"matmul peaks: {json.dumps(out['peak'])}")

    # what the project decides on this machine
    from gamesense.cli.launch import find_jemalloc
    from gamesense.models.hardware import (active_allocator, attention_implementation, configure_threads, cpu_supports_bf16,
                                           inference_dtype, load_dtype, resolve_bf16)  # fmt: skip
    from gamesense.training.callbacks import ReleaseFreedMemory
    from gamesense.training.methods.sft import sft_trainer_class

    threads_before = torch.get_num_threads()
    plan = configure_threads("auto")  # as pipelines.llm_steps.use_free_cores does before training and evaluation
    project = {
        "attention_auto_training": attention_implementation("auto", training=True) or "library default",
        "attention_auto_inference": attention_implementation("auto", training=False) or "library default",
        "bf16_auto": resolve_bf16("auto"),
        "load_dtype_training": str(load_dtype("auto", training=True)),
        "load_dtype_inference": str(load_dtype("auto", training=False)),
        "inference_dtype": str(inference_dtype("auto")),
        "cpu_supports_bf16": cpu_supports_bf16(),
        "sft_trainer_class": sft_trainer_class(None).__name__,
        "release_freed_memory_callback": ReleaseFreedMemory.create(10) is not None,
        "configure_threads_auto": f"{threads_before} -> {plan.threads} threads ({plan.describe()})",
        "allocator": active_allocator(),
        "jemalloc_found": find_jemalloc(),
    }
    torch.set_num_threads(threads_before)
    jemalloc = project["jemalloc_found"]
    if jemalloc:  # what `gamesense` would do on this machine: re-exec itself with jemalloc preloaded
        code = ("import torch; x = torch.randn(2048, 2048, device='cuda' if torch.cuda.is_available() else 'cpu'); "
                "print('ok', float((x @ x).float().sum()))")  # fmt: skip
        env = {**os.environ, "LD_PRELOAD": jemalloc}
        try:
            proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)
            project["jemalloc_preload_cuda_test"] = f"rc={proc.returncode} {(proc.stdout + proc.stderr).strip()[-300:]}"
        except subprocess.TimeoutExpired:
            project["jemalloc_preload_cuda_test"] = "timed out (90 s)"
    out["project"] = project
    for k, v in project.items():
        say(f"project {k}: {v}")
    record("env", out)


# --- part: prep (random models) ----------------------------------------------------------------------------------


def make_model(name: str) -> dict:
    """A random-initialised Llama model of shape ``name`` saved with the real tokenizer, as a base-model folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    target = model_dir(name)
    if (target / "model.safetensors").is_file() or any(target.glob("model*.safetensors")):
        return {"dir": str(target), "cached": True}
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = json.loads((TOK / "config.json").read_text())
    config.update(SHAPES[name])
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    config["dtype"] = str(dtype).removeprefix("torch.")
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(TOK / f, tmp / f)
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp), dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    del model
    free_gpu()
    return {"dir": str(target), "params_m": round(params / 1e6, 1), "dtype": str(dtype), "seconds": round(time.perf_counter() - started, 1)}


def part_prep() -> None:
    out: dict = {"models": {}}
    for name in SHAPES:
        try:
            out["models"][name] = make_model(name)
        except Exception as err:  # noqa: BLE001
            out["models"][name] = {"error": failed(err)}
        say(f"model {name}: {out['models'][name]}")
        record("prep", out)
    # what the project's loader makes of it on this machine
    from gamesense.models.base import load_base_model

    for label, kwargs in (("training", {"training": True, "dtype": "auto", "attn_implementation": "auto"}),
                          ("inference", {"dtype": "auto", "attn_implementation": "auto"})):  # fmt: skip
        try:
            model = load_base_model(str(model_dir("135m")), **kwargs)
            p = next(model.parameters())
            out[f"load_{label}"] = {"device": str(p.device), "dtype": str(p.dtype),
                                    "attn_implementation": getattr(model.config, "_attn_implementation", None),
                                    "hf_device_map": getattr(model, "hf_device_map", None)}  # fmt: skip
            del model
            free_gpu()
        except Exception as err:  # noqa: BLE001
            out[f"load_{label}"] = {"error": failed(err)}
        say(f"load_base_model ({label}): {out[f'load_{label}']}")
        record("prep", out)
    errors([*out["models"].values(), out["load_training"], out["load_inference"]], measured=False)


# --- part: train ----------------------------------------------------------------------------------------------------


@functools.cache
def flops_per_token_cached(model: str, rows: int, records_json: str) -> float:
    return flops_per_token(model, json.loads(records_json))


def flops_per_token(model: str, records: list) -> float:
    """Training FLOPs per non-pad token over ``records`` (gamesense.training.flops; LoRA r=16 on every projection,
    LM head on completion tokens, as both our CPU loss and TRL's fused GPU loss compute it)."""
    from transformers import AutoConfig

    from gamesense.models.base import load_tokenizer
    from gamesense.training.flops import DecoderShape, sequence_training_flops

    tokenizer = load_tokenizer(str(model_dir(model)))
    shape = DecoderShape.from_config(AutoConfig.from_pretrained(model_dir(model)), 16)
    total = tokens = 0.0
    for r in records:
        length = len(tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=False))
        prompt = len(tokenizer.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True, return_dict=False))
        total += sequence_training_flops(shape, length, length - prompt)
        tokens += length
    return total / tokens


def make_timer():
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Per optimizer step: seconds (GPU synchronised) and non-pad tokens; also what the trainer runs on."""

        def __init__(self):
            self.times: list[float] = []
            self.tokens: list[int] = []
            self.info: dict = {}
            self.last = (0.0, 0)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            sync()
            self.last = (time.perf_counter(), state.num_input_tokens_seen)
            if model is not None:
                named = list(model.named_parameters())
                lora = next((p for n, p in named if "lora_A" in n), None)
                frozen = next((p for n, p in named if not p.requires_grad), None)
                self.info = {"trainer_device": str(args.device), "use_cpu": args.use_cpu, "bf16": args.bf16,
                             "activation_checkpointing": getattr(args, "activation_checkpointing", None),
                             "base_weight": f"{frozen.dtype} on {frozen.device}" if frozen is not None else None,
                             "lora_weight": f"{lora.dtype} on {lora.device}" if lora is not None else None,
                             "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None),
                             "trainable_m": round(sum(p.numel() for _, p in named if p.requires_grad) / 1e6, 2)}  # fmt: skip

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            now = time.perf_counter()
            self.times.append(now - self.last[0])
            self.tokens.append(state.num_input_tokens_seen - self.last[1])
            self.last = (now, state.num_input_tokens_seen)

        def on_train_end(self, args, state, control, **kwargs):
            try:
                from torch._dynamo.utils import counters

                self.info["dynamo"] = {k: dict(v) for k, v in counters.items() if k in ("stats", "recompiles", "graph_break")}
                self.info["dynamo"]["graph_break"] = len(counters.get("graph_break", {}))
            except Exception:  # noqa: BLE001
                pass

    del torch
    return StepTimer()


def train_once(model: str, batch: int, steps: int, steady_from: int, compile_layers: bool, extra: list[str] | None = None,
               tag: str = "") -> dict:  # fmt: skip
    """One run of the project's SFT stage (gamesense.training.stage.run_stage, as `gamesense finetune` runs it)."""
    from gamesense.config import resolve_data_path
    from gamesense.tasks import get_task
    from gamesense.training import stage as stages
    from gamesense.training.methods.base import StageInputs, build_records

    overrides = [f"sft.max_steps={steps}", f"sft.per_device_train_batch_size={batch}", "sft.save_strategy='no'",
                 "sft.include_num_input_tokens_seen=non_padding", "sft.logging_steps=10",
                 f"runtime.compile={'true' if compile_layers else 'false'}", *(extra or [])]  # fmt: skip
    recipe = recipe_for(model, overrides)
    task = get_task(recipe.task, recipe.task_options)
    examples = task.load(resolve_data_path(recipe.data.train_file), min(5103, batch * steps)).examples
    records = build_records("sft", task, examples)
    timer = make_timer()
    original = stages.build_trainer

    def build_trainer(method, inputs, args):
        trainer = original(method, inputs, args)
        trainer.add_callback(timer)
        timer.info["trainer_class"] = type(trainer).__name__
        timer.info["callbacks"] = [type(c).__name__ for c in trainer.callback_handler.callbacks]
        return trainer

    stages.build_trainer = build_trainer
    original_compile = stages.compile_layers
    if SMOKE and compile_layers and os.environ.get("GPU_CHECK_SMOKE_COMPILE") != "1":
        def no_compile(model):  # a CPU compile takes minutes: stands in for a compile that fails
            raise RuntimeError("smoke run: compile replaced by a simulated failure")

        stages.compile_layers = no_compile
    reset_mem()
    started = time.perf_counter()
    try:
        stage_dir = WORK / "train" / f"{model}-b{batch}-{'compiled' if compile_layers else 'eager'}{tag}"
        result = stages.run_stage("sft", StageInputs(recipe=recipe, task=task, train_records=records,
                                                     stage_dir=stage_dir, show_progress=False))  # fmt: skip
    finally:
        stages.build_trainer, stages.compile_layers = original, original_compile
    wall = time.perf_counter() - started
    times, tokens = timer.times[steady_from:], timer.tokens[steady_from:]
    rate = sum(tokens) / sum(times) if times and sum(times) > 0 else 0.0
    fpt = flops_per_token_cached(model, len(records), json.dumps(records))
    peak = peak_bf16()
    out = {
        "model": model, "batch": batch, "compile": compile_layers, "steps": len(timer.times), "wall_s": round(wall, 1),
        "first_step_s": round(timer.times[0], 2) if timer.times else None,
        "median_step_s": round(statistics.median(times), 4) if times else None,
        "tokens_per_step": round(statistics.mean(tokens), 1) if tokens else None,
        "tokens_per_s": round(rate, 1), "gflop_per_token": round(fpt / 1e9, 3),
        "mfu": round(rate * fpt / (peak * 1e12), 4) if peak > 0 else None, "peak_tflops": peak,
        "project_metrics": {k: round(v, 4) for k, v in result.metrics.items()},
        "adapter_dir": result.adapter_dir, **gpu_mem(), **timer.info,
    }  # fmt: skip
    del result
    free_gpu()
    return out


#: what to drop, in turn, when a training run fails: the recipe's layer compilation, then TRL's fused LM-head loss
FALLBACKS = [(None, []), (False, []), (False, ["runtime.fused_loss=false"])]


def part_train(model: str) -> None:
    steps, steady_from, configs = TRAIN[model]
    need = 25 if model == "135m" else 40
    out: dict = {"model": model, "runs": [], "fallback": None}
    level = 0  # index in FALLBACKS that works (raised on failures)
    done: set = set()
    for batch, compile_layers in configs:
        while True:
            force_compile, extra = FALLBACKS[level]
            compiled = compile_layers if force_compile is None else force_compile
            key = (batch, compiled, tuple(extra))
            if key in done:
                break
            if left() < need:
                out["runs"].append({"batch": batch, "compile": compiled, "skipped": f"{left():.0f} s left in the part"})
                break
            say(f"train {model} batch {batch} compile={compiled} {' '.join(extra)}")
            done.add(key)
            try:
                run = train_once(model, batch, steps, steady_from, compiled, extra)
                run["overrides"] = extra
            except Exception as err:  # noqa: BLE001
                run = {"batch": batch, "compile": compiled, "overrides": extra, "error": failed(err)}
                free_gpu()
            out["runs"].append(run)
            record(f"train_{model}", out)
            say(f"-> {json.dumps({k: run.get(k) for k in ('batch', 'compile', 'tokens_per_s', 'mfu', 'first_step_s', 'median_step_s', 'peak_allocated_gib', 'error')})}")
            if "error" not in run or level == len(FALLBACKS) - 1:
                break
            level += 1  # the same run without the next speed-up
            out["fallback"] = {"after": run["error"], "now": {"compile": FALLBACKS[level][0], "overrides": FALLBACKS[level][1]}}
            say(f"failed: {run['error']}; again with {out['fallback']['now']}")
        record(f"train_{model}", out)
    errors(out["runs"])


# --- part: anchor (benchmarks/train_throughput.py as is) -----------------------------------------------------------


def part_anchor() -> None:
    recipe = WORK / "anchor-recipe.yaml"
    text = (f"extends: viggo\nmodel:\n  base: {model_dir('135m')}\ndata:\n  train_file: {DATA / 'train.csv'}\n"
            f"  eval_file: {DATA / 'validation.csv'}\n")  # fmt: skip
    if SMOKE:  # a CPU compile takes minutes
        text += "runtime:\n  compile: false\n"
    recipe.write_text(text)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--recipe", str(recipe), "--steps", str(ANCHOR["steps"]),
           "--batch-size", str(ANCHOR["batch"]), "--rounds", "1", "--rows", str(ANCHOR["rows"])]  # fmt: skip
    out: dict = {"command": " ".join(cmd[1:])}
    record("anchor", out)
    lines: list[str] = []
    timeout = max(10.0, left() - 5) if DEADLINE else None
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip())
        proc.wait()
        if timer:
            timer.cancel()
        out["rc"] = proc.returncode
    except Exception as err:  # noqa: BLE001
        out["error"] = failed(err)
    out["seconds"] = round(time.perf_counter() - started, 1)
    text = "\n".join(lines)
    out["stdout_tail"] = lines[-12:]
    rates = {name: float(m.group(1)) for name in ("ours", "anchor")
             for m in [re.search(rf"round 1 {name}\s*:\s*([\d.]+) non-pad tokens/s", text)] if m}  # fmt: skip
    gflop = {name: float(m.group(1)) for name in ("ours", "anchor")
             for m in [re.search(rf"^{name}\s.*?([\d.]+) GFLOP/token", text, re.M)] if m}  # fmt: skip
    printed_mfu = {name: m.group(1) for name in ("ours", "anchor")
                   for m in [re.search(rf"^{name}\s.*?MFU ([\d.]+%) of ([\d.]+) TFLOP/s", text, re.M)] if m}  # fmt: skip
    ratio = re.search(r"ratio ours/anchor: ([\d.]+)x", text)
    try:  # FLOPs per token exactly as the benchmark counts them (it prints them rounded to 0.01 GFLOP)
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from train_throughput import flops_per_token as bench_flops_per_token

        from gamesense.config import load_recipe, resolve_data_path
        from gamesense.tasks import get_task
        from gamesense.training.methods.base import build_records as stage_records
        from gamesense.training.recipe import LLMRecipe

        bench_recipe = load_recipe(str(recipe), LLMRecipe)
        task = get_task(bench_recipe.task, bench_recipe.task_options)
        rows = stage_records("sft", task, task.load(resolve_data_path(bench_recipe.data.train_file), ANCHOR["rows"]).examples)
        gflop = {"ours": bench_flops_per_token(bench_recipe, rows, False) / 1e9, "anchor": bench_flops_per_token(bench_recipe, rows, True) / 1e9}
    except Exception as err:  # noqa: BLE001
        out["flops_error"] = failed(err)
    peak = peak_bf16()
    out.update(tokens_per_s=rates, gflop_per_token={k: round(v, 4) for k, v in gflop.items()}, printed_mfu=printed_mfu,
               printed_peaks_tflops=re.findall(r"of ([\d.]+) TFLOP/s", text),
               ratio=float(ratio.group(1)) if ratio else None,
               mfu_vs_gpu_bf16_peak={k: round(rates[k] * gflop[k] * 1e9 / (peak * 1e12), 4) for k in rates if k in gflop and peak > 0})  # fmt: skip
    say(f"anchor benchmark: {json.dumps({k: out.get(k) for k in ('rc', 'tokens_per_s', 'ratio', 'printed_mfu', 'printed_peaks_tflops', 'mfu_vs_gpu_bf16_peak')})}")
    if out.get("rc") != 0 and "error" not in out:
        out["error"] = f"benchmark exit code {out.get('rc')}" + (" (killed at the part's deadline)" if out.get("rc") == -9 else "")
    record("anchor", out)
    errors([out], measured=False)


# --- part: decode (evaluation's batched greedy decoding) -------------------------------------------------------------


def random_adapters(model: str, n: int, root: Path) -> list[Path]:
    """``n`` random LoRA adapters (r=16, all-linear, small random B) on ``model``, as benchmarks/llm_server.py makes them."""
    import torch
    from peft import LoraConfig, get_peft_model

    from gamesense.models.base import load_base_model

    paths = []
    for i in range(n):
        path = root / f"{model}-adapter{i}"
        if not (path / "adapter_config.json").is_file():
            torch.manual_seed(i)
            base = load_base_model(str(model_dir(model)), dtype="auto")
            peft = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
            for name, param in peft.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(param, std=0.002)
            peft.save_pretrained(path)
            del peft, base
            free_gpu()
        paths.append(path)
    return paths


def part_decode() -> None:
    from gamesense.config import resolve_data_path
    from gamesense.evaluation.generation import generate_batch
    from gamesense.models.refs import load_for_inference
    from gamesense.tasks import get_task

    recipe = recipe_for("135m", [])
    task = get_task(recipe.task, recipe.task_options)
    records = task.eval_records(task.load(resolve_data_path(recipe.data.eval_file), DECODE["prompts"]).examples)
    prompts = [r["prompt"] for r in records]
    cap = DECODE["max_new_tokens"]
    out: dict = {"prompts": len(prompts), "max_new_tokens": cap, "stop_strings": list(task.stop_strings), "runs": []}
    for model in SHAPES:
        if left() < 30:
            out["runs"].append({"model": model, "skipped": f"{left():.0f} s left"})
            continue
        trained = sorted((WORK / "train").glob(f"{model}-b*/adapter/adapter_config.json"))
        try:
            adapter = trained[0].parent if trained else random_adapters(model, 1, WORK / "adapters")[0]
            started = time.perf_counter()
            loaded = load_for_inference(str(adapter), dtype="auto")  # the evaluation path: base + adapter merged
            p = next(loaded.model.parameters())
            info = {"model": model, "adapter": "trained in part train" if trained else "random", "load_s": round(time.perf_counter() - started, 1),
                    "weights": f"{p.dtype} on {p.device}", "attn_implementation": getattr(loaded.model.config, "_attn_implementation", None)}  # fmt: skip
            warm = recipe.generation.model_copy(update={"max_new_tokens": 4, "batch_size": 8})
            generate_batch(loaded.model, loaded.tokenizer, prompts[:8], warm, progress=False)  # warm-up
        except Exception as err:  # noqa: BLE001
            out["runs"].append({"model": model, "error": failed(err)})
            record("decode", out)
            free_gpu()
            continue
        settings = [(bs, tuple(task.stop_strings)) for bs in DECODE["batches"]]
        done = 0
        while done < len(settings) and left() > 15:
            bs, stops = settings[done]
            done += 1
            reset_mem()
            try:
                sync()
                gen = recipe.generation.model_copy(update={"max_new_tokens": cap, "batch_size": bs})
                res = generate_batch(loaded.model, loaded.tokenizer, prompts, gen, stop_strings=stops, progress=False)
                run = {**info, "batch_size": bs, "stop_strings": list(stops), "generated_tokens": res.generated_tokens,
                       "seconds": round(res.seconds, 2), "tokens_per_s": round(res.tokens_per_s, 1),
                       "mean_tokens_per_prompt": round(res.generated_tokens / len(prompts), 1),
                       "prompts_per_s": round(len(prompts) / res.seconds, 1), **gpu_mem()}  # fmt: skip
                if stops and res.generated_tokens < 0.5 * cap * len(prompts) and len(settings) < len(DECODE["batches"]) + 1:
                    settings.append((bs, ()))  # most rows stopped early (random weights): measure full-length decoding too
            except Exception as err:  # noqa: BLE001
                run = {**info, "batch_size": bs, "error": failed(err)}
            out["runs"].append(run)
            say(f"decode: {json.dumps(run)}")
            record("decode", out)
        del loaded
        free_gpu()
    record("decode", out)
    errors(out["runs"])


# --- part: serve (LLM engine, continuous batching with LoRA adapters) -------------------------------------------------


def load_phase(engine, adapters, prompts: list[list[int]], clients: int, requests: int, max_tokens: int, timeout_s: float) -> dict:
    """``clients`` threads, each sending ``requests`` greedy requests of exactly ``max_tokens`` tokens one after the
    other, client i on adapter i mod len(adapters) (as benchmarks/llm_server.py, without HTTP)."""
    from concurrent.futures import ThreadPoolExecutor

    from gamesense.serving.llm.requests import GenerationRequest, SamplingParams

    deadline = time.time() + timeout_s

    def one_client(c: int) -> list:
        results = []
        for r in range(requests):
            done, box = threading.Event(), {}

            def sink(event, box=box, done=done):
                if event.done is not None or event.error is not None:
                    box["event"] = event
                    done.set()

            params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
            request = GenerationRequest(prompts[(c * requests + r) % len(prompts)], params, sink, adapters[c % len(adapters)])
            started = time.perf_counter()
            engine.submit(request)
            if not done.wait(max(1.0, deadline - time.time())):
                request.cancelled = True
                results.append(("timeout", 0))
                break
            event = box["event"]
            if event.error is not None:
                results.append((f"error: {event.error}", 0))
            else:
                results.append((time.perf_counter() - started, event.done.completion_tokens))
        return results

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for batch in pool.map(one_client, range(clients)) for x in batch]
    wall = time.perf_counter() - started
    ok = [(lat, n) for lat, n in results if isinstance(lat, float)]
    latencies = sorted(lat for lat, _ in ok)
    errors = [lat for lat, _ in results if not isinstance(lat, float)]
    return {"requests": len(results), "ok": len(ok), "errors": errors[:3], "wall_s": round(wall, 2),
            "requests_per_s": round(len(ok) / wall, 2), "tokens_per_s": round(sum(n for _, n in ok) / wall, 1),
            "p50_s": round(latencies[len(latencies) // 2], 3) if latencies else None,
            "p99_s": round(latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))], 3) if latencies else None}  # fmt: skip


def part_serve() -> None:
    from gamesense.config import resolve_data_path
    from gamesense.serving.llm.engine import LLMEngine
    from gamesense.serving.llm.requests import Adapter
    from gamesense.tasks import get_task

    model = "135m"
    out: dict = {"model": model, **SERVE, "modes": {}}
    record("serve", out)
    paths = random_adapters(model, 3, WORK / "adapters")
    adapters = [Adapter(f"bench{i}_v1", p, f"bench{i}", "1", 16) for i, p in enumerate(paths)]
    recipe = recipe_for(model, [])
    task = get_task(recipe.task, recipe.task_options)
    records = task.eval_records(task.load(resolve_data_path(recipe.data.eval_file), 64).examples)
    modes = [("mixed batches", True, "batched"), ("one adapter at a time", False, "batched"), ("mixed, PEFT kernel", True, "peft")]
    for label, mixed, kernel in modes:
        if left() < 20:
            out["modes"][label] = {"skipped": f"{left():.0f} s left"}
            record("serve", out)
            continue
        engine = None
        try:
            engine = LLMEngine(str(model_dir(model)), dtype="auto", max_batch=SERVE["max_batch"], mixed_batches=mixed, lora_kernel=kernel)
            engine.start()
            prompts = [engine.encode_chat(r["prompt"]) for r in records]
            load_phase(engine, adapters, prompts, 3, 1, 4, timeout_s=60)  # warm-up: adapters loaded
            reset_mem()
            result = load_phase(engine, adapters, prompts, SERVE["clients"], SERVE["requests"], SERVE["max_tokens"],
                                timeout_s=min(90.0, max(5.0, left() - 10)))  # fmt: skip
            if result["ok"] < result["requests"]:
                result["error"] = f"{result['requests'] - result['ok']} of {result['requests']} requests failed: {result['errors'][:1]}"
            p = next(engine.model.parameters())
            result.update({k: engine.stats[k] for k in ("steps", "prefills", "max_rows_per_step", "max_adapters_per_step", "adapter_loads")},
                          weights=f"{p.dtype} on {p.device}", engine_device=str(engine.device), **gpu_mem())  # fmt: skip
            if engine.row_lora is not None and engine.row_lora.slots:
                module = next(m for m in engine.peft.modules() if hasattr(m, "_gamesense_lora"))
                a = module._gamesense_lora[0]
                result["row_lora_weights"] = f"{a.dtype} on {a.device}"
        except Exception as err:  # noqa: BLE001
            result = {"error": failed(err)}
        finally:
            if engine is not None:
                engine.stop()
            del engine
            free_gpu()
        out["modes"][label] = result
        say(f"serve {label}: {json.dumps(result)}")
        record("serve", out)
    errors(out["modes"].values())


# --- part: qlora ---------------------------------------------------------------------------------------------------


def part_qlora() -> None:
    out: dict = {}
    try:
        import bitsandbytes

        out["bitsandbytes"] = bitsandbytes.__version__
    except Exception as err:  # noqa: BLE001
        out["skipped"] = f"bitsandbytes not importable: {error_text(err)}"
        say(out["skipped"])
        record("qlora", out)
        errors([{"skipped": out["skipped"]}])
    model, batch, steps, steady = QLORA["model"], QLORA["batch"], QLORA["steps"], QLORA["from"]
    out["runs"] = []
    for compile_layers in (True, False):
        say(f"qlora {model} batch {batch} compile={compile_layers}")
        try:
            run = train_once(model, batch, steps, steady, compile_layers, ["model.load_in_4bit=true"], tag="-4bit")
            out["runs"].append(run)
            say(f"-> {json.dumps({k: run.get(k) for k in ('tokens_per_s', 'mfu', 'first_step_s', 'peak_allocated_gib', 'base_weight')})}")
            record("qlora", out)
            break
        except Exception as err:  # noqa: BLE001
            out["runs"].append({"compile": compile_layers, "error": failed(err)})
            free_gpu()
            record("qlora", out)
            if left() < 40:
                break
    errors(out["runs"])


# --- summary ---------------------------------------------------------------------------------------------------------


def part_summary() -> None:
    status = []
    status_file = WORK / "status.tsv"
    if status_file.is_file():
        for line in status_file.read_text().splitlines():
            name, state, rc, seconds, *note = line.split("\t") + [""]
            status.append({"part": name, "status": state, "rc": rc, "seconds": seconds, "note": note[0]})
    parts = {p.stem: read(p.stem) for p in sorted(RESULTS.glob("*.json"))}
    summary = {"smoke": SMOKE, "parts": status, "results": parts}
    out_dir = Path(os.environ.get("OUT") or G / "out")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))

    lines = ["", "================ GameSense GPU check: summary ================"]
    lines += [f"{s['part']:12s} {s['status']:8s} {s['seconds']:>5s}s {s['note']}" for s in status]
    env = parts.get("env", {})
    cuda_info = env.get("cuda", {})
    lines.append(f"device: {cuda_info.get('device', 'none')} cuda={cuda_info.get('available')} torch {str(env.get('versions', {}).get('torch', '?')).split()[0]}; "
                 f"bf16 8192^3 peak {env.get('peak', {}).get('bf16_8192', {}).get('best_tflops')} TFLOP/s")  # fmt: skip
    project = env.get("project", {})
    if project:
        lines.append(f"project picks: attention(train)={project.get('attention_auto_training')}, bf16={project.get('bf16_auto')}, "
                     f"trainer={project.get('sft_trainer_class')}, threads {project.get('configure_threads_auto', '').split(' (')[0]}, "
                     f"jemalloc={project.get('jemalloc_found')}")  # fmt: skip
    prep = parts.get("prep", {})
    if prep.get("load_training"):
        lines.append(f"load_base_model(training): {prep['load_training']}")
    for model in SHAPES:
        for run in parts.get(f"train_{model}", {}).get("runs", []):
            if "tokens_per_s" in run:
                lines.append(f"train {model:5s} b{run['batch']:<3} compile={str(run['compile']):5s}: {run['tokens_per_s']:>9.0f} tok/s, "
                             f"MFU {run['mfu'] or 0:.1%}, step {run['median_step_s']}s, 1st step {run['first_step_s']}s, "
                             f"peak {run.get('peak_allocated_gib')} GiB")  # fmt: skip
            else:
                lines.append(f"train {model:5s} b{run.get('batch')} compile={run.get('compile')}: {run.get('error') or run.get('skipped')}")
    anchor = parts.get("anchor", {})
    if anchor:
        lines.append(f"benchmarks/train_throughput.py: rc={anchor.get('rc')} tok/s={anchor.get('tokens_per_s')} ratio={anchor.get('ratio')} "
                     f"MFU printed {anchor.get('printed_mfu')} vs GPU bf16 peak {anchor.get('mfu_vs_gpu_bf16_peak')}")  # fmt: skip
    for run in parts.get("decode", {}).get("runs", []):
        if "tokens_per_s" in run:
            lines.append(f"decode {run['model']:5s} bs{run['batch_size']:<4} stops={run['stop_strings']}: {run['tokens_per_s']:>8.0f} tok/s, "
                         f"{run['prompts_per_s']} prompts/s, {run['mean_tokens_per_prompt']} tok/prompt ({run['adapter']} adapter, merged)")  # fmt: skip
        else:
            lines.append(f"decode {run.get('model')} {run.get('batch_size', '')}: {run.get('error') or run.get('skipped')}")
    for label, r in parts.get("serve", {}).get("modes", {}).items():
        if "tokens_per_s" in r:
            lines.append(f"serve {label:22s}: {r['requests_per_s']} req/s, {r['tokens_per_s']:.0f} tok/s, p50 {r['p50_s']}s, "
                         f"rows/step max {r.get('max_rows_per_step')}, ok {r['ok']}/{r['requests']}")  # fmt: skip
        else:
            lines.append(f"serve {label}: {r.get('error') or r.get('skipped')}")
    qlora = parts.get("qlora", {})
    if qlora:
        runs = [r for r in qlora.get("runs", []) if "tokens_per_s" in r]
        if runs:
            r = runs[-1]
            text = (f"{r['tokens_per_s']:.0f} tok/s, MFU {r['mfu'] or 0:.1%}, peak {r.get('peak_allocated_gib')} GiB, compile={r['compile']}, "
                    f"base weights {r.get('base_weight')}")  # fmt: skip
        else:
            text = qlora.get("skipped") or [r.get("error") for r in qlora.get("runs", [])]
        lines.append(f"qlora {QLORA['model']} b{QLORA['batch']}: {text}")
    install = parts.get("install", {})
    if install:
        lines.append(f"install: python {install.get('python')}, fallback wheels used: {install.get('fallbacks_installed') or 'none'}")
        if install.get("unmet"):
            lines.append(f"unmet requirements: {install['unmet']}")
    lines.append(f"full log: {out_dir / 'log.txt'}; machine-readable: {out_dir / 'summary.json'}")
    print("\n".join(lines), flush=True)


def main() -> None:
    part = sys.argv[1]
    if part != "summary" and not DATA.is_dir():
        sys.exit(f"ViGGO data not found at {DATA}")
    if part == "train":
        part_train(sys.argv[2])
    else:
        {"env": part_env, "prep": part_prep, "anchor": part_anchor, "decode": part_decode, "serve": part_serve,
         "qlora": part_qlora, "summary": part_summary}[part]()  # fmt: skip


if __name__ == "__main__":
    main()
