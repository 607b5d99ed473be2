"""Verifiers: score one completion against a ground-truth answer (1.0 right, 0.0 wrong).

This package must never import torch: verifiers run in reward workers and CPU-only tools.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import reprlib
import threading
import weakref
from typing import Callable, Mapping

from gradalign.rewards.base import DEFAULT_EOS_MARKERS, Metadata, Verifier, check_lengths
from gradalign.rewards.expression import CountdownVerifier

logger = logging.getLogger(__name__)

Scorer = Callable[[str, str], float]


def final_answer(answer: str) -> str:
    """The part of a ground truth that completions are checked against: the text after its last ``####`` when
    there is some (GSM8K writes its answers as "Natalia sold ... #### 72"), else the whole answer."""
    _, marker, tail = answer.rpartition("####")
    # "reasoning ####" with nothing after: keep it whole rather than compare against an empty answer
    return tail.strip() if marker and tail.strip() else answer


# --------------------------------------------------------------------------------------- exact match


class ExactMatch(Verifier):
    """Strict string equality after stripping whitespace; no numeric normalisation ("82" != "82.0").

    The completion's answer is its text (leading whitespace dropped) up to the first newline or EOS
    marker: small policies often keep generating junk after the answer line, which should not count.
    Strict on purpose: the tiny synthetic tasks print canonical answers, and a lenient match would
    blur the reward the selection methods are compared on. A ground truth containing ``#### <answer>``
    (GSM8K's format) is compared by its text after the last ``####`` (`final_answer`).

    Time bound: O(n + m) for a completion of n and an answer of m characters (one lstrip, one split on the
    first newline, one split per EOS marker), no regex; with `ProblemReward`'s cap (`verifier_max_chars`,
    4096) a call takes microseconds.
    """

    name = "exact"

    def __init__(self, eos_markers: tuple[str, ...] = DEFAULT_EOS_MARKERS):
        self.eos_markers = tuple(eos_markers)

    def extract(self, completion: str) -> str:
        """The answer part of a completion: first line, cut at the first EOS marker, stripped."""
        text = completion.lstrip().split("\n", 1)[0]
        for marker in self.eos_markers:
            text = text.split(marker, 1)[0]
        return text.strip()

    def __call__(self, completion: str, answer: str) -> float:
        return 1.0 if self.extract(completion) == final_answer(answer).strip() else 0.0

    def answer_keys(self, completions: list[str], answers: list[str], metadatas: list[Metadata] | None = None
                    ) -> list[str | None]:
        """The answer line each completion is judged by (`extract`): the reward is a function of it."""
        check_lengths(completions, answers, metadatas)
        return [self.extract(c) for c in completions]


# --------------------------------------------------------------------------------------- math-verify


def math_verify_score(completion: str, answer: str, numbers_only: bool = False) -> float:
    """1.0 if math-verify judges `completion` equal to `answer`. Runs in the worker process only.

    The ground truth is `final_answer(answer)`: a GSM8K answer "... #### 72" is judged as "72". `numbers_only`:
    the answer math-verify reads must also be a number ("54", "3 + 4 = 7", "\\frac{1}{2}"), not an expression that
    evaluates to the answer ("6 * 9"): math-verify evaluates expressions, so an arithmetic question's own
    expression copied back would count as solving it. Timeouts are off (None) inside math-verify: its own timeout
    uses signal.alarm, which only works on a main thread; the parent process enforces the time limit instead by
    killing the worker.
    """
    from math_verify import parse, verify

    answer = final_answer(answer)
    # A bare "82" or "\\frac{1}{2}" usually parses as is; things like "x+1" only parse inside $...$.
    gold = parse(answer, parsing_timeout=None) or parse(f"${answer}$", parsing_timeout=None)
    pred = parse(completion, parsing_timeout=None)
    if numbers_only and not (pred and getattr(pred[0], "is_Number", False)):  # sympy: a literal, not 6*9
        return 0.0
    return 1.0 if gold and pred and verify(gold, pred, timeout_seconds=None) else 0.0


def math_verify_number_score(completion: str, answer: str) -> float:
    """`math_verify_score` with `numbers_only`. Runs in the worker process only."""
    return math_verify_score(completion, answer, numbers_only=True)


def math_verify_key(completion: str, answer: str) -> str:
    """What `math_verify_score` reads of a completion: math-verify's parse of it (the reward is verify(gold, that
    parse)), written out. Runs in the worker process only."""
    from math_verify import parse

    return str(parse(completion, parsing_timeout=None))


# What the worker can be asked to compute per (completion, answer) pair, and what an item that fails gives.
WORKER_JOBS = {"score": 0.0, "number": 0.0, "key": None}


def _worker_main(conn, scorer: Scorer | None) -> None:
    """Child process loop: receive (job, list of (completion, answer) pairs), send back one result per pair:
    a float reward for jobs "score" and "number" (`math_verify_score`, without and with `numbers_only`),
    math-verify's parse (a string) for job "key".

    One message per item (not per batch), so that on a timeout the parent knows which items were done.
    """
    if scorer is None:
        import math_verify  # noqa: F401  (import before "ready": startup must not eat the first item's time)

        # math-verify warns once that its timeout is disabled; we time out from the parent instead.
        logging.getLogger("math_verify").setLevel(logging.ERROR)
    jobs = {"score": lambda c, a: float((scorer or math_verify_score)(c, a)),
            "number": lambda c, a: float((scorer or math_verify_number_score)(c, a)), "key": math_verify_key}
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except EOFError:  # parent went away
            return
        if message is None:  # orderly shutdown
            return
        job, batch = message
        for completion, answer in batch:
            try:
                result = jobs[job](completion, answer)
            except Exception:  # a crash on one odd completion must not kill the worker
                result = WORKER_JOBS[job]
            conn.send(result)


def _stop(proc, conn) -> None:
    """Shut a worker down: polite request first, kill if it does not exit promptly."""
    try:
        conn.send(None)
    except (OSError, ValueError):
        pass
    conn.close()
    proc.join(timeout=1.0)
    if proc.is_alive():
        proc.kill()
        proc.join()


class _Worker:
    """One spawned child process and its pipe; closed on `close()`, garbage collection or exit."""

    def __init__(self, scorer: Scorer | None, startup_timeout: float):
        ctx = mp.get_context("spawn")  # fork would copy a parent that may hold CUDA state and threads
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child_conn, scorer), daemon=True)
        self.proc.start()
        child_conn.close()
        # weakref.finalize runs at interpreter exit too, so no child outlives us.
        self._finalizer = weakref.finalize(self, _stop, self.proc, self.conn)
        if not self.conn.poll(startup_timeout):
            self.close()
            raise RuntimeError(f"math-verify worker did not start within {startup_timeout:.0f}s")
        self.conn.recv()  # "ready"

    def close(self) -> None:
        self._finalizer()

    def kill(self) -> None:
        self.proc.kill()
        self.close()


class MathVerify(Verifier):
    """math-verify equivalence (e.g. "The answer is 82" matches "82"; "\\boxed{\\frac{1}{2}}" matches "0.5").

    GSM8K ground truths: an answer containing ``####`` is judged by its text after the last ``####``
    ("Natalia sold ... #### 72" is the answer 72; "#### 1,234" is 1234, thousands separator and all, as
    math-verify reads it); completions are parsed as usual.

    Scoring runs in a persistent child process because sympy can hang on adversarial completions and
    math-verify's own timeout (signal.alarm) does not work off the main thread (reward functions are
    often called from one). Each item gets `timeout_seconds` from the parent; a stuck item scores 0.0,
    the child is killed, and the rest of the batch goes to a fresh child, started only when needed.
    Through `ProblemReward`, completions are also cut to `verifier_max_chars` before they are sent.

    Picklable: a copy gets no process and starts its own on first use. The child is started with
    "spawn", which re-imports the main module: scripts must keep their code under
    ``if __name__ == "__main__":``.
    """

    name = "math"
    job = "score"  # the worker's scoring job (`WORKER_JOBS`)

    def __init__(self, timeout_seconds: float = 5.0, *, startup_timeout: float = 120.0, _scorer: Scorer | None = None):
        # `_scorer` (a picklable, module-level function) replaces math-verify in the child; for tests.
        self.timeout_seconds = timeout_seconds
        self.startup_timeout = startup_timeout
        self._scorer = _scorer
        self._worker: _Worker | None = None
        self._lock = threading.Lock()  # one batch at a time through the pipe

    def __call__(self, completion: str, answer: str) -> float:
        return self.batch([completion], [answer])[0]

    def batch(self, completions: list[str], answers: list[str], metadatas: list[Metadata] | None = None) -> list[float]:
        check_lengths(completions, answers, metadatas)  # metadata is not needed: the answer says it all
        return self._map(self.job, list(zip(completions, answers)))

    def answer_keys(self, completions: list[str], answers: list[str], metadatas: list[Metadata] | None = None
                    ) -> list[str | None]:
        """math-verify's parse of each completion (the reward is a function of it; None where parsing timed out).
        Not known (all None) when a test scorer replaces math-verify."""
        check_lengths(completions, answers, metadatas)
        if self._scorer is not None:
            return [None] * len(completions)
        return self._map("key", list(zip(completions, answers)))

    def _map(self, job: str, pending: list[tuple[str, str]]) -> list:
        """The worker's `job` on every (completion, answer) pair; an item that takes longer than the timeout gets
        the job's fallback (`WORKER_JOBS`) and the worker is restarted for the rest."""
        results: list = []
        with self._lock:
            while pending:  # loops again only after a timeout, with the items after the stuck one
                if self._worker is None:
                    self._worker = _Worker(self._scorer, self.startup_timeout)
                done = self._run(self._worker, job, pending)
                results += done
                pending = pending[len(done):]
                if pending:  # the next item timed out, or the child died on it
                    logger.warning("math-verify gave no answer within %.1fs; giving that completion %s and "
                                   "restarting the worker", self.timeout_seconds, WORKER_JOBS[job])
                    self._worker.kill()
                    self._worker = None
                    results.append(WORKER_JOBS[job])
                    pending = pending[1:]
        return results

    def _run(self, worker: _Worker, job: str, items: list[tuple[str, str]]) -> list:
        """Send `items`; return the results received before the first timeout (all of them if none)."""
        worker.conn.send((job, items))
        results = []
        for _ in items:
            try:
                if not worker.conn.poll(self.timeout_seconds):
                    break
                results.append(worker.conn.recv())
            except (EOFError, OSError):  # the child died
                break
        return results

    def close(self) -> None:
        """Stop the child process (it is also stopped at exit)."""
        with self._lock:
            if self._worker is not None:
                self._worker.close()
                self._worker = None

    def __getstate__(self):
        return {"timeout_seconds": self.timeout_seconds, "startup_timeout": self.startup_timeout, "_scorer": self._scorer}

    def __setstate__(self, state):
        self.__init__(state["timeout_seconds"], startup_timeout=state["startup_timeout"], _scorer=state["_scorer"])


