"""Accuracy of a policy on held-out problems: greedy pass@1 or sampled mean@k, overall and per source."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..data.problem import Problem
from ..distributed import SINGLE, ProcessGroup
from ..policy.load import mixed_precision
from ..policy.rollouts import SamplingConfig, pad, reward_metadata, sample_rollouts, tokenize_prompts
from ..rewards import ProblemReward


@torch.no_grad()
def greedy_completions(model, tokenizer, problems: list[Problem], max_new_tokens: int, batch: int = 256) -> list[str]:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    texts: list[str] = []
    for start in range(0, len(problems), batch):
        ids = tokenize_prompts(tokenizer, [p.prompt for p in problems[start:start + batch]])
        p_ids, p_mask = pad(ids, tokenizer.pad_token_id, "left")
        out = model.generate(input_ids=p_ids.to(device), attention_mask=p_mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        texts += tokenizer.batch_decode(out[:, p_ids.shape[1]:], skip_special_tokens=True)
    model.train(was_training)
    return texts


def per_problem_correct(model, tokenizer, problems: list[Problem], reward: ProblemReward, max_new_tokens: int,
                        samples: int = 0, sampling: SamplingConfig | None = None, seed: int = 0,
                        group: ProcessGroup = SINGLE) -> tuple[np.ndarray, list[str] | None]:
    """Score of each problem: greedy correctness (samples=0) or the mean reward of `samples` sampled completions;
    and the greedy completions (None when sampled). Sharded: each rank scores its blocks of the list; every rank
    gets every score and completion."""
    sampling = sampling or SamplingConfig(max_new_tokens=max_new_tokens)
    blocks, owned = group.shard(len(problems), sampling.prompts_per_batch)
    mine = [problems[i] for i in owned]
    texts: list[str] | None = None
    if samples:
        local = sample_rollouts(model, tokenizer, problems, samples, reward, sampling, seed, desc="evaluation",
                                blocks=blocks).pass_rates() if mine else np.zeros(0)
    else:
        texts = greedy_completions(model, tokenizer, mine, max_new_tokens, batch=sampling.prompts_per_batch)
        local = np.array(reward.batch(texts, [p.answer for p in mine], [reward_metadata(p) for p in mine]))
    correct = group.gather(local.astype(np.float64), owned, len(problems))
    return correct, None if texts is None else _in_order(group.gather_all((owned.tolist(), texts)), len(problems))


def _in_order(parts: list[tuple[list[int], list[str]]], n: int) -> list[str]:
    """Every rank's (indices, completions) as one list in problem order."""
    out = [""] * n
    for owned, texts in parts:
        for i, text in zip(owned, texts):
            out[i] = text
    return out


def evaluate(model, tokenizer, problems: list[Problem], reward: ProblemReward, max_new_tokens: int,
             samples: int = 0, sampling: SamplingConfig | None = None, seed: int = 0,
             group: ProcessGroup = SINGLE) -> dict:
    """{"accuracy": overall, "by_source": {source: accuracy}, "n": count}, and with greedy decoding "answers": each
    problem's completion and correctness, in order (what a jump in accuracy was made of: a reward hack shows)."""
    if not problems:
        return {"accuracy": float("nan"), "by_source": {}, "n": 0}
    with mixed_precision(model):
        correct, texts = per_problem_correct(model, tokenizer, problems, reward, max_new_tokens, samples, sampling,
                                             seed, group)
    by_source: dict[str, list[float]] = defaultdict(list)
    for p, c in zip(problems, correct):
        by_source[p.source].append(float(c))
    result = {"accuracy": float(np.mean(correct)), "by_source": {s: float(np.mean(v)) for s, v in by_source.items()},
              "n": len(problems)}
    if texts is not None:
        result["answers"] = [{"id": p.id, "source": p.source, "completion": t, "correct": float(c)}
                             for p, t, c in zip(problems, texts, correct)]
    return result
