"""`GradAlignGRPOTrainer` on the tiny policy, for `tests/test_distributed.py` to launch with 1 or 2 processes:
writes the selection history (rank 0) to the JSON file named by argv[1]."""

import json
import sys

import torch
from datasets import Dataset
from trl import GRPOConfig

from gradalign import GradAlignGRPOTrainer, RunConfig
from gradalign.data.regimes import unreliable_rewards
from gradalign.policy.warmstart import warm_started_tiny


def exact_match(prompts, completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


def main(out: str) -> None:
    torch.set_num_threads(1)
    model, tokenizer = warm_started_tiny()
    scenario = unreliable_rewards(pool_size=64, validation_size=16, test_size=4, seed=0)
    rows = lambda problems: Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in problems])  # noqa: E731
    trainer = GradAlignGRPOTrainer(
        model=model, processing_class=tokenizer, reward_funcs=exact_match, train_dataset=rows(scenario.pool),
        args=GRPOConfig(output_dir=f"{out}.trl", max_steps=4, per_device_train_batch_size=16, num_generations=4,
                        max_completion_length=6, report_to=[], use_cpu=True, bf16=False, logging_steps=1),
        validation_dataset=rows(scenario.validation),
        selection=RunConfig.of(chunk_size=32, selection_ratio=4, steps_per_round=2, rollouts_per_problem=4,
                            validation_rollouts=4, rollout_batch=8),
    )
    trainer.train()
    if trainer.accelerator.is_main_process:
        with open(out, "w") as f:
            json.dump({"processes_scoring": trainer.selector.group.world_size,
                       "generation_batch_size": trainer.args.generation_batch_size,
                       "history": [{k: h.get(k) for k in ("round", "selected", "zero_variance", "reused")}
                                   for h in trainer.selection_history]}, f)


if __name__ == "__main__":
    main(sys.argv[1])
