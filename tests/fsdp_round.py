"""GradAlign rounds on the warm-started tiny policy, for `tests/test_distributed.py` to launch with 1 or 2
processes. argv: OUT.json SETTING..., each SETTING one round on a fresh copy of the policy, MODE:PRECISION[:OPTION]
  MODE       plain: every process holds the whole model; fsdp: FSDP2 shards it (each decoder layer, then the
             root, as accelerate's FSDP plugin wraps a transformer)
  PRECISION  fp32, or bf16: bf16 weights (FSDP: bf16 compute copies, fp32 gradient reductions)
  OPTION     checkpointing: turn on the model's gradient checkpointing (and train mode, where it applies) first
Rank 0 writes each round's per-problem numbers and selection to OUT.json, keyed by its SETTING (one launch for
several settings: the processes start, import and join once)."""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from gradalign import RunConfig
from gradalign.curriculum.round import RoundSelector
from gradalign.data.regimes import unreliable_rewards
from gradalign.distributed import process_group
from gradalign.policy.warmstart import warm_started_tiny
from gradalign.rewards import ExactMatch, ProblemReward


def shard(model, precision: str) -> None:
    if not dist.is_initialized():  # one process: FSDP still needs a process group to shard over
        dist.init_process_group("gloo")
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if precision == "bf16" else None,
                                  reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def training_gradient(model, tokenizer, problems) -> list[float]:
    """An ordinary backward right after scoring (what TRL does next): the first gradient entries of every
    parameter, gathered whole. Scoring must leave FSDP's state as training expects it."""
    ids = tokenizer([p.prompt for p in problems], padding=True, return_tensors="pt")
    model(**ids).logits.float().log_softmax(-1)[..., 5].mean().backward()
    grads = [p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad for p in model.parameters()]
    return [float(g.reshape(-1)[i]) for g in grads for i in range(3)]


def one_round(mode: str, precision: str, *options: str) -> dict | None:
    """The round's numbers (None on ranks other than 0)."""
    model, tokenizer = warm_started_tiny()
    if "checkpointing" in options:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    if mode == "fsdp":
        shard(model, precision)
    elif precision == "bf16":
        model.to(torch.bfloat16)
    group = process_group(torch.device("cpu"))  # SINGLE for one process, FSDP or not
    sc = unreliable_rewards(pool_size=40, validation_size=16, test_size=4, seed=5)
    cfg = RunConfig.of(method="gradalign", chunk_size=40, selection_ratio=4, rollouts_per_problem=4,
                    validation_rollouts=4, rollout_batch=8, micro_batch=24)
    selector = RoundSelector(cfg, sc.validation, ProblemReward(ExactMatch()), group=group)
    result = selector.select(model, tokenizer, sc.pool, seed=11)
    after = training_gradient(model, tokenizer, sc.pool[:4])
    if not group.is_main:
        return None
    c = result.candidates
    return {"sharded_parameters": sum(type(p).__name__ == "DTensor" for p in model.parameters()),
            "pass_rate": c.pass_rate.tolist(), "norm": c.norm.tolist(), "cos_val": c.cos_val.tolist(),
            "scores": result.scores.tolist(), "selected": result.selected.tolist(),
            "validation_pass_rate": result.validation_pass_rate, "training_gradient": after}


def main(out: str, *settings: str) -> None:
    torch.set_num_threads(1)
    rounds = {setting: one_round(*setting.split(":")) for setting in settings}
    if all(r is not None for r in rounds.values()):
        with open(out, "w") as f:
            json.dump(rounds, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
