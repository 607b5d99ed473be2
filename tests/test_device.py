"""Device choice: 'auto' takes CUDA when there is one, and asking for CUDA without one is a clear config error."""

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
