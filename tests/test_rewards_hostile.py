"""Verifiers are bounded on hostile input: linear-time parsing, a length cap, no exception, reward 0 for garbage.

A seeded fuzz of hostile completions (tag floods, deep parentheses, long digit strings, NUL bytes, unicode,
"=" chains, huge numbers, whitespace floods, ...) and hostile countdown metadata (targets and numbers of the
wrong type or absurd size) through the exact, countdown and task verifiers, directly (uncapped) and through
`ProblemReward` (capped at `verifier_max_chars`), with math-verify in one batch.

Time budgets (time.perf_counter). The slowest call here is a direct, uncapped countdown call on a completion of
up to ~440 k characters: linear work, measured at ~6 ms on a 2-core machine already running a benchmark (and
~30 ms on 10 M characters); calls through `ProblemReward` (capped at 4096) take at most ~0.4 ms. PER_CALL = 0.5 s
leaves > 50x headroom for a slower or busier CI machine, and still catches a return to a quadratic parse: the old
answer-tag regex took 15.6 s on ``"<answer>" * 16000`` (128 k characters, a size the fuzz uses uncapped), and
with it this fuzz fails at 7.4 s for one call. TOTAL = 10 s for the whole fuzz loop (about 18,000 calls),
measured at ~0.6 s here: 15x headroom.
"""

from __future__ import annotations

import random
import time
from fractions import Fraction

import pytest

from gradalign.config import RunConfig
from gradalign.rewards import ExactMatch, MathVerify, ProblemReward, get_verifier
from gradalign.rewards.expression import (MAX_NUMBERS, CountdownVerifier, InvalidPuzzle, _last_answer_tag,
                                          puzzle_numbers, puzzle_target)
from gradalign.rewards.base import DEFAULT_MAX_CHARS, cap_completions

PER_CALL = 0.5  # seconds; see the module docstring
TOTAL = 10.0  # seconds, the whole fuzz loop
REGRESSION = 0.1  # seconds, one call of the regressions below (they took 8.5-15.6 s before their fixes)

# A puzzle none of the hostile fragments can solve: no fragment contains a 5, 6 or 8.
NUMBERS, TARGET, GOLD = [5, 6, 8], 38, "5*6+8"
PUZZLE = {"numbers": NUMBERS, "target": TARGET}
ANSWER = "38"  # the exact-match answer: no fragment's first line is "38"


def _random_text(rng: random.Random, k: int) -> str:
    """k code points from anywhere in unicode (surrogates and controls included)."""
    return "".join(chr(rng.randrange(0x110000)) for _ in range(min(k, 2000)))


FRAGMENTS = [
    lambda rng, k: "<answer>" * k,
    lambda rng, k: "</answer>" * k,
    lambda rng, k: "<answer></answer>" * k,
    lambda rng, k: "<answer><answer></answer>" * k,
    lambda rng, k: "<answer>" + "(" * k,
    lambda rng, k: "(" * k + "1" + ")" * k,
    lambda rng, k: "-(" * k + "2" + ")" * k,
    lambda rng, k: "(" * k,
    lambda rng, k: ")" * k,
    lambda rng, k: "9" * k,
    lambda rng, k: "1e999999",
    lambda rng, k: "1e" + "9" * k,
    lambda rng, k: str(10 ** min(k, 4000)),
    lambda rng, k: "=" * k,
    lambda rng, k: "7=" * k + "7",
    lambda rng, k: "\x00" * k,
    lambda rng, k: " \t\r\x0b\x0c\u2003\u00a0\u3000" * k,
    lambda rng, k: "\n" * k,
    lambda rng, k: "</s>" * k,
    lambda rng, k: "<|im_end|>" * k,
    lambda rng, k: "+-" * k + "1",
    lambda rng, k: "1/0",
    lambda rng, k: "/0" * k,
    lambda rng, k: "*" * k,
    lambda rng, k: "2**" * k + "2",
    lambda rng, k: "<answer>" + "1+" * k + "1</answer>",
    lambda rng, k: "\u0663\u0664" * k,  # Arabic-Indic digits
    lambda rng, k: "\U0001d7cf\U0001d7d2" * k,  # mathematical bold digits
    lambda rng, k: "\\boxed{" * k,
    lambda rng, k: "__import__('os').system('true')",
    lambda rng, k: "",
    _random_text,
]
SIZES = [0, 1, 2, 3, 10, 100, 1000, 4096, 16000]  # 16000 repeats: 128 k characters of "<answer>"


