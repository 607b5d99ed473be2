"""Verifiers and the problem-level (corruption-aware) reward."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import subprocess
import sys
import time

import pytest

from gradalign.rewards import ExactMatch, MathVerify, ProblemReward, Verifier, get_verifier
from gradalign.rewards.corruption import SLIP_RATE


def test_rewards_package_does_not_import_torch():
    code = "import gradalign.rewards, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------ exact


@pytest.mark.parametrize(
    "completion, answer, reward",
    [
        ("82", "82", 1.0),
        ("  82 \n", " 82", 1.0),
        ("82\nand then some junk 7", "82", 1.0),
        ("\n82\njunk", "82", 1.0),  # leading blank lines are whitespace, not the answer line
        ("82</s>junk", "82", 1.0),
        ("82<|im_end|>", "82", 1.0),
        ("82.0", "82", 0.0),  # strict: no numeric normalisation
        ("The answer is 82", "82", 0.0),
        ("", "82", 0.0),
        ("junk\n82", "82", 0.0),
    ],
)
def test_exact_match(completion, answer, reward):
    assert ExactMatch()(completion, answer) == reward


def test_exact_match_batch_and_protocol():
    v = ExactMatch()
    assert isinstance(v, Verifier) and v.name == "exact"
    assert v.batch(["1", "2"], ["1", "3"]) == [1.0, 0.0]
    with pytest.raises(ValueError):
        v.batch(["1"], [])


def test_get_verifier():
    assert isinstance(get_verifier("exact"), ExactMatch)
    m = get_verifier("math", timeout_seconds=2.0)
    assert isinstance(m, MathVerify) and m.timeout_seconds == 2.0
    with pytest.raises(ValueError, match=r"^unknown verifier 'x' \(choose from: exact, math, number, countdown, task\)$"):
        get_verifier("x")


# ----------------------------------------------------------------------------------------- math


@pytest.fixture(scope="module")
def math_verifier():
    v = MathVerify()
    yield v
    v.close()


def test_math_verify_equivalences(math_verifier):
    pairs = [
        ("The answer is 82", "82", 1.0),
        ("The answer is \\boxed{82}.", "82", 1.0),
        ("82.0", "82", 1.0),
        ("The answer is 81", "82", 0.0),
        ("", "82", 0.0),
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("\\boxed{\\frac{1}{2}}", "1/2", 1.0),
        ("0.5", "\\frac{1}{2}", 1.0),
        ("1/2", "\\frac{1}{2}", 1.0),
        ("\\boxed{1+x}", "x+1", 1.0),  # gold only parses once wrapped in $...$
        ("82\nand some junk 7", "82", 0.0),  # without a box or "answer is", the last number wins
        ("yes", "yes", 0.0),  # non-math gold parses to nothing: never rewarded
    ]
    rewards = math_verifier.batch([c for c, _, _ in pairs], [a for _, a, _ in pairs])
    assert rewards == [r for _, _, r in pairs]
    assert math_verifier("\\boxed{2}", "2") == 1.0


def test_number_verifier_wants_the_number_not_the_question_copied_back():
    """math-verify evaluates expressions, so an arithmetic question's own expression scores as its answer; `number`
    rewards the same answers as `math` where the answer read is a number, and nothing else."""
    answers = ["54", "-5", "-20", "9"]
    numbers = ["54", "The answer is -5.", "4 * 1 * 5 = -20 is wrong, it is -20", "1 + 3 + 5 = 9"]
    copied = ["6 * 9", "1 - 6", "-4 * 1 * 5", "(1 + 3 + 5)"]  # the questions' own expressions
    wrong = ["55", "5", "-4 * 1 * 5 = 20", "3 ^ 2 - 1"]
    math, number = get_verifier("math"), get_verifier("number")
    try:
        assert math.batch(copied[:3], answers[:3]) == [1.0, 1.0, 1.0]  # the hole `number` closes
        assert number.batch(numbers + copied + wrong, answers * 3) == [1.0] * 4 + [0.0] * 8
        assert math.batch(numbers, answers) == [1.0] * 4
        assert number.name == "number" and isinstance(pickle.loads(pickle.dumps(number)), type(number))
    finally:
        math.close()
        number.close()


def test_math_verify_pickles_without_its_process(math_verifier):
    copy = pickle.loads(pickle.dumps(math_verifier))
    assert copy._worker is None and copy.timeout_seconds == math_verifier.timeout_seconds


def slow_scorer(completion: str, answer: str) -> float:
    """Stands in for math-verify in the child: "hang" never finishes in time, "crash" raises."""
    if completion == "hang":
        time.sleep(60)
    if completion == "crash":
        raise RuntimeError("boom")
    return 1.0 if completion == answer else 0.0


def test_math_verify_timeout_kills_and_restarts_worker(caplog):
    v = MathVerify(timeout_seconds=0.3, _scorer=slow_scorer)
    try:
        with caplog.at_level(logging.WARNING, logger="gradalign.rewards.verifiers"):
            rewards = v.batch(["1", "hang", "2", "crash", "x"], ["1", "1", "2", "1", "y"])
        # the stuck item scores 0.0 and the items after it are still scored (by a fresh worker)
        assert rewards == [1.0, 0.0, 1.0, 0.0, 0.0]
        assert any("no answer within 0.3s" in r.message for r in caplog.records)
        first = v._worker.proc
        assert v("3", "3") == 1.0 and v._worker.proc is first  # the new worker persists
    finally:
        v.close()
    assert v._worker is None and not first.is_alive()


# ------------------------------------------------------------------------------------ problem reward


def test_problem_reward_clean_uses_verifier():
    reward = ProblemReward(ExactMatch())
    assert reward("82", "82", {}) == 1.0
    assert reward("81", "82", None) == 0.0
    assert reward("81", "82", {"corrupted": False, "corruption": "coin"}) == 0.0


def test_problem_reward_coin_is_fixed_and_fair():
    reward = ProblemReward(ExactMatch(), seed=3)
    meta = {"corrupted": True, "problem_id": "p7"}
    completions = [f"completion {i}" for i in range(400)]
    first = reward.batch(completions, ["82"] * 400, [meta] * 400)
    assert first == [reward(c, "82", meta) for c in completions]  # same input, same output
    assert set(first) == {0.0, 1.0} and 0.4 <= sum(first) / 400 <= 0.6
    # correctness does not matter: the right answer is rewarded only by the coin
    assert 0.4 <= sum(reward("82", "82", {"corrupted": True, "problem_id": f"p{i}"}) for i in range(400)) / 400 <= 0.6
    # the coin depends on the seed and the problem
    assert ProblemReward(ExactMatch(), seed=4).batch(completions, ["82"] * 400, [meta] * 400) != first
    other = reward.batch(completions, ["82"] * 400, [{"corrupted": True, "problem_id": "p8"}] * 400)
    assert other != first
    # without a problem id the answer keys the coin
    assert reward.batch(completions, ["82"] * 400, [{"corrupted": True}] * 400) != first


def test_problem_reward_coin_is_independent_for_repeated_completions():
    # A confident policy repeats one answer; its group must still look like coin flips (pass rate near 0.5),
    # not all-0 or all-1 -- and the same batch must get the same rewards again (resumable runs).
    reward = ProblemReward(ExactMatch(), seed=0)
    meta = {"corrupted": True, "problem_id": "p1"}
    rewards = reward.batch(["82"] * 400, ["82"] * 400, [meta] * 400)
    assert 0.4 <= sum(rewards) / 400 <= 0.6
    assert reward.batch(["82"] * 400, ["82"] * 400, [meta] * 400) == rewards


def test_the_coin_is_the_low_bit_of_the_first_digest_byte():
    """Pinned by an independent computation: benchmark runs of earlier versions keep their coins."""
    reward = ProblemReward(ExactMatch(), seed=3)
    for i in range(50):
        digest = hashlib.blake2b(json.dumps([3, "p7", f"c{i}", 0]).encode(), digest_size=8).digest()
        assert reward(f"c{i}", "82", {"corrupted": True, "problem_id": "p7"}) == float(digest[0] & 1)


def test_problem_reward_slips_flip_a_fixed_tenth_of_the_verifiers_rewards():
    """A mostly-right judge: the verifier's reward, flipped on a fixed pseudo-random SLIP_RATE of the completions,
    each occurrence of a repeated completion on its own (so a group can reward one answer two ways)."""
    reward, n = ProblemReward(ExactMatch(), seed=5), 4000
    completions, answers = [str(i % 7) for i in range(n)], ["3"] * n
    meta = {"corrupted": True, "corruption": "slips", "problem_id": "p1"}
    got = reward.batch(completions, answers, [meta] * n)
    truth = ExactMatch().batch(completions, answers, [{}] * n)
    slipped = [g != t for g, t in zip(got, truth)]
    assert set(got) == set(truth) == {0.0, 1.0}  # binary: a slip is 1 - r
    # Binomial(n, 0.1): the share's std is sqrt(0.09 / n) = 0.0047 at n = 4000; 5 std of room
    assert abs(sum(slipped) / n - SLIP_RATE) < 5 * (SLIP_RATE * (1 - SLIP_RATE) / n) ** 0.5
    assert {g for c, g in zip(completions, got) if c == "3"} == {0.0, 1.0}  # one answer, both rewards
    assert reward.batch(completions, answers, [meta] * n) == got  # fixed: a resumed run sees the same rewards
    assert ProblemReward(ExactMatch(), seed=6).batch(completions, answers, [meta] * n) != got


def test_problem_reward_wrong_answer_and_unknown_kind():
    reward = ProblemReward(ExactMatch())
    meta = {"corrupted": True, "corruption": "wrong-answer", "wrong_answer": "13"}
    assert reward.batch(["13", "82", "82"], ["82", "82", "82"], [meta, meta, {}]) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="'typo'"):
        reward("82", "82", {"corrupted": True, "corruption": "typo"})
    with pytest.raises(ValueError, match="wrong_answer"):
        reward("82", "82", {"corrupted": True, "corruption": "wrong-answer"})
