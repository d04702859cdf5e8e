"""Compile a LightGBM booster to native code with `lleaves <https://github.com/siboehm/lleaves>`_ for fast
batch scoring.

LightGBM's own ``Booster.predict`` costs about 1 µs per row before the trees are even walked (row
conversion), which caps batch scoring near 400k rows/s on two cores. lleaves compiles the trees with LLVM
(via llvmlite) into a function that walks a float64 matrix directly; its output equals ``Booster.predict``
(probabilities for multiclass models) to float rounding.

The compiled object code is cached under ``<GAMESENSE_HOME>/compiled``, keyed by a hash of the model text,
the lleaves/llvmlite versions, the compile options and the host CPU (the code is specialised for it).
lleaves does not validate its cache, so the file is written atomically and each compiled model is checked
against ``Booster.predict`` on a few rows before use. When lleaves is not installed, the compile fails, the
check fails, or ``GAMESENSE_NO_COMPILE=1``, :func:`compile_booster` returns None and callers keep using
LightGBM.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: inputs smaller than this are scored on the calling thread (thread start-up would dominate)
MIN_ROWS_PER_THREAD_SPLIT = 20_000
_COMPILE_OPTIONS = {"fcodemodel": "large", "finline": True, "fblocksize": 34, "use_fp64": True}


class CompiledBooster:
    """A compiled model. ``predict(X)``: X float64 ``(n, n_features)`` -> same output as
    ``Booster.predict(X)`` (``(n, num_class)`` probabilities for multiclass). Inputs of at least
    :data:`MIN_ROWS_PER_THREAD_SPLIT` rows are split across ``threads`` (the native call releases the GIL)."""

    def __init__(self, model, threads: int | None = None):
        self.model = model  # a compiled lleaves.Model
        self.num_class = model.num_model_per_iteration()
        self.num_features = model.num_feature()
        self.threads = threads or min(4, os.cpu_count() or 1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.num_features:
            raise ValueError(f"expected (n, {self.num_features}) features, got {X.shape}")
        n_jobs = 1 if X.shape[0] < MIN_ROWS_PER_THREAD_SPLIT else self.threads
        return self.model.predict(X, n_jobs=n_jobs)


def _cache_key(model_text: str) -> str:
    import importlib.metadata

    import llvmlite.binding as llvm

    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot detect them; lleaves then compiles without
        features = ""
    parts = [
        model_text,
        importlib.metadata.version("lleaves"),
        importlib.metadata.version("llvmlite"),
        llvm.get_host_cpu_name(),
        features,
        repr(sorted(_COMPILE_OPTIONS.items())),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def _self_check(compiled: CompiledBooster, booster) -> bool:
    """Compiled output equals ``Booster.predict`` on a few rows (zeros, NaNs, random values)."""
    rng = np.random.default_rng(0)
    X = rng.normal(scale=2.0, size=(64, compiled.num_features))
    X[0], X[1] = 0.0, np.nan
    X[rng.random(X.shape) < 0.1] = np.nan
    X[rng.random(X.shape) < 0.2] = 0.0
    got, want = compiled.predict(X), booster.predict(X, num_threads=1)
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-9, atol=1e-12))


def compile_booster(booster, cache_dir: str | Path | None = None, threads: int | None = None) -> CompiledBooster | None:
    """Compile (or reuse from cache) ``booster`` with lleaves; None when lleaves is unavailable, disabled
    (``GAMESENSE_NO_COMPILE=1``), the compile fails or its output does not match ``Booster.predict``."""
    if os.environ.get("GAMESENSE_NO_COMPILE") == "1":
        return None
    try:
        import lleaves
    except ImportError as err:  # also covers a broken llvmlite install
        log.info("lleaves not available, using LightGBM predict: %s", err)
        return None
    if cache_dir is None:
        from gamesense.settings import home_dir

        cache_dir = home_dir() / "compiled"
    cache = Path(cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        model_text = booster.model_to_string()
        obj = cache / f"lleaves-{_cache_key(model_text)}.o"
        cached = obj.exists()
        compiled = _compile(lleaves, model_text, obj, threads)
        ok = _self_check(compiled, booster)
        if not ok and cached:  # lleaves trusts its cache blindly: recompile once
            log.warning("cached %s does not match LightGBM predict, recompiling", obj)
            obj.unlink(missing_ok=True)
            compiled = _compile(lleaves, model_text, obj, threads)
            ok = _self_check(compiled, booster)
        if not ok:
            log.warning("lleaves output differs from LightGBM predict, using LightGBM predict")
            return None
    except Exception as err:  # noqa: BLE001 - any failure falls back to LightGBM's own predict
        log.warning("lleaves compile failed, using LightGBM predict: %r", err)
        return None
    return compiled


def _compile(lleaves, model_text: str, obj: Path, threads: int | None) -> CompiledBooster:
    """Load ``obj`` if it exists, else compile ``model_text`` and store the object code at ``obj``."""
    with tempfile.TemporaryDirectory(dir=obj.parent) as tmp:
        model_file = Path(tmp) / "model.txt"  # lleaves reads models from files only
        model_file.write_text(model_text)
        model = lleaves.Model(model_file=str(model_file))
        if obj.exists():
            model.compile(cache=str(obj), **_COMPILE_OPTIONS)
        else:
            tmp_obj = Path(tmp) / "model.o"
            model.compile(cache=str(tmp_obj), **_COMPILE_OPTIONS)
            os.replace(tmp_obj, obj)  # atomic: concurrent processes never load a half-written file
    return CompiledBooster(model, threads)
