"""histlib.device: device choice and the random states that exact resume saves and restores."""

import io
import random

import numpy as np
import pytest
import torch

from histlib.device import forked_rng, rank_seed, resolve_device, rng_state, seed_all, set_rng_state

CPU = torch.device("cpu")


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(1).tolist(), random.random()


def test_resolve_device_names_the_setting_when_cuda_is_missing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == resolve_device(CPU) == CPU
    with pytest.raises(ValueError, match=r"GenerateConfig.device='cuda:1': CUDA is not available"):
        resolve_device("cuda:1", what="GenerateConfig.device")


def test_resolve_device_takes_this_process_s_gpu_under_torchrun(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda:0")  # a named GPU stays as named


def test_random_states_survive_a_checkpoint_and_continue_every_stream():
    seed_all(3)
    np.random.randn(1)  # leaves a cached Gaussian in NumPy's state, which must come back too
    buffer = io.BytesIO()
    torch.save(rng_state(CPU), buffer)
    expected = _draws()
    seed_all(4)
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True), CPU)
    assert _draws() == expected


def test_forked_rng_leaves_the_streams_as_they_were():
    seed_all(5)
    expected = _draws()
    seed_all(5)
    with forked_rng(CPU):
        _draws()
    assert _draws() == expected


def test_rank_seeds_are_fixed_and_differ_between_ranks():
    seeds = [rank_seed(7, r) for r in range(4)]
    assert seeds == [rank_seed(7, r) for r in range(4)]
    assert len(set(seeds)) == 4 and rank_seed(8, 0) not in seeds
