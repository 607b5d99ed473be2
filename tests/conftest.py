"""Suite-wide settings: one torch thread (tiny models run ~50x slower when 2 threads fight on a shared 2-core
machine) and offline Hugging Face. The warm start is cached where runs cache it (`$GRADALIGN_CACHE`)."""

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
