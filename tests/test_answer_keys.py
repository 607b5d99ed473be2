"""Answer keys: what each verifier reads of a completion. Selection relies on one property of them: two completions
of one problem with the same key get the same reward, so one key rewarded two ways proves the reward noise
(`Rollouts.inconsistent_rewards`). Checked against each verifier's own reward on every pair of many completions
(fresh random ones for exact match and countdown), with the cases that make keys worth having: the same answer
written two ways shares a key."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from gradalign.data.problem import Problem
from gradalign.policy.rollouts import Rollouts, reward_keys
from gradalign.rewards import ExactMatch, MathVerify, ProblemReward, get_verifier

MATH_COMPLETIONS = ["7 + 5 = 12", "The answer is 12.", "12", "\\boxed{12}", "7 + 5 is 12.", "12.0", "11",
                    "The answer is 11.", "twelve", "", "no digits here", "7 + 5 = 12\n\nThen 13 more.", "-15",
                    "-9 - 6 = -15", "To calculate -9 - 6, we", "1/2", "0.5", "\\frac{1}{2}", "$x + 1$", "x+1"]
MATH_ANSWERS = ["12", "-15", "0.5", "x+1"]


def assert_reward_is_a_function_of_the_key(keys: list, rewards: list[float]) -> None:
    for (k1, r1), (k2, r2) in itertools.combinations(zip(keys, rewards), 2):
        if k1 is not None and k1 == k2:
            assert r1 == r2, (k1, r1, r2)


@pytest.fixture(scope="module")
def math_verifier():
    v = MathVerify(timeout_seconds=30.0)  # generous: the first parse in a fresh worker imports sympy's parsers
    yield v
    v.close()


def test_math_keys_determine_the_reward(math_verifier):
    keys = math_verifier.answer_keys(MATH_COMPLETIONS, ["12"] * len(MATH_COMPLETIONS))
    assert all(isinstance(k, str) for k in keys)
    for answer in MATH_ANSWERS:
        rewards = math_verifier.batch(MATH_COMPLETIONS, [answer] * len(MATH_COMPLETIONS))
        assert_reward_is_a_function_of_the_key(keys, rewards)
    # what makes keys worth more than identical completions: one answer, written two ways, is one key
    by_text = dict(zip(MATH_COMPLETIONS, keys))
    assert by_text["7 + 5 = 12"] == by_text["The answer is 12."] == by_text["\\boxed{12}"]
    assert by_text["7 + 5 = 12"] != by_text["11"]


def test_math_keys_are_unknown_under_a_test_scorer():
    assert MathVerify(_scorer=len).answer_keys(["1", "2"], ["1", "1"]) == [None, None]


@pytest.mark.parametrize("seed", range(5))
def test_exact_match_keys_determine_the_reward(seed):
    g = np.random.default_rng(seed)
    pieces = ["12", " 12", "11", "\n", "junk", "</s>", "<|im_end|>", " ", "12.0"]
    completions = ["".join(g.choice(pieces, size=int(g.integers(0, 5)))) for _ in range(60)]
    v = ExactMatch()
    keys = v.answer_keys(completions, ["12"] * 60)
    for answer in ["12", "11", "12.0", "x #### 12"]:
        assert_reward_is_a_function_of_the_key(keys, v.batch(completions, [answer] * 60))
    assert v.answer_keys(["12\nfoo", "12\nbar", "12</s>baz"], ["12"] * 3) == ["12"] * 3


PUZZLE = {"numbers": [2, 3, 4], "target": 14}


# Puzzles the fragments below can solve, fail, or half-solve (use_all=False accepts a subset of the numbers).
PUZZLES = [PUZZLE, {"numbers": [2, 3, 4], "target": 24}, {"numbers": [3, 4], "target": 7},
           {"numbers": [4, 3, 2, 2], "target": 14}, {"numbers": [2, 3, 4], "target": -14}]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("use_all", [True, False])
def test_countdown_keys_determine_the_reward(seed, use_all):
    """Keys do not depend on the puzzle, so one key must get one reward under every puzzle."""
    g = np.random.default_rng(seed)
    pieces = ["(3+4)*2", "2*(4+3)", "2 + 3*4", "2*3*4", "14", "3+4", "-", "=", "The answer:\n", "junk ",
              "<|im_end|>", "\n", " "]
    completions = ["".join(g.choice(pieces, size=int(g.integers(0, 4)))) for _ in range(60)]
    v = get_verifier("countdown", use_all=use_all)
    keys = v.answer_keys(completions, ["2 + 3*4"] * 60)
    for puzzle in PUZZLES:
        assert_reward_is_a_function_of_the_key(keys, v.batch(completions, ["2 + 3*4"] * 60, [puzzle] * 60))


def test_countdown_keys_are_what_the_verifier_reads():
    """The same expression written two ways is one answer; so is every completion without an expression (they all
    score 0, as math-verify's parse is the same for every unparseable text), and so is "3*4+2": the same value from
    the same numbers; another value or other numbers are not."""
    keys = get_verifier("countdown").answer_keys(
        ["(3+4)*2", "2 * (4+3)", "The answer:\n(4 + 3) * 2.", "1. Use a variable", "2 *", "", "3*4-2", "2*3*4"],
        ["2 + 3*4"] * 8)
    assert keys[0] == keys[1] == keys[2]
    assert keys[3] == keys[4] == keys[5] != keys[0]
    assert get_verifier("countdown").answer_keys(["3*4+2"], ["x"]) == keys[:1]
    assert len({keys[0], keys[3], keys[6], keys[7]}) == 4


def test_task_verifier_keys_come_from_each_problems_verifier():
    v = get_verifier("task")
    completions = ["14\nfoo", "The answer:\n(3+4)*2", "(3+4)*2"]
    metadatas = [None, {"verifier": "countdown", **PUZZLE}, {"verifier": "exact"}]
    assert v.answer_keys(completions, ["14", "2 + 3*4", "14"], metadatas) == [
        ExactMatch().extract(completions[0]), get_verifier("countdown").answer_keys(completions[1:2], ["x"])[0],
        "(3+4)*2"]
    with pytest.raises(ValueError, match=r"unknown metadata verifier 'task'"):
        v.answer_keys(["1"], ["1"], [{"verifier": "task"}])


class Judge:
    """A verifier that says nothing of what it reads (as a user's own may): no keys."""

    name = "judge"

    def __call__(self, completion: str, answer: str) -> float:
        return float(completion == answer)

    def batch(self, completions, answers, metadatas=None):
        return [self(c, a) for c, a in zip(completions, answers)]


def test_problem_reward_keys_as_the_verifier_reads():
    """Cut to `max_chars` as the reward cuts them; a corrupted problem gets the keys a clean one would (the
    simulated noisy judge reads the same answer); a verifier without keys gives None."""
    reward = ProblemReward(ExactMatch(), max_chars=3)
    assert reward.answer_keys(["12345", "123\n9"], ["1", "1"], [None, {"corrupted": True}]) == ["123", "123"]
    assert ProblemReward(Judge()).answer_keys(["1", "2"], ["1", "1"], [None, None]) == [None, None]


def coin_rollouts(texts: list[str], ids: list[list[int]], rewards: list[float]) -> Rollouts:
    n = len(texts)
    width = max(map(len, ids))
    completion_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    return Rollouts(problem_ids=["b", "a"], group=torch.tensor([0] * (n // 2) + [1] * (n - n // 2)),
                    prompt_ids=torch.zeros(n, 1, dtype=torch.long), prompt_mask=torch.ones(n, 1, dtype=torch.long),
                    completion_ids=completion_ids, completion_mask=mask, sample_logps=torch.zeros(n, width),
                    rewards=torch.tensor(rewards), completions=texts, temperature=1.0)


def test_one_answer_rewarded_two_ways_is_caught_where_identical_completions_are_not():
    """Problem b: "12" answered twice in different words, rewarded 1 and 0 (a coin): flagged by its keys, not by
    its tokens. Problem a: two answers, each always rewarded alike: never flagged. The round's check
    (`RoundSelector.inconsistent`) maps rows to problems by id, whatever the chunk's order."""
    from gradalign.config import RunConfig
    from gradalign.curriculum.round import RoundSelector
    texts = ["12\nso there", "12\nindeed", "12\nfoo", "11\nfoo"]
    rollouts = coin_rollouts(texts, [[1, 2], [1, 3], [4], [5]], [1.0, 0.0, 1.0, 0.0])
    chunk = [Problem(id="a", prompt="p", answer="12"), Problem(id="b", prompt="p", answer="12",
                                                                 metadata={"corrupted": True})]
    reward = ProblemReward(ExactMatch())
    keys = reward_keys(reward, [chunk[1], chunk[1], chunk[0], chunk[0]], texts)
    assert keys == ["12", "12", "12", "11"]
    assert rollouts.inconsistent_rewards().tolist() == [False, False]
    assert rollouts.inconsistent_rewards(keys).tolist() == [True, False]
    assert RoundSelector(RunConfig.of(), [], reward).inconsistent(rollouts, chunk).tolist() == [True, False]
    assert RoundSelector(RunConfig.of(), [], ProblemReward(Judge())).inconsistent(rollouts, chunk).tolist() == [
        False, False]  # no keys: identical completions only
    with pytest.raises(ValueError, match="3 answer keys for 4 completions"):
        rollouts.inconsistent_rewards(keys[:3])
