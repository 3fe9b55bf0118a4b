"""RNG capture and restore (RELIABILITY CKPT-1 RNG inventory, CKPT-8 plain data)."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from posttrain.run.rng import capture_rng, restore_rng


def _draw(gen: torch.Generator) -> dict:
    """One draw from every source, including the cached-Gaussian paths of python and numpy."""
    return {
        "torch": torch.rand(4),
        "torch_randn": torch.randn(3),
        "python": [random.random(), random.gauss(0, 1), random.randint(0, 10**9)],
        "numpy": np.random.rand(3).tolist() + [float(np.random.randn())],
        "sampler": torch.multinomial(torch.ones(50), 5, generator=gen),
    }


def _assert_draws_equal(a: dict, b: dict) -> None:
    assert torch.equal(a["torch"], b["torch"]) and torch.equal(a["torch_randn"], b["torch_randn"])
    assert a["python"] == b["python"] and a["numpy"] == b["numpy"]
    assert torch.equal(a["sampler"], b["sampler"])


def test_capture_draw_restore_draw_is_equal():
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    gen = torch.Generator().manual_seed(11)
    _draw(gen)  # leave python's and numpy's Gaussian caches in a non-trivial state
    random.gauss(0, 1)
    np.random.randn()
    state = capture_rng({"sampler": gen})
    first = _draw(gen)
    second = _draw(gen)
    restore_rng(state, {"sampler": gen})
    _assert_draws_equal(first, _draw(gen))
    _assert_draws_equal(second, _draw(gen))


def test_state_survives_weights_only_round_trip_into_a_fresh_generator():
    gen = torch.Generator().manual_seed(5)
    state = capture_rng({"sampler": gen})
    expected = _draw(gen)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    fresh = torch.Generator()  # another object, default seed
    restore_rng(loaded, {"sampler": fresh})
    _assert_draws_equal(expected, _draw(fresh))
    # Plain data only: python state as ints, numpy state as ints and floats.
    assert all(type(x) is int for x in loaded["python"]["internal"])
    assert len(loaded["python"]["internal"]) == 625
    assert all(type(x) is int for x in loaded["numpy"]["keys"])
    assert len(loaded["numpy"]["keys"]) == 624


def test_generator_names_must_match():
    state = capture_rng({"sampler": torch.Generator()})
    with pytest.raises(KeyError, match=r"missing in checkpoint: \['dropout'\]"):
        restore_rng(state, {"sampler": torch.Generator(), "dropout": torch.Generator()})
    with pytest.raises(KeyError, match=r"not restored: \['sampler'\]"):
        restore_rng(state, None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_states_round_trip():
    """[GPU] twin of test_capture_draw_restore_draw_is_equal for the per-device CUDA RNGs
    and a CUDA sampling generator."""
    gen = torch.Generator(device="cuda").manual_seed(2)
    state = capture_rng({"sampler": gen})
    assert len(state["torch_cuda"]) == torch.cuda.device_count()
    a = (torch.rand(5, device="cuda"), torch.rand(5, device="cuda", generator=gen))
    restore_rng(state, {"sampler": gen})
    b = (torch.rand(5, device="cuda"), torch.rand(5, device="cuda", generator=gen))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
