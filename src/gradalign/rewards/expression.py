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
import logging
import math
import operator
import re
import reprlib
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable, Mapping

from gradalign.rewards.base import DEFAULT_EOS_MARKERS, Verifier, check_lengths

logger = logging.getLogger(__name__)

MAX_LENGTH = 256  # characters; a countdown answer is a few dozen
MAX_DEPTH = 64  # nested operations; keeps the tree walk far from Python's recursion limit
MAX_DIGITS = 12  # per literal; countdown numbers are small, and this bounds the arithmetic cost

MAX_NUMBERS = 128  # metadata["numbers"]: more than an answer of MAX_LENGTH characters can use ("1+1+...")
MAX_TARGET_DIGITS = 64  # metadata["target"]: far beyond any puzzle, and parsing it stays cheap

_ALLOWED_CHARS = re.compile(r"[0-9+\-*/()\s]*")
_OPEN_TAG, _CLOSE_TAG = "<answer>", "</answer>"
# A target given as text: an integer, a decimal or a ratio of integers, each part at most MAX_TARGET_DIGITS digits.
# No exponent: "1e10000000" would make Fraction build a ten-million-digit integer.
_TARGET_TEXT = re.compile(rf"\s*[+-]?(?:\d{{1,{MAX_TARGET_DIGITS}}}(?:\.\d{{0,{MAX_TARGET_DIGITS}}})?"
                          rf"|\d{{1,{MAX_TARGET_DIGITS}}}/\d{{1,{MAX_TARGET_DIGITS}}})\s*")
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
    text = _last_answer_tag(completion)
    if text is None:
        lines = [line for line in completion.splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def _last_answer_tag(text: str) -> str | None:
    """The content of the last ``<answer>...</answer>`` pair, or None: exactly what the last match of
    ``re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)`` would be, in linear time.

    That regex is quadratic on unclosed tags (``"<answer>" * 16000`` took 15.6 s: each start rescans the rest
    for a closing tag). Here each pair is found with two `str.find` calls from where the previous pair ended,
    and the scan stops at the first opening tag with no closing tag after it, so every character is read O(1)
    times.
    """
    found, position = None, 0
    while True:
        start = text.find(_OPEN_TAG, position)
        if start < 0:
            return found
        end = text.find(_CLOSE_TAG, start + len(_OPEN_TAG))
        if end < 0:
            return found
        found, position = text[start + len(_OPEN_TAG):end], end + len(_CLOSE_TAG)


def uses_numbers(used: Iterable[int], numbers: Iterable[int], use_all: bool = True) -> bool:
    """Whether the literals `used` are the multiset `numbers` (use_all) or a sub-multiset of it."""
    used_count, allowed_count = Counter(used), Counter(numbers)
    return used_count == allowed_count if use_all else used_count <= allowed_count


def chain_parts(expression: str, max_length: int = MAX_LENGTH) -> list[Evaluation] | None:
    """Each "="-separated part of `expression` evaluated, or None when it is too long or a part is not an
    allowed expression: everything `solves` reads of it."""
    if len(expression) > max_length:
        return None
    try:
        return [evaluate(part, max_length=max_length) for part in expression.split("=")]
    except ExpressionError:
        return None


def solves(expression: str, numbers: Iterable[int], target: Fraction | int, use_all: bool = True,
           max_length: int = MAX_LENGTH) -> bool:
    """Whether `expression` (possibly an "="-chain) reaches `target` from `numbers`; never raises on bad input."""
    parts = chain_parts(expression, max_length)
    if parts is None or any(part.value != target for part in parts):
        return False
    numbers = list(numbers)
    return any(uses_numbers(part.numbers, numbers, use_all) for part in parts)


UNREADABLE = "no expression"  # the key of every completion without one: all score 0, whatever the puzzle


def reading(expression: str, max_length: int = MAX_LENGTH) -> str:
    """What `solves` reads of an expression, written out: each part's value and literals as a multiset, or
    UNREADABLE. Two expressions with the same reading get the same verdict on every puzzle ("(3+4)*2" and
    "2 * (4+3)" do; so do two lines of prose), as math-verify's parse is the same for every unparseable text."""
    parts = chain_parts(expression, max_length)
    if parts is None:
        return UNREADABLE
    return " = ".join(f"{part.value} from {sorted(part.numbers)}" for part in parts)


class InvalidPuzzle(ValueError):
    """A countdown problem's ``metadata["numbers"]`` or ``metadata["target"]`` is unusable; `field` names which."""

    def __init__(self, field: str, message: str):
        super().__init__(f"countdown problem metadata '{field}' {message}")
        self.field = field


def _describe(value: Any) -> str:
    """A short description of a hostile value for a message, cheap whatever its size or type."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"  # repr of a huge int is slow, or refused past 4300 digits
    try:
        return reprlib.repr(value)
    except Exception:  # a hostile __repr__
        return f"a {type(value).__name__}"


def puzzle_numbers(value: Any) -> list[int]:
    """``metadata["numbers"]`` as ints: a list (or tuple, array) of at most MAX_NUMBERS integers of at most
    MAX_DIGITS digits each (ints, integral floats or integer strings); InvalidPuzzle('numbers') otherwise."""
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
        raise InvalidPuzzle("numbers", f"must be a list of integers (got {_describe(value)})")
    if len(value) > MAX_NUMBERS:
        raise InvalidPuzzle("numbers", f"has {len(value)} numbers, more than {MAX_NUMBERS}")
    numbers = []
    for n in value:
        try:
            if isinstance(n, bool):
                raise TypeError
            if isinstance(n, float):
                number = int(n) if n.is_integer() else None  # inf and nan are not integers
            elif isinstance(n, str):
                number = int(n) if len(n) <= MAX_DIGITS + 2 and n.strip().lstrip("+-").isdecimal() else None
            else:
                number = operator.index(n)  # int, numpy integers
        except (TypeError, ValueError):
            number = None
        if number is None or not -10 ** MAX_DIGITS < number < 10 ** MAX_DIGITS:
            raise InvalidPuzzle("numbers", f"must be integers of at most {MAX_DIGITS} digits (got {_describe(n)})")
        numbers.append(number)
    return numbers


def puzzle_target(value: Any) -> Fraction:
    """``metadata["target"]`` as a Fraction: an int, a finite float, a Fraction or a text "14", "3.5", "7/2"
    with at most MAX_TARGET_DIGITS digits per part and no exponent; InvalidPuzzle('target') otherwise.
    Costs O(MAX_TARGET_DIGITS) whatever the value ("1e10000000" used to take 8.5 s)."""
    bound = 10 ** MAX_TARGET_DIGITS
    try:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, Fraction):
            target = value
        elif isinstance(value, float):
            target = Fraction(repr(value)) if math.isfinite(value) else None  # repr, not the binary value: 0.1 is 1/10
        elif isinstance(value, str):
            ok = len(value) <= 3 * MAX_TARGET_DIGITS and _TARGET_TEXT.fullmatch(value)
            target = Fraction(value) if ok else None
        else:
            target = Fraction(operator.index(value))  # int, numpy integers
    except (TypeError, ValueError, ZeroDivisionError):  # "7/0" is a ZeroDivisionError
        target = None
    if target is None or not (-bound < target < bound and target.denominator < bound):
        raise InvalidPuzzle("target", f"must be a number of at most {MAX_TARGET_DIGITS} digits, without an exponent "
                            f"(got {_describe(value)})")
    return target


class CountdownVerifier(Verifier):
    """Scores a countdown completion 1.0 iff its expression reaches the target from the given numbers.

    The numbers and target come from ``metadata["numbers"]`` and ``metadata["target"]`` when the caller
    passes metadata; otherwise from the gold `answer` itself (its literals and value), which is the same
    puzzle whenever the gold solution uses every number, as reasoning-gym's countdown solutions do.

    Hostile input: metadata whose numbers or target are unusable (`puzzle_numbers`, `puzzle_target`: wrong type,
    more than MAX_NUMBERS numbers, a target with an exponent or more than MAX_TARGET_DIGITS digits) scores 0.0
    with one warning per field per verifier, never an exception. Time bound: O(n) in the completion's length n
    (one split per EOS marker, a linear tag scan, one `splitlines`), then at most `max_length` characters
    parsed and evaluated with literals of at most MAX_DIGITS digits, plus O(MAX_NUMBERS) for the puzzle;
    with `ProblemReward`'s cap (`verifier_max_chars`, 4096) a call takes well under a millisecond.
    """

    name = "countdown"

    def __init__(self, use_all: bool = True, max_length: int = MAX_LENGTH,
                 eos_markers: tuple[str, ...] = DEFAULT_EOS_MARKERS):
        self.use_all = use_all
        self.max_length = max_length
        self.eos_markers = tuple(eos_markers)
        self._warned: set[str] = set()  # fields already warned about: one line each, not one per completion

    def __call__(self, completion: str, answer: str, metadata: Mapping[str, Any] | None = None) -> float:
        try:
            numbers, target = self.puzzle(answer, metadata)
        except InvalidPuzzle as error:
            if error.field not in self._warned:
                self._warned.add(error.field)
                logger.warning("%s: scoring such problems 0.0 (warned once per field)", error)
            return 0.0
        expression = extract_expression(completion, self.eos_markers)
        return 1.0 if solves(expression, numbers, target, self.use_all, self.max_length) else 0.0

    def batch(self, completions: list[str], answers: list[str],
              metadatas: list[Mapping[str, Any] | None] | None = None) -> list[float]:
        metadatas = check_lengths(completions, answers, metadatas)
        return [self(c, a, m) for c, a, m in zip(completions, answers, metadatas)]

    def answer_keys(self, completions: list[str], answers: list[str],
                    metadatas: list[Mapping[str, Any] | None] | None = None) -> list[str | None]:
        """What the reward reads of each completion: its extracted expression's `reading` (values and numbers
        used), one key for every completion without a readable expression."""
        check_lengths(completions, answers, metadatas)
        return [reading(extract_expression(c, self.eos_markers), self.max_length) for c in completions]

    @staticmethod
    def puzzle(answer: str, metadata: Mapping[str, Any] | None) -> tuple[list[int], Fraction]:
        """(numbers, target) of a problem: from its metadata, else from its gold expression.

        Raises InvalidPuzzle (naming the field) for unusable metadata, ValueError for a problem with neither
        metadata nor a gold expression (not a countdown problem at all).
        """
        metadata = metadata if isinstance(metadata, Mapping) else {}
        if "numbers" in metadata and "target" in metadata:
            return puzzle_numbers(metadata["numbers"]), puzzle_target(metadata["target"])
        try:
            gold = evaluate(answer)
        except ExpressionError as error:
            raise ValueError(f"countdown problem has no metadata 'numbers'/'target' and its answer {_describe(answer)} "
                             f"is not an expression ({error})") from None
        return list(gold.numbers), gold.value