def hostile_completion(rng: random.Random) -> str:
    parts = [rng.choice(FRAGMENTS)(rng, rng.choice(SIZES)) for _ in range(rng.randint(1, 3))]
    return rng.choice(["", "\n", " "]).join(parts)


def hostile_completions(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [hostile_completion(rng) for _ in range(n)]


BAD_TARGETS = ["1e10000000", "1e999", "-1e5", 10 ** 5000, -(10 ** 100), "9" * 100_000, "1" * 65, float("inf"),
               float("-inf"), float("nan"), 1e300, None, True, False, [38], {"t": 38}, "38abc", "", " ", "\x00",
               "7/0", "0x26", "1_000", b"38", (38,), "\u0663\u0668" * 40, object()]
BAD_NUMBERS = [5, 5.0, "568", b"\x05\x06\x08", None, True, {"5": 1, "6": 1, "8": 1}, [[5], 6, 8], [5.5, 6, 8],
               [True, 6, 8], [None, 6, 8], ["5", "6", "x"], [10 ** 20, 6, 8], [float("nan"), 6, 8],
               [float("inf"), 6, 8], list(range(100_000)), [5, 6, 8] * MAX_NUMBERS, [object()], ["9" * 5000],
               (n for n in NUMBERS), iter(NUMBERS)]


def _timed(call, *args, budget: float = PER_CALL):
    """The call's result and its time; a call over `budget` is timed twice more and the fastest counts, so a
    moment of preemption on a busy machine (the suite runs in two workers) is not read as a quadratic parse."""
    seconds = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        result = call(*args)
        seconds = min(seconds, time.perf_counter() - start)
        if seconds < budget:
            break
    return result, seconds


# ----------------------------------------------------------------------------------------- regressions


def test_a_flood_of_unclosed_answer_tags_scores_zero_in_linear_time():
    """The old `<answer>(.*?)</answer>` regex with DOTALL took 15.6 s here (quadratic)."""
    countdown = CountdownVerifier()
    for completion in ("<answer>" * 16000, "<answer>" * 16000 + GOLD, "<answer>" * 160_000):
        reward, seconds = _timed(countdown, completion, GOLD, PUZZLE, budget=REGRESSION)
        assert reward == 0.0 and seconds < REGRESSION, seconds
    reward, seconds = _timed(ProblemReward(countdown), "<answer>" * 16000, GOLD, PUZZLE, budget=REGRESSION)
    assert reward == 0.0 and seconds < REGRESSION, seconds


def test_the_linear_tag_scan_is_the_regex_it_replaces():
    """Same result as the last match of the old regex, on many small random strings of tag pieces."""
    import re
    regex = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
    rng = random.Random(0)
    pieces = ["<answer>", "</answer>", "1+2", "\n", "<", ">", "answer", "</", "<answer", "/answer>", " "]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        found = regex.findall(text)
        assert _last_answer_tag(text) == (found[-1] if found else None), text


def test_absurd_or_ill_typed_countdown_metadata_scores_zero_without_an_exception():
    countdown = CountdownVerifier()
    reward, seconds = _timed(countdown, GOLD, GOLD, {"numbers": NUMBERS, "target": "1e10000000"}, budget=REGRESSION)
    assert reward == 0.0 and seconds < REGRESSION, seconds  # took 8.5 s
    assert countdown(GOLD, GOLD, {"numbers": 5, "target": TARGET}) == 0.0  # was a TypeError
    with pytest.raises(InvalidPuzzle, match="'numbers'"):
        puzzle_numbers(5)
    with pytest.raises(InvalidPuzzle, match="'target'"):
        puzzle_target("1e10000000")


def test_other_spellings_of_a_valid_puzzle_still_score():
    countdown = CountdownVerifier()
    for numbers in ([5, 6, 8], (8, 6, 5), ["5", "6", "8"], [5.0, 6.0, 8.0]):
        for target in (38, "38", " 38 ", 38.0, "38.0", Fraction(38), "76/2"):
            assert countdown(GOLD, "", {"numbers": numbers, "target": target}) == 1.0, (numbers, target)
    assert puzzle_target("7/2") == Fraction(7, 2) and puzzle_target(0.1) == Fraction(1, 10)


def test_the_cap_cuts_then_extracts():
    """A completion is cut at `max_chars`, then the usual extraction applies to what is left."""
    reward = ProblemReward(CountdownVerifier(), max_chars=100)
    assert reward("x" * 50 + "\n" + GOLD, GOLD, PUZZLE) == 1.0
    assert reward("x" * 200 + "\n" + GOLD, GOLD, PUZZLE) == 0.0  # the answer lies past the cap
    assert ProblemReward(CountdownVerifier(), max_chars=None)("x" * 200 + "\n" + GOLD, GOLD, PUZZLE) == 1.0
    assert ProblemReward(ExactMatch(), max_chars=2)("38 and more", ANSWER, None) == 1.0
    assert cap_completions(["abc", "a"], 2) == ["ab", "a"]


def test_task_verifier_names_a_bad_verifier_field_instead_of_a_type_error():
    task = get_verifier("task")
    for bad in (["exact"], {"a": 1}, 5, None, "x" * 10_000):
        with pytest.raises(ValueError, match="unknown metadata verifier"):
            task.batch([ANSWER], [ANSWER], [{"verifier": bad}])
    assert task.batch([ANSWER, ANSWER], [ANSWER, ANSWER], [[1, 2], 7]) == [1.0, 1.0]  # not a mapping: exact
    assert task.verifiers["math"]._worker is None


@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5])
def test_config_refuses_a_verifier_timeout_that_is_not_positive(value):
    with pytest.raises(ValueError, match=r"^config: 'verifier_timeout' must be > 0") as error:
        RunConfig.of(verifier_timeout=value)
    assert "\n" not in str(error.value)
    cfg = RunConfig()
    cfg.verifier_timeout = value  # validate() itself refuses it, not only the constructor's type check
    with pytest.raises(ValueError, match=r"^config: 'verifier_timeout' must be > 0"):
        cfg.validate()


