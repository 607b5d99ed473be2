"""Safe arithmetic-expression checking for countdown-style tasks ("make 24 from 3, 4, 2 with + - * /").

Completions are untrusted text, so nothing here calls `eval`: an expression is parsed with `ast` and walked
over a whitelist (integer literals, binary + - * /, unary minus, parentheses), after a character whitelist
and bounds on length, nesting depth and literal size. Values are exact `Fraction`s, so ``6/4*2 == 3`` holds
and ``7/2`` is not 3; dividing by zero makes the expression invalid (scored wrong), never an exception.

Countdown semantics (matching reasoning-gym 0.1.25's own scorer): a solution is correct iff it evaluates to
the target and its literals are exactly the given numbers as a multiset (every number used once). With
numbers [2, 3, 4] and target 14: ``2 + 3*4`` and ``(3+4)*2`` are right, ``4*4 - 2`` is wrong (4 used twice,
3 unused). ``use_all=False`` accepts any sub-multiset instead (target 12: ``3*4`` is then right too).
Unary minus is allowed on literals (``-3`` uses the number 3), as reasoning-gym's scorer allows.

Extraction rule (`extract_expression`): cut the completion at the first EOS marker; if it contains
``<answer>...</answer>`` tags, take the last tag's content, else the last non-empty line; drop a trailing
period. That text may be a chain ``3*8+3 = 27``: every "="-separated part must evaluate to the target and at
least one part must use the numbers (so ``1+2 = 27`` is wrong even when 1+2 would be a valid solution).
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable, Mapping

from gradalign.rewards.verifiers import DEFAULT_EOS_MARKERS, Verifier, check_lengths

MAX_LENGTH = 256  # characters; a countdown answer is a few dozen
MAX_DEPTH = 64  # nested operations; keeps the tree walk far from Python's recursion limit
MAX_DIGITS = 12  # per literal; countdown numbers are small, and this bounds the arithmetic cost

_ALLOWED_CHARS = re.compile(r"[0-9+\-*/()\s]*")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BINARY_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
               ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


class ExpressionError(ValueError):
    """The text is not an allowed arithmetic expression, or it divides by zero."""


@dataclass(frozen=True)
class Evaluation:
    """An expression's exact value and its integer literals in order of appearance (signs not included)."""

    value: Fraction
    numbers: tuple[int, ...]


def evaluate(text: str, *, max_length: int = MAX_LENGTH, max_depth: int = MAX_DEPTH,
             max_digits: int = MAX_DIGITS) -> Evaluation:
    """Evaluate an arithmetic expression safely; raise `ExpressionError` for anything not allowed."""
    if len(text) > max_length:
        raise ExpressionError(f"expression longer than {max_length} characters")
    # The character whitelist alone rules out names, calls, attributes, strings, floats and hex literals;
    # the AST whitelist below then rules out the rest (**, //, unary +, ...).
    if not _ALLOWED_CHARS.fullmatch(text):
        raise ExpressionError("expression contains a character other than digits, + - * / ( ) and spaces")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise ExpressionError(f"not a valid expression: {error.__class__.__name__}") from None
    numbers: list[int] = []
    value = _walk(tree.body, numbers, 0, max_depth, max_digits)
    return Evaluation(value, tuple(numbers))


def _walk(node: ast.AST, numbers: list[int], depth: int, max_depth: int, max_digits: int) -> Fraction:
    if depth > max_depth:
        raise ExpressionError(f"expression nested deeper than {max_depth}")
    if isinstance(node, ast.Constant) and type(node.value) is int:  # `type is`: True/False are ints too
        if len(str(node.value)) > max_digits:
            raise ExpressionError(f"literal longer than {max_digits} digits")
        numbers.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_walk(node.operand, numbers, depth + 1, max_depth, max_digits)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left = _walk(node.left, numbers, depth + 1, max_depth, max_digits)
        right = _walk(node.right, numbers, depth + 1, max_depth, max_digits)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ExpressionError("division by zero")
        return _BINARY_OPS[type(node.op)](left, right)
    raise ExpressionError(f"{node.__class__.__name__} is not allowed")


def extract_expression(completion: str, eos_markers: Iterable[str] = DEFAULT_EOS_MARKERS) -> str:
    """The candidate expression of a completion (see the module docstring for the rule)."""
    for marker in eos_markers:
        completion = completion.split(marker, 1)[0]
    tagged = _ANSWER_TAG.findall(completion)
    if tagged:
        text = tagged[-1]
    else:
        lines = [line for line in completion.splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def uses_numbers(used: Iterable[int], numbers: Iterable[int], use_all: bool = True) -> bool:
    """Whether the literals `used` are the multiset `numbers` (use_all) or a sub-multiset of it."""
    used_count, allowed_count = Counter(used), Counter(numbers)
    return used_count == allowed_count if use_all else used_count <= allowed_count


def solves(expression: str, numbers: Iterable[int], target: Fraction | int, use_all: bool = True,
           max_length: int = MAX_LENGTH) -> bool:
    """Whether `expression` (possibly an "="-chain) reaches `target` from `numbers`; never raises on bad input."""
    if len(expression) > max_length:
        return False
    numbers = list(numbers)
    try:
        parts = [evaluate(part, max_length=max_length) for part in expression.split("=")]
    except ExpressionError:
        return False
    if any(part.value != target for part in parts):
        return False
    return any(uses_numbers(part.numbers, numbers, use_all) for part in parts)


class CountdownVerifier(Verifier):
    """Scores a countdown completion 1.0 iff its expression reaches the target from the given numbers.

    The numbers and target come from ``metadata["numbers"]`` and ``metadata["target"]`` when the caller
    passes metadata; otherwise from the gold `answer` itself (its literals and value), which is the same
    puzzle whenever the gold solution uses every number, as reasoning-gym's countdown solutions do.
    """

    name = "countdown"

    def __init__(self, use_all: bool = True, max_length: int = MAX_LENGTH,
                 eos_markers: tuple[str, ...] = DEFAULT_EOS_MARKERS):
        self.use_all = use_all
        self.max_length = max_length
        self.eos_markers = tuple(eos_markers)

    def __call__(self, completion: str, answer: str, metadata: Mapping[str, Any] | None = None) -> float:
        numbers, target = self.puzzle(answer, metadata)
        expression = extract_expression(completion, self.eos_markers)
        return 1.0 if solves(expression, numbers, target, self.use_all, self.max_length) else 0.0

    def batch(self, completions: list[str], answers: list[str],
              metadatas: list[Mapping[str, Any] | None] | None = None) -> list[float]:
        metadatas = check_lengths(completions, answers, metadatas)
        return [self(c, a, m) for c, a, m in zip(completions, answers, metadatas)]

    @staticmethod
    def puzzle(answer: str, metadata: Mapping[str, Any] | None) -> tuple[list[int], Fraction]:
        """(numbers, target) of a problem: from its metadata, else from its gold expression."""
        metadata = metadata or {}
        if "numbers" in metadata and "target" in metadata:
            return [int(n) for n in metadata["numbers"]], Fraction(str(metadata["target"]))
        try:
            gold = evaluate(answer)
        except ExpressionError as error:
            raise ValueError(f"countdown problem has no metadata 'numbers'/'target' and its answer {answer!r} "
                             f"is not an expression ({error})") from None
        return list(gold.numbers), gold.value