class NumberVerify(MathVerify):
    """math-verify equivalence of an answer that is a number: "54", "The answer is 54.", "6 * 9 = 54" match 54;
    "6 * 9" does not, though math-verify alone evaluates it to 54. For arithmetic questions, whose own expression
    a policy can copy back: with `math`, SmolLM2-135M learnt in 12 GRPO steps to restate the question ("To calculate
    6 * 9, we need to"), its reported accuracy 0.38 -> 0.78 while its answers, read as numbers, went 0.27 -> 0.07
    (docs/benchmarks.md: a real LLM). Everything else as `MathVerify`."""

    name = "number"
    job = "number"


# ------------------------------------------------------------------------------------- per-task choice

TASK_VERIFIERS = ("exact", "countdown", "math", "number")


def _countdown(**kwargs) -> Verifier:

    return CountdownVerifier(**kwargs)


def _kind(metadata: Metadata) -> str:
    """The verifier a problem's metadata names ("exact" when absent); ValueError naming anything else."""
    kind = (metadata if isinstance(metadata, Mapping) else {}).get("verifier", "exact")
    if not isinstance(kind, str) or kind not in TASK_VERIFIERS:  # a list would make `in` a TypeError
        raise ValueError(f"unknown metadata verifier {reprlib.repr(kind)} (choose from: {', '.join(TASK_VERIFIERS)})")
    return kind


