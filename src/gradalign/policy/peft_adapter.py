"""LoRA policies (peft): wrap a loaded causal LM in an adapter, and copy or save such a policy.

Only the adapter's parameters are trainable once wrapped, so everything that takes "the trainable parameters"
(our AdamW in `trl_bridge.new_optimizer`, every scoring backend, the projections) sees the adapter alone. peft's
LoRA layers keep `lora_A` / `lora_B` as plain `nn.Linear` modules beside a frozen base layer, which is what the
one-pass scorer factors, so LoRA scores stay exact at about one forward+backward.

peft is imported inside the functions: it is heavy, and a run without `use_peft` never needs it.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import warnings



@contextlib.contextmanager
def _quiet_peft():
    """peft 0.21 calls transformers' deprecated `is_gradient_checkpointing` while wrapping: a FutureWarning about
    peft's code that a user cannot act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def is_peft_policy(model) -> bool:
    """Whether `model` is a peft model (a model can only be one if peft has been imported)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def lora_config(cfg):
    """peft's LoraConfig from the run config's TRL ModelConfig, built by TRL's own `get_peft_config` (so rsLoRA,
    DoRA, modules_to_save and target parameters apply as in `trl grpo`)."""
    from trl import get_peft_config
    return get_peft_config(cfg.model_args)


def apply_peft(model, cfg):
    """With `cfg.use_peft`: `model` wrapped in a fresh LoRA adapter (only the adapter trainable); otherwise `model`.

    A fresh LoRA adapter starts with lora_B = 0, so the wrapped policy computes what the loaded one did; lora_A is
    drawn from `cfg.seed`."""
    if not cfg.model_args.use_peft:
        return model
    if is_peft_policy(model):
        raise ValueError(f"model '{cfg.model_args.model_name_or_path}' already carries a peft adapter; use_peft would "
                         f"add a second one (set use_peft: false to train the adapter it has)")
    import torch
    from peft import get_peft_model
    device = next(model.parameters()).device
    try:
        # peft draws lora_A from the global generator: seeded, so every run (and every rank) starts from one adapter
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _quiet_peft():
            torch.manual_seed(cfg.seed)
            return get_peft_model(model, lora_config(cfg))
    except ValueError as e:  # e.g. target modules that match no layer of this model
        reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise ValueError(f"config: field 'lora_target_modules' {cfg.model_args.lora_target_modules!r}: {reason}") \
            from None


def clone_peft_policy(model, clone_plain):
    """A twin of a one-adapter peft policy, for `load.clone_policy` to copy every weight into: a fresh model of its
    base architecture (`clone_plain(cls, model)` builds it) wrapped in the same adapter config."""
    from peft import get_peft_model
    if len(model.peft_config) != 1:
        raise ValueError(f"clone_policy: a peft model with several adapters ({', '.join(model.peft_config)}) cannot "
                         f"be copied; keep one adapter (LearnAlign's warm-up trains a copy of the policy)")
    name, config = next(iter(model.peft_config.items()))
    base = model.get_base_model()  # its Linear layers are peft's LoRA layers: build a plain twin, then wrap it
    with _quiet_peft():
        return get_peft_model(clone_plain(type(base), base), copy.deepcopy(config), adapter_name=name)


def save_peft_policy(model, directory) -> None:
    """The adapter in peft's layout (`PeftModel.from_pretrained(base, directory)` loads it), and `model.safetensors`
    with every weight under the wrapped model's names: what a resumed run loads into the same freshly wrapped policy.
    Tensors are cloned: a tied head and embedding share storage, which safetensors refuses to write."""
    from pathlib import Path

    from safetensors.torch import save_file
    card = Path(directory, "README.md")
    had_card = card.exists()
    model.save_pretrained(directory, safe_serialization=True)
    if not had_card:  # peft adds a model card template to every save: not a checkpoint's business
        card.unlink(missing_ok=True)
    state = {name: t.detach().clone().contiguous() for name, t in model.state_dict().items()}
    save_file(state, str(Path(directory) / "model.safetensors"))
