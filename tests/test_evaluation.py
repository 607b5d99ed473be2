"""Test evaluation: greedy answers are kept, in problem order, and graded as the accuracy is."""

import numpy as np
import torch

from gradalign.data.tasks import generate_mix
from gradalign.evaluation import accuracy
from gradalign.policy.rollouts import tokenize_prompts
from gradalign.policy.tiny import build_tiny_model, build_tokenizer
from gradalign.rewards import ExactMatch, ProblemReward


def test_greedy_answers_are_each_problems_own_completion_graded_as_the_accuracy():
    """Against an independent computation: each problem decoded alone (no batch, no padding) by greedy argmax."""
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, seed=3).eval()
    problems = generate_mix({"add": 1, "trivial": 1}, 6, seed=5, id_prefix="t")
    result = accuracy.evaluate(model, tokenizer, problems, ProblemReward(ExactMatch(), seed=0), max_new_tokens=4)
    assert [a["id"] for a in result["answers"]] == [p.id for p in problems]
    for p, answer in zip(problems, result["answers"]):
        prompt = tokenize_prompts(tokenizer, [p.prompt])[0]
        ids = torch.tensor([prompt])
        for _ in range(4):
            with torch.no_grad():
                nxt = model(input_ids=ids).logits[0, -1].argmax()
            if nxt.item() == tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
        alone = tokenizer.decode(ids[0, len(prompt):], skip_special_tokens=True)
        assert answer["completion"] == alone and answer["correct"] == ExactMatch()(alone, p.answer)
    assert result["accuracy"] == np.mean([a["correct"] for a in result["answers"]])


def test_sharded_answers_come_back_in_problem_order():
    """Ranks own interleaved blocks; their (indices, completions) reassemble the list as one process has it."""
    parts = [([0, 1, 4, 5], ["a", "b", "e", "f"]), ([2, 3, 6], ["c", "d", "g"])]
    assert accuracy._in_order(parts, 7) == list("abcdefg")
