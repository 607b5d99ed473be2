"""Rewards that are not a function of the completion: `Rollouts.inconsistent_rewards` against a plain-Python reading
of its definition (the same completion text, two different rewards), on random groups with padding, unscored rows
and repeated completions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradalign.policy.rollouts import Rollouts


def random_rollouts(seed: int, reward_of) -> Rollouts:
    """n problems with k completions each, drawn from a few short token sequences (so repeats are common), right
    padded to a random width; `reward_of(problem, tokens, generator)` gives each completion's reward."""
    g = np.random.default_rng(seed)
    n, k = int(g.integers(3, 9)), int(g.integers(2, 9))
    vocab = [tuple(g.integers(1, 50, size=int(g.integers(1, 5)))) for _ in range(4)]
    rows = [vocab[int(g.integers(len(vocab)))] for _ in range(n * k)]
    width = max(map(len, rows)) + int(g.integers(0, 3))
    ids = torch.zeros(n * k, width, dtype=torch.long)
    mask = torch.zeros(n * k, width, dtype=torch.long)
    for r, tokens in enumerate(rows):
        ids[r, :len(tokens)] = torch.tensor(tokens)
        mask[r, :len(tokens)] = 1
        ids[r, len(tokens):] = int(g.integers(0, 50))  # whatever sits in the padding must not matter
    group = torch.arange(n).repeat_interleave(k)
    rewards = torch.tensor([reward_of(int(group[r]), rows[r], g) for r in range(n * k)], dtype=torch.float32)
    return Rollouts(problem_ids=[f"p{i}" for i in range(n)], group=group,
                    prompt_ids=torch.zeros(n * k, 1, dtype=torch.long),
                    prompt_mask=torch.ones(n * k, 1, dtype=torch.long), completion_ids=ids, completion_mask=mask, sample_logps=torch.zeros(n * k, width), rewards=rewards,
                    completions=[""] * (n * k), temperature=1.0)


def by_definition(rollouts: Rollouts, keys: list | None = None) -> list[bool]:
    """Per problem: do two of its scored completions with the same answer key (or, for rows without one, the same
    tokens, padding cut off) have different rewards?"""
    seen: list[dict[tuple, set]] = [dict() for _ in range(rollouts.num_problems)]
    for r in range(len(rollouts.group)):
        reward = float(rollouts.rewards[r])
        if np.isnan(reward):
            continue
        length = int(rollouts.completion_mask[r].sum())
        tokens = tuple(int(t) for t in rollouts.completion_ids[r, :length])
        answer = ("tokens", tokens) if keys is None or keys[r] is None else ("key", keys[r])
        seen[int(rollouts.group[r])].setdefault(answer, set()).add(reward)
    return [any(len(values) > 1 for values in problem.values()) for problem in seen]


@pytest.mark.parametrize("seed", range(8))
def test_inconsistent_rewards_match_the_definition(seed):
    def noisy(problem, tokens, g):  # coin flips, graded rewards and unscored completions mixed
        return [float(g.integers(0, 2)), float(g.random()), float("nan"), float(len(tokens) % 2)][problem % 4]
    rollouts = random_rollouts(seed, noisy)
    assert rollouts.inconsistent_rewards().tolist() == by_definition(rollouts)


@pytest.mark.parametrize("seed", range(8))
def test_inconsistent_rewards_by_answer_keys_match_the_definition(seed):
    """Keys from a small set (so different completions share them), a third of the rows without one."""
    g = np.random.default_rng(100 + seed)
    rollouts = random_rollouts(seed, lambda problem, tokens, g: float(g.integers(0, 2)))
    keys = [None if g.random() < 1 / 3 else str(g.integers(0, 3)) for _ in range(len(rollouts.group))]
    assert rollouts.inconsistent_rewards(keys).tolist() == by_definition(rollouts, keys)


@pytest.mark.parametrize("seed", range(8))
def test_a_reward_that_is_a_function_of_the_completion_is_never_inconsistent(seed):
    """What a verifier gives: the same completion, the same reward, however often it repeats."""
    rollouts = random_rollouts(seed, lambda problem, tokens, g: float(sum(tokens) % 3 == problem % 3))
    assert not rollouts.inconsistent_rewards().any()


def test_only_a_repeated_completion_gives_evidence():
    """Coin flips on eight copies of one completion are flagged; on eight different completions they are not (no
    completion was rewarded twice, so nothing shows the rewards ignore it); a copy left unscored is no evidence."""
    coins = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    same, different = [(7, 8)] * 8, [(t, 9) for t in range(8)]
    ids = torch.tensor(same + different + same)
    rewards = torch.tensor(coins + coins + [1.0] + [float("nan")] * 6 + [0.0])
    rollouts = Rollouts(problem_ids=["same", "different", "one-scored-twice"],
                        group=torch.arange(3).repeat_interleave(8), prompt_ids=torch.zeros(24, 1, dtype=torch.long),
                        prompt_mask=torch.ones(24, 1, dtype=torch.long),
                        completion_ids=ids, completion_mask=torch.ones(24, 2, dtype=torch.long),
                        sample_logps=torch.zeros(24, 2), rewards=rewards, completions=[""] * 24, temperature=1.0)
    assert rollouts.inconsistent_rewards().tolist() == [True, False, True]
    rollouts.rewards[23] = 1.0  # the one repeated completion now rewarded alike
    assert rollouts.inconsistent_rewards().tolist() == [True, False, False]
