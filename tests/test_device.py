"""Device choice: 'auto' takes CUDA when there is one (each launched process its own GPU), asking for CUDA without
one is a clear config error, and GRPO steps, rollouts and scoring use bf16 autocast only on GPUs that support it,
over fp32 weights."""

import contextlib

import pytest
import torch

from gradalign.policy.load import resolve_device


def test_auto_prefers_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_without_a_gpu_is_a_one_line_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' requested but no CUDA device is available"):
        resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_each_launched_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 3) and chosen == [torch.device("cuda", 3)]
    assert resolve_device("cpu") == torch.device("cpu")  # a CPU run under torchrun stays on the CPU


def test_grpo_steps_use_bf16_autocast_only_on_gpus_that_support_it(monkeypatch):
    from gradalign.curriculum.trl_bridge import bf16_autocast
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert bf16_autocast(use_cpu=False) and not bf16_autocast(use_cpu=True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert not bf16_autocast(use_cpu=False)


def test_our_forward_passes_autocast_to_bf16_only_on_such_gpus(monkeypatch):
    from gradalign.policy.load import bf16_compute, mixed_precision
    model = torch.nn.Linear(2, 2)
    assert isinstance(mixed_precision(model), contextlib.nullcontext)  # CPU: fp32 as loaded
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert bf16_compute(torch.device("cuda", 1)) and not bf16_compute(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert not bf16_compute(torch.device("cuda"))
