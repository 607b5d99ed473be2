"""The safe countdown expression checker: evaluation whitelist, number use, extraction, verifiers."""

from __future__ import annotations

import pickle
from fractions import Fraction

import pytest

from gradalign.rewards import Verifier, get_verifier
from gradalign.rewards.expression import (CountdownVerifier, ExpressionError, evaluate, extract_expression, solves,
                                          uses_numbers)
from gradalign.rewards.verifiers import TaskVerifier

# ------------------------------------------------------------------------------------------ evaluate


@pytest.mark.parametrize("text, value, numbers", [
    ("2 + 3*4", 14, (2, 3, 4)),
    ("(2+3)*4", 20, (2, 3, 4)),
    ("-3 + 10", 7, (3, 10)),
    ("-(2 - 9)", 7, (2, 9)),
    ("6/4*2", 3, (6, 4, 2)),  # exact: 6/4 is 3/2, not 1
    ("7/2", Fraction(7, 2), (7, 2)),
    (" 8 ", 8, (8,)),
])
def test_evaluate_exact_values_and_literals(text, value, numbers):
    result = evaluate(text)
    assert result.value == value and result.numbers == numbers


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')",  # names, calls, strings
    "2**100",  # power
    "7//2",  # floor division
    "7 % 2",
    "x + 1",
    "abs(-3)",
    "(1).real",  # attribute
    "1.5 + 1",  # float
    "0x10",  # hex literal
    "1_000",
    "+5",  # unary plus
    "(1, 2)",
    "[1]",
    "1 < 2",
    "",
    "1 +",
    "05",  # leading zero: a syntax error in Python 3
    "True + 1",
    "1/0",  # division by zero
    "3/(2-2)",
    "1234567890123 + 1",  # literal too long
    "1+" * 200 + "1",  # too long
    "-(" * 70 + "1" + ")" * 70,  # too deep (211 characters: within the length limit)
])
def test_evaluate_rejects_everything_else(text):
    with pytest.raises(ExpressionError):
        evaluate(text)


def test_depth_and_length_limits_are_configurable():
    assert evaluate("1+" * 30 + "1").value == 31  # a left-nested sum: 30 levels deep
    with pytest.raises(ExpressionError, match="deeper"):
        evaluate("1+" * 30 + "1", max_depth=10)
    with pytest.raises(ExpressionError, match="longer"):
        evaluate("1+2", max_length=2)


# -------------------------------------------------------------------------------------- number use


def test_uses_numbers_is_a_multiset_check():
    assert uses_numbers([3, 3, 8], [8, 3, 3])
    assert not uses_numbers([3, 8], [8, 3, 3])  # a 3 unused
    assert not uses_numbers([3, 3, 3, 8], [8, 3, 3])  # a 3 reused
    assert uses_numbers([3, 8], [8, 3, 3], use_all=False)
    assert not uses_numbers([3, 3, 3], [8, 3, 3], use_all=False)


@pytest.mark.parametrize("expression, correct", [
    ("2 + 3*4", True),
    ("(3+4)*2", True),
    ("4*4 - 2", False),  # 4 twice, 3 unused: right value, wrong numbers
    ("3*4 + 2 + 0", False),  # 0 is not one of the numbers
    ("2*3*4", False),  # right numbers, wrong value
    ("2 + 3*4 = 14", True),  # an "=" chain: every part equals the target
    ("14 = 2 + 3*4", True),
    ("2 + 3*4 = 12 + 2 = 14", True),
    ("2 + 3*4 = 15", False),  # a part disagrees
    ("14", False),  # the target alone uses none of the numbers
    ("2 + 3*4 =", False),
])
def test_solves(expression, correct):
    assert solves(expression, [2, 3, 4], 14) is correct


def test_solves_subset_mode_and_division():
    assert not solves("3*4", [2, 3, 4], 12)
    assert solves("3*4", [2, 3, 4], 12, use_all=False)
    assert solves("(4 - 2/3)*3", [2, 3, 4, 3], 10)  # exact: an intermediate 10/3 is fine
    assert not solves("7/2", [7, 2], 3)  # no floor division
    assert not solves("2/(3-3)", [2, 3, 3], 0)


