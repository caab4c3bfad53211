"""The Trainer: regressions for defects the fuzzing campaign found (issue 15; the campaign runs in test_fuzz.py), one or
more asserts each.

A training pass larger than memory is a MemoryError, hyper-parameters that cannot work are refused, an update that would
overflow the weights changes nothing, and forwards from another thread during training see whole steps.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import latte_rs
from conftest import random_latents, tiny_config


def test_a_training_pass_larger_than_memory_is_a_memory_error():
    cfg = tiny_config(depth=4096, hidden_size=16, num_heads=2)
    trainer = latte_rs.Trainer(latte_rs.LatteModel(cfg, seed=0), latte_rs.GaussianDiffusion())
    with pytest.raises(MemoryError, match="training pass"):
        trainer.step(random_latents(cfg, batch=32768))  # about 1 TB of activations by the lower bound


def test_trainer_hyper_parameters_that_cannot_work_are_refused():
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    d = latte_rs.GaussianDiffusion()
    for kw in [dict(eps=1e-300), dict(eps=float("nan")), dict(lr=float("inf")), dict(betas=(0.9, 1.0)),
               dict(weight_decay=-1.0), dict(ema_decay=1.5), dict(grad_accumulation=0)]:
        with pytest.raises(ValueError, match=next(iter(kw))):
            latte_rs.Trainer(model, d, **kw)
    with pytest.raises(ValueError, match="1e-300"):
        latte_rs.Trainer(model, d, eps=1e-300)


def test_an_update_that_would_overflow_the_weights_changes_nothing():
    model = latte_rs.LatteModel(tiny_config(), seed=0)
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=1e38, weight_decay=1e10)
    before = model.state_dict()
    with pytest.raises(ValueError, match="non-finite"):
        trainer.step(random_latents(tiny_config()))
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert trainer.step_count == 0
    skipping = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=1e38, weight_decay=1e10, skip_nonfinite=True)
    stats = skipping.step(random_latents(tiny_config()))
    assert stats["skipped"] and all(np.isfinite(v).all() for v in model.state_dict().values())


def test_forwards_during_training_see_whole_steps():
    """A forward on the trained model from another thread sees the weights of one step, never a mixture."""
    cfg = tiny_config()
    model = latte_rs.LatteModel(cfg, seed=0)
    trainer = latte_rs.Trainer(model, latte_rs.GaussianDiffusion(), lr=1e-2, seed=0)
    probe, t = random_latents(cfg, batch=1, seed=5), np.array([500])
    snapshots = [model.state_dict()]
    outputs: list[np.ndarray] = []
    stop = threading.Event()

    def forwards():
        while not stop.is_set():
            outputs.append(model(probe, t))

    reader = threading.Thread(target=forwards)
    reader.start()
    try:
        for i in range(6):
            trainer.step(random_latents(cfg, seed=i))
            snapshots.append(model.state_dict())
    finally:
        stop.set()
        reader.join()
    check = latte_rs.LatteModel(cfg, seed=0)
    expected = []
    for sd in snapshots:
        check.load_state_dict(sd)
        expected.append(check(probe, t))
    assert len(outputs) > 0
    for out in outputs:
        assert any(np.array_equal(out, e) for e in expected), "a forward saw a half-applied step"
