"""Warm-start SFT of the tiny policy, cached on disk so only the first run pays for it.

A randomly initialised policy never solves anything, so every GRPO group would be zero-variance. A short
supervised run on correct answers brings its *sampled* accuracy to about 0.3-0.5, where groups disagree and
both training and gradient-based selection have signal. Training stops at the first check past the target,
so the result is deterministic for a given config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers

from ..data.tasks import generate_mix
from ..rewards import ExactMatch, ProblemReward
from .rollouts import SamplingConfig, pad, sample_rollouts, tokenize_prompts
from .tiny import build_tiny_model, build_tokenizer

log = logging.getLogger(__name__)
CACHE_VERSION = 1  # bump when the recipe changes so stale checkpoints are not reused


@dataclass
class WarmStartConfig:
    # add/sub to about 0.3, and the trivial family (answer 0) to ~0.97: the low-utility regime's "trivial"
    # problems must be ones the policy already solves (measured: 96% of them at 8/8), or they are just unsolvable.
    families: dict[str, float] = field(default_factory=lambda: {"add": 1.0, "sub": 1.0, "trivial": 0.25})
    target_accuracy: float = 0.35  # stop at the first check whose sampled accuracy reaches this
    check_every: int = 25
    max_steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    eval_problems: int = 256
    temperature: float = 0.7  # the rollout temperature: accuracy is measured where GRPO will sample
    seed: int = 1234  # disjoint from the scenario seeds: SFT data never equals pool/test problems by construction

    def key(self) -> str:
        blob = json.dumps({"v": CACHE_VERSION, "cfg": asdict(self), "transformers": transformers.__version__,
                           "torch": torch.__version__.split("+")[0]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where warm starts are cached: $GRADALIGN_CACHE, else ~/.cache/gradalign."""
    return Path(os.environ.get("GRADALIGN_CACHE", Path.home() / ".cache" / "gradalign"))


def sft_batch(tokenizer, examples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, attention mask and labels (answer + EOS tokens only) for prompt→answer pairs."""
    prompts = tokenize_prompts(tokenizer, [p.prompt for p in examples])
    answers = [tokenizer(p.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for p in examples]
    ids, mask = pad([a + b for a, b in zip(prompts, answers)], tokenizer.pad_token_id, "right")
    labels = ids.clone()
    labels[mask == 0] = -100
    for i, a in enumerate(prompts):
        labels[i, :len(a)] = -100
    return ids, mask, labels


def sampled_accuracy(model, tokenizer, problems, cfg: WarmStartConfig) -> float:
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=1.0, max_new_tokens=6)
    return float(sample_rollouts(model, tokenizer, problems, 1, ProblemReward(ExactMatch()), sampling,
                                 seed=cfg.seed).pass_rates().mean())


def train_warm_start(cfg: WarmStartConfig):
    """Supervised training of a fresh tiny policy until its sampled accuracy reaches the target."""
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, seed=cfg.seed)
    train = generate_mix(cfg.families, 2400, seed=cfg.seed, id_prefix="sft", split="sft")
    held_out = generate_mix(cfg.families, cfg.eval_problems, seed=cfg.seed + 1, id_prefix="sft-eval", split="rl")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    acc, step, start = 0.0, 0, time.time()
    model.train()
    while step < cfg.max_steps:
        idx = torch.randint(len(train), (cfg.batch_size,), generator=gen).tolist()
        ids, mask, labels = sft_batch(tokenizer, [train[i] for i in idx])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        warmup.step()
        step += 1
        if step % cfg.check_every == 0:
            acc = sampled_accuracy(model, tokenizer, held_out, cfg)
            log.info("warm start step %d: loss %.3f, sampled accuracy %.3f", step, loss.item(), acc)
            if acc >= cfg.target_accuracy:
                break
    log.info("warm start done: %d steps, sampled accuracy %.3f, %.0f s", step, acc, time.time() - start)
    return model, tokenizer, {"steps": step, "sampled_accuracy": acc, "seconds": time.time() - start}


def warm_started_tiny(cfg: WarmStartConfig | None = None):
    """The cached warm-started tiny policy and its tokenizer; trains and caches it on first use."""
    cfg = cfg or WarmStartConfig()
    target = cache_dir() / "warmstart" / cfg.key()
    if not (target / "model.safetensors").exists():
        log.info("training the warm-start checkpoint once (cached in %s)", target)
        model, tokenizer, info = train_warm_start(cfg)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        model.save_pretrained(tmp)
        (tmp / "warmstart.json").write_text(json.dumps({"config": asdict(cfg), **info}, indent=2))
        try:
            os.replace(tmp, target)  # atomic: a concurrent or killed run never sees half a checkpoint
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    tokenizer = build_tokenizer()
    model = transformers.Qwen2ForCausalLM.from_pretrained(target)
    return model, tokenizer


def warm_start_info(cfg: WarmStartConfig | None = None) -> dict:
    path = cache_dir() / "warmstart" / (cfg or WarmStartConfig()).key() / "warmstart.json"
    return json.loads(path.read_text()) if path.exists() else {}