# ------------------------------------------------------------------------------------------ extraction


@pytest.mark.parametrize("completion, expression", [
    ("2 + 3*4", "2 + 3*4"),
    ("Let me think.\n2*3 = 6\n\n2 + 3*4  \n\n", "2 + 3*4"),  # the last non-empty line
    ("I try <answer>2 + 3*4</answer>\nthen junk", "2 + 3*4"),  # an answer tag wins over lines
    ("<answer>1+1</answer> no, <answer> 2+3*4 </answer>", "2+3*4"),  # the last tag
    ("2 + 3*4.", "2 + 3*4"),  # a sentence's period
    ("2 + 3*4<|im_end|>\njunk 99", "2 + 3*4"),  # cut at the EOS marker first
    ("", ""),
])
def test_extract_expression(completion, expression):
    assert extract_expression(completion) == expression


# ------------------------------------------------------------------------------------------- verifiers

PUZZLE = {"numbers": [2, 3, 4], "target": 14}


def test_countdown_verifier_reads_metadata():
    v = get_verifier("countdown")
    assert isinstance(v, CountdownVerifier) and isinstance(v, Verifier) and v.name == "countdown"
    assert v("The answer:\n(3+4)*2", "2 + 3*4", PUZZLE) == 1.0
    assert v("4*4 - 2", "2 + 3*4", PUZZLE) == 0.0
    assert v("__import__('os')", "2 + 3*4", PUZZLE) == 0.0
    assert v.batch(["(3+4)*2", "14"], ["2 + 3*4"] * 2, [PUZZLE, PUZZLE]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="lengths differ"):
        v.batch(["1"], ["1", "2"])


def test_countdown_verifier_falls_back_to_the_gold_expression():
    v = CountdownVerifier()
    assert v("(3+4)*2", "2 + 3*4") == 1.0  # numbers 2, 3, 4 and target 14 read off the answer
    assert v("2*3*4", "2 + 3*4") == 0.0
    assert get_verifier("countdown", use_all=False)("3*4", "4*3", {"numbers": [2, 3, 4], "target": 12}) == 1.0
    with pytest.raises(ValueError, match="not an expression"):
        v("1", "fourteen")


def test_task_verifier_dispatches_on_metadata():
    v = get_verifier("task")
    assert isinstance(v, TaskVerifier) and v.name == "task"
    completions = ["14", "(3+4)*2", "(3+4)*2", "14.0"]
    answers = ["14", "2 + 3*4", "2 + 3*4", "14"]
    metadatas = [None, {"verifier": "countdown", **PUZZLE}, {"verifier": "exact"}, {}]
    assert v.batch(completions, answers, metadatas) == [1.0, 1.0, 0.0, 0.0]
    assert v.batch(["14"], ["14"]) == [1.0]  # no metadata: exact match
    assert v("(3+4)*2", "2 + 3*4", {"verifier": "countdown"}) == 1.0
    with pytest.raises(ValueError, match=r"unknown metadata verifier 'task'"):
        v.batch(["1"], ["1"], [{"verifier": "task"}])


def test_task_verifier_pickles_and_never_starts_math_verify_unasked():
    v = pickle.loads(pickle.dumps(get_verifier("task", timeout_seconds=2.0)))
    assert v.verifiers["math"].timeout_seconds == 2.0
    assert v.batch(["14"], ["14"], [{"verifier": "exact"}]) == [1.0]
    assert v.verifiers["math"]._worker is None


def test_problem_reward_hands_each_problem_its_metadata():
    """The `task` verifier picks per problem; the countdown puzzle reaches it through ProblemReward's metadata."""
    from gradalign.rewards import ProblemReward, get_verifier
    reward = ProblemReward(get_verifier("task"), seed=0)
    countdown = {"verifier": "countdown", "numbers": [3, 4, 5], "target": 35}
    assert reward.batch(["(3+4)*5", "3*4+5", "35", "7"], ["(3+4)*5", "(3+4)*5", "(3+4)*5", "7"],
                        [countdown, countdown, countdown, {}]) == [1.0, 0.0, 0.0, 1.0]