@pytest.mark.parametrize("field, value", [("verifier_timeout", v) for v in (float("nan"), float("inf"), "5", None,
                                                                            True, [5])]
                         + [("verifier_max_chars", v) for v in (0, -1, 1.5, "4096", None, True)])
def test_config_refuses_verifier_knobs_of_the_wrong_kind_in_one_line(field, value):
    with pytest.raises(ValueError, match=rf"^config: '{field}' must be ") as error:
        RunConfig.of(**{field: value})
    assert "\n" not in str(error.value)


def test_config_defaults_match_the_verifiers():
    cfg = RunConfig()
    assert cfg.verifier_max_chars == DEFAULT_MAX_CHARS and cfg.verifier_timeout == 5.0
    assert RunConfig.of(verifier_timeout=0.25, verifier_max_chars=1).verifier_timeout == 0.25


# ---------------------------------------------------------------------------------------------- fuzz


def test_fuzz_hostile_completions_and_metadata_within_a_fixed_budget(caplog):
    """Thousands of hostile cases: no exception, no call over PER_CALL, the loop under TOTAL, 0 for garbage."""
    exact, countdown, task = ExactMatch(), CountdownVerifier(), get_verifier("task")
    capped = {name: ProblemReward(v) for name, v in (("exact", exact), ("countdown", countdown), ("task", task))}
    countdown_task = {"verifier": "countdown", **PUZZLE}
    calls, slowest, start = 0, (0.0, ""), time.perf_counter()

    def check(call, completion, *args, expected=0.0):
        nonlocal calls, slowest
        reward, seconds = _timed(call, completion, *args)
        calls += 1
        slowest = max(slowest, (seconds, repr(completion[:40])))
        assert reward == expected, (repr(completion[:80]), len(completion), args[1:])

    completions = hostile_completions(seed=0, n=2000)
    for completion in completions:
        check(exact, completion, ANSWER)  # uncapped: linear in the full length
        check(countdown, completion, GOLD, PUZZLE)
        check(capped["exact"], completion, ANSWER, None)
        check(capped["countdown"], completion, GOLD, PUZZLE)
        check(capped["countdown"], completion, GOLD, None)  # the puzzle read off the gold expression
        check(capped["task"], completion, GOLD, countdown_task)
        check(capped["task"], completion, ANSWER, {"verifier": "exact"})

    rng = random.Random(1)
    for target in BAD_TARGETS:
        for completion in [GOLD, f"<answer>{GOLD}</answer>"] + rng.sample(completions, 40):
            check(countdown, completion, GOLD, {"numbers": NUMBERS, "target": target})
            check(capped["task"], completion, GOLD, {"verifier": "countdown", "numbers": NUMBERS, "target": target})
    for numbers in BAD_NUMBERS:
        for completion in [GOLD, f"<answer>{GOLD}</answer>"] + rng.sample(completions, 40):
            check(countdown, completion, GOLD, {"numbers": numbers, "target": TARGET})
            check(capped["task"], completion, GOLD, {"verifier": "countdown", "numbers": numbers, "target": TARGET})

    # Control: the same verifiers still find a right answer behind hostile text within the cap (text with no
    # "<": an EOS marker would end the completion before the answer, an unclosed tag would swallow it).
    for completion in rng.sample([c for c in completions if "<" not in c], 200):
        check(capped["countdown"], completion[:3000] + f"\n<answer>{GOLD}</answer>", GOLD, PUZZLE, expected=1.0)
        check(capped["exact"], f"{ANSWER}\n" + completion, ANSWER, None, expected=1.0)

    total = time.perf_counter() - start
    assert calls > 10_000
    assert slowest[0] < PER_CALL, f"slowest call {slowest[0]:.3f}s on {slowest[1]}"
    assert total < TOTAL, f"{calls} calls took {total:.1f}s"
    warnings = [r.getMessage() for r in caplog.records if "countdown problem metadata" in r.getMessage()]
    assert len(warnings) <= 4  # once per field and verifier (countdown, and task's own countdown), not per call


def test_fuzz_math_verify_in_one_batch():
    """A few hundred capped hostile completions in one math-verify batch: every one 0, the batch bounded.

    Power towers ("9^{9^{9^9}}") are left out: sympy really hangs on them, and the per-item timeout that
    handles it (worker killed, restarted) is tested in test_rewards.py; each would cost a restart here.
    """
    math_verify = MathVerify(timeout_seconds=5.0)
    try:
        completions = [c for c in hostile_completions(seed=2, n=300) if "**" not in c and "^" not in c]
        reward = ProblemReward(math_verify)
        start = time.perf_counter()
        rewards = reward.batch(completions, [ANSWER] * len(completions), [None] * len(completions))
        seconds = time.perf_counter() - start
    finally:
        math_verify.close()
    assert len(completions) >= 250 and rewards == [0.0] * len(completions)
    # The worker's start (math-verify and sympy imports) is most of it: ~1 s here, allowed 20 s on a busy machine.
    assert seconds < 20.0, seconds
