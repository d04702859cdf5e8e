"""The lleaves-compiled scoring path (:mod:`gamesense.serving.engagement.compiled_trees`): equal to ``Booster.predict``,
cached by model hash, and falling back to LightGBM when lleaves is missing, disabled or wrong."""

from __future__ import annotations

import sys

import lightgbm as lgb
import numpy as np
import pytest

from gamesense.serving.engagement import compiled_trees


def _booster(seed: int = 0, rounds: int = 15) -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3000, 8))
    X[:, 2] = rng.integers(0, 2, len(X))  # one-hot-like column: zeros matter
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)
    X[rng.random(X.shape) < 0.05] = np.nan  # missing values in training: NaN/zero default branches
    params = {"objective": "multiclass", "num_class": 3, "num_leaves": 7, "verbose": -1, "num_threads": 1,
              "seed": seed}  # fmt: skip
    return lgb.train(params, lgb.Dataset(X, y), rounds), X


def test_compiled_equals_booster_predict_and_is_cached(tmp_path):
    pytest.importorskip("lleaves")
    booster, X = _booster()
    compiled = compiled_trees.compile_booster(booster, cache_dir=tmp_path, threads=2)
    assert compiled is not None and compiled.num_class == 3
    want = booster.predict(X, num_threads=1)
    np.testing.assert_allclose(compiled.predict(X), want, rtol=0, atol=1e-12)
    big = np.tile(X, (10, 1))  # above MIN_ROWS_PER_THREAD_SPLIT: threaded
    np.testing.assert_allclose(compiled.predict(big), np.tile(want, (10, 1)), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="features"):
        compiled.predict(X[:, :5])
    (obj,) = tmp_path.glob("lleaves-*.o")
    mtime = obj.stat().st_mtime_ns
    again = compiled_trees.compile_booster(booster, cache_dir=tmp_path)
    assert again is not None and obj.stat().st_mtime_ns == mtime  # loaded, not recompiled
    np.testing.assert_allclose(again.predict(X), want, rtol=0, atol=1e-12)
    assert [p.name for p in tmp_path.iterdir()] == [obj.name]  # no temp files left behind


def test_stale_cache_entry_is_recompiled(tmp_path):
    pytest.importorskip("lleaves")
    a, X = _booster(seed=0)
    b, _ = _booster(seed=1)
    assert compiled_trees.compile_booster(a, cache_dir=tmp_path) is not None
    (obj_a,) = tmp_path.glob("lleaves-*.o")
    # plant model a's code under model b's key: lleaves itself would use it blindly
    obj_b = tmp_path / f"lleaves-{compiled_trees._cache_key(b.model_to_string())}.o"
    obj_b.write_bytes(obj_a.read_bytes())
    compiled = compiled_trees.compile_booster(b, cache_dir=tmp_path)
    assert compiled is not None
    np.testing.assert_allclose(compiled.predict(X), b.predict(X, num_threads=1), rtol=0, atol=1e-12)
    assert obj_b.read_bytes() != obj_a.read_bytes()


def test_falls_back_when_lleaves_is_missing_or_disabled(tmp_path, monkeypatch):
    booster, _ = _booster(rounds=3)
    monkeypatch.setenv("GAMESENSE_NO_COMPILE", "1")
    assert compiled_trees.compile_booster(booster, cache_dir=tmp_path) is None
    monkeypatch.delenv("GAMESENSE_NO_COMPILE")
    monkeypatch.setitem(sys.modules, "lleaves", None)  # import lleaves -> ImportError
    assert compiled_trees.compile_booster(booster, cache_dir=tmp_path) is None
    assert not list(tmp_path.iterdir())


def test_falls_back_when_compile_fails(tmp_path, monkeypatch):
    lleaves = pytest.importorskip("lleaves")
    booster, _ = _booster(rounds=3)

    def boom(self, *args, **kwargs):
        raise RuntimeError("LLVM exploded")

    monkeypatch.setattr(lleaves.Model, "compile", boom)
    assert compiled_trees.compile_booster(booster, cache_dir=tmp_path) is None
    assert not list(tmp_path.glob("lleaves-*.o"))