class TaskVerifier(Verifier):
    """Scores each problem with the verifier its ``metadata["verifier"]`` names ("exact" when absent):
    one verifier name for a scenario that mixes answer-only arithmetic with countdown puzzles.

    Each kind gets one `batch` call per batch (one math-verify round trip, not one per completion). Without
    metadata every problem is scored by exact match, so callers must pass it. A `metadata["verifier"]` that
    is not one of these names is a ValueError naming it; the time bound is that of the verifier picked.
    """

    name = "task"

    def __init__(self, timeout_seconds: float = 5.0):
        self.verifiers: dict[str, Verifier] = {
            "exact": ExactMatch(), "countdown": _countdown(), "math": MathVerify(timeout_seconds),
            "number": NumberVerify(timeout_seconds)}  # a math-verify process starts only when a problem needs it

    def __call__(self, completion: str, answer: str, metadata: Metadata = None) -> float:
        return self.batch([completion], [answer], [metadata])[0]

    def batch(self, completions: list[str], answers: list[str], metadatas: list[Metadata] | None = None) -> list[float]:
        return self._each_kind("batch", completions, answers, metadatas)

    def answer_keys(self, completions: list[str], answers: list[str], metadatas: list[Metadata] | None = None
                    ) -> list[str | None]:
        """Each completion's key by the verifier its problem names."""
        return self._each_kind("answer_keys", completions, answers, metadatas)

    def _each_kind(self, call: str, completions: list[str], answers: list[str], metadatas: list[Metadata] | None
                   ) -> list:
        """`call` (batch or answer_keys) of each problem's verifier, one call per kind, results in input order."""
        metadatas = check_lengths(completions, answers, metadatas)
        groups: dict[str, list[int]] = {}
        for i, metadata in enumerate(metadatas):
            groups.setdefault(_kind(metadata), []).append(i)
        results: list = [None] * len(completions)
        for kind, indices in groups.items():
            found = getattr(self.verifiers[kind], call)([completions[i] for i in indices],
                                                        [answers[i] for i in indices], [metadatas[i] for i in indices])
            for i, result in zip(indices, found):
                results[i] = result
        return results

    def close(self) -> None:
        """Stop the math-verify child processes, if any was started."""
        for verifier in self.verifiers.values():
            if isinstance(verifier, MathVerify):
                verifier.close()


# ------------------------------------------------------------------------------------------ registry

_VERIFIERS: dict[str, Callable[..., Verifier]] = {
    "exact": ExactMatch, "math": MathVerify, "number": NumberVerify, "countdown": _countdown, "task": TaskVerifier}


def get_verifier(name: str, **kwargs) -> Verifier:
    """Build a verifier by name ("exact", "math", "number", "countdown" or "task"); kwargs go to its constructor."""
    if name not in _VERIFIERS:
        raise ValueError(f"unknown verifier {name!r} (choose from: {', '.join(_VERIFIERS)})")
    return _VERIFIERS[name](**kwargs)
