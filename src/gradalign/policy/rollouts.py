"""Sampling k completions per problem from a policy, with token ids, sampling-time log-probs and rewards."""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.problem import Problem
from ..distributed import SINGLE, ProcessGroup, block_count
from ..rewards import ProblemReward

log = logging.getLogger(__name__)


@dataclass
class SamplingConfig:
    """How completions are drawn (reference GradAlign: temperature 0.7, top-p 0.95)."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 8
    prompts_per_batch: int = 64  # prompts per `generate` call (each repeated k times)


@dataclass
class Rollouts:
    """A rollout group of k_i completions for each of n problems, flattened to N = Σ k_i rows.

    Prompts are left-padded and completions right-padded, as TRL lays them out, so that
    `cat([prompt_ids, completion_ids], 1)` is a valid model input.
    """

    problem_ids: list[str]  # n
    group: torch.Tensor  # [N] long: row -> problem index
    prompt_ids: torch.Tensor  # [N, P]
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, C]
    completion_mask: torch.Tensor  # [N, C] 1 up to and including EOS
    sample_logps: torch.Tensor  # [N, C] log-prob of each sampled token under the sampling distribution
    rewards: torch.Tensor  # [N] float; NaN for a completion no reward function scored (TRL's `None`)
    completions: list[str]  # N decoded texts
    temperature: float

    @property
    def num_problems(self) -> int:
        return len(self.problem_ids)

    @property
    def seq_len(self) -> int:
        """Tokens per row of a forward over the rollouts: the padded prompt, then the padded completion."""
        return self.prompt_ids.shape[1] + self.completion_ids.shape[1]

    def per_problem_mean(self, values: torch.Tensor) -> np.ndarray:
        """Mean over each problem's completions of a per-row value, [n]; NaN rows are left out (as TRL's nanmean)."""
        values = values.float()
        scored = ~values.isnan()
        sums = torch.zeros(self.num_problems).index_add_(0, self.group, torch.where(scored, values, 0.0))
        counts = torch.zeros(self.num_problems).index_add_(0, self.group, scored.float())
        return torch.where(counts > 0, sums / counts.clamp(min=1), float("nan")).numpy()

    def pass_rates(self) -> np.ndarray:
        """Mean reward per problem, p(x), over its scored completions (NaN if none was scored)."""
        return self.per_problem_mean(self.rewards)

    def mean_lengths(self) -> np.ndarray:
        """Mean completion length in tokens per problem."""
        return self.per_problem_mean(self.completion_mask.sum(1))

    def zero_variance(self) -> np.ndarray:
        """True for problems whose scored completions all got the same reward, or that have fewer than two
        scored ones (their policy gradient is zero)."""
        n, r = self.num_problems, self.rewards.float()
        scored = ~r.isnan()
        lo = torch.full((n,), float("inf")).scatter_reduce(0, self.group, torch.where(scored, r, float("inf")), "amin")
        hi = torch.full((n,), float("-inf")).scatter_reduce(0, self.group, torch.where(scored, r, float("-inf")),
                                                          "amax")
        return ~(hi - lo > 1e-12).numpy()

    def inconsistent_rewards(self, keys: list | None = None) -> np.ndarray:
        """True for problems where one answer got two different rewards: rewards that are not a function of the
        completion (a coin flip, a noisy judge, a flaky check). A verifier never does this, so it proves the
        group's reward variance is noise, whatever its gradient says.

        `keys[row]` is what the reward reads of that completion (`reward_keys`: the extracted answer, so that "7 +
        5 = 12" and "The answer is 12." are one answer); rows without a key (None, or no keys given) are compared
        by their token ids (the same completion)."""
        keys = [None] * len(self.rewards) if keys is None else keys
        if len(keys) != len(self.rewards):
            raise ValueError(f"{len(keys)} answer keys for {len(self.rewards)} completions")
        first: dict[tuple, float] = {}
        out = np.zeros(self.num_problems, dtype=bool)
        for row, (g, r, key) in enumerate(zip(self.group.tolist(), self.rewards.tolist(), keys)):
            if r != r:  # NaN: not scored
                continue
            if key is None:
                key = ("tokens", *self.completion_ids[row][self.completion_mask[row].bool()].tolist())
            if abs(first.setdefault((g, key), r) - r) > 1e-12:
                out[g] = True
        return out

    def advantages(self, scale: str = "none", eps: float = 1e-4) -> torch.Tensor:
        """Per-completion advantage A_j = r_j - mean(group), divided by (std + eps) when `scale == "group"`.

        `none` is the reference GradAlign scoring; `group` is standard GRPO (and CROPI, with eps = 1e-4).
        The std is the unbiased sample std, as TRL computes it. As in TRL, completions no reward scored (NaN) are
        left out of the mean and std and get advantage 0.
        """
        if scale not in ("none", "group"):
            raise ValueError(f"unknown advantage scale '{scale}' (choose from: none, group)")
        n, r = self.num_problems, self.rewards.double()
        scored = ~r.isnan()
        r = torch.where(scored, r, 0.0)
        counts = torch.zeros(n, dtype=torch.float64).index_add_(0, self.group, scored.double())
        mean = torch.zeros(n, dtype=torch.float64).index_add_(0, self.group, r) / counts.clamp(min=1)
        adv = torch.where(scored, r - mean[self.group], 0.0)
        if scale == "group":
            sq = torch.zeros(n, dtype=torch.float64).index_add_(0, self.group, adv**2)
            std = (sq / (counts - 1).clamp(min=1)).sqrt()
            adv = adv / (std[self.group] + eps)
        return adv.float()

    @property
    def generated_tokens(self) -> int:
        """Completion tokens sampled (up to and including EOS)."""
        return int(self.completion_mask.sum())

    @property
    def tokens(self) -> int:
        """Prompt and completion tokens of every row, padding excluded: what one forward+backward over them reads."""
        return int(self.prompt_mask.sum()) + self.generated_tokens

    @property
    def shared_prompt_tokens(self) -> int:
        """Each problem's prompt once, and every completion: what a pass that shares a group's prompt reads."""
        counts = torch.bincount(self.group, minlength=self.num_problems).clamp(min=1)
        return int((self.prompt_mask.sum(1).double() / counts[self.group]).sum().round()) + self.generated_tokens

    def completion_groups(self, problems, k: int) -> dict[tuple[int, ...], list[list[int]]]:
        """The first `k` completions (token ids up to and including EOS) of each of `problems`, keyed by the prompt's
        token ids: what a TRL generation of those prompts would have sampled (`trl_bridge.Replay`)."""
        groups: dict[tuple[int, ...], list[list[int]]] = {}
        for p in problems:
            rows = self.rows_of_problems([p])[:k].tolist()
            key = tuple(self.prompt_ids[rows[0]][self.prompt_mask[rows[0]].bool()].tolist())
            groups.setdefault(key, []).extend(
                self.completion_ids[r][self.completion_mask[r].bool()].tolist() for r in rows)
        return groups

    def rows_of_problems(self, problems) -> torch.Tensor:
        """Completion rows of the given problems, in row order: what `select_problems` keeps."""
        wanted = {int(p) for p in problems}
        return torch.tensor([i for i, g in enumerate(self.group.tolist()) if g in wanted], dtype=torch.long)

    def take_rows(self, rows: torch.Tensor) -> "Rollouts":
        """The given completion rows, in that order (the problem list unchanged)."""
        return dataclasses.replace(
            self, group=self.group[rows], prompt_ids=self.prompt_ids[rows], prompt_mask=self.prompt_mask[rows],
            completion_ids=self.completion_ids[rows], completion_mask=self.completion_mask[rows],
            sample_logps=self.sample_logps[rows], rewards=self.rewards[rows],
            completions=[self.completions[i] for i in rows.tolist()])

    def select_problems(self, rows: list[int] | np.ndarray) -> "Rollouts":
        """The rollouts of a subset of problems (in the given order)."""
        rows = [int(r) for r in rows]
        remap = {old: new for new, old in enumerate(rows)}
        keep = self.rows_of_problems(rows)
        return Rollouts(
            problem_ids=[self.problem_ids[r] for r in rows],
            group=torch.tensor([remap[g] for g in self.group[keep].tolist()], dtype=torch.long),
            prompt_ids=self.prompt_ids[keep], prompt_mask=self.prompt_mask[keep],
            completion_ids=self.completion_ids[keep], completion_mask=self.completion_mask[keep],
            sample_logps=self.sample_logps[keep], rewards=self.rewards[keep],
            completions=[self.completions[i] for i in keep.tolist()], temperature=self.temperature,
        )


def _padded(t: torch.Tensor, mask: torch.Tensor, width: int, value: float, side: str) -> torch.Tensor:
    """`t` [N, w] widened to [N, width] on the left or right, every position outside `mask` set to `value`."""
    t = t.masked_fill(mask == 0, value)
    extra = width - t.shape[1]
    fill = torch.full((t.shape[0], extra), value, dtype=t.dtype)
    return torch.cat([fill, t] if side == "left" else [t, fill], 1)


def stack_rows(parts: list[Rollouts], groups: list[torch.Tensor], problem_ids: list[str], pad_id: int) -> Rollouts:
    """The rows of several `Rollouts` as one, re-padded to the widest prompt / completion, with `groups[i]` the
    problem index (into `problem_ids`) of each row of `parts[i]`."""
    temps = {p.temperature for p in parts}
    if len(temps) > 1:
        raise ValueError(f"cannot concatenate rollouts sampled at different temperatures: {sorted(temps)}")
    p_width = max(p.prompt_ids.shape[1] for p in parts)
    c_width = max(p.completion_ids.shape[1] for p in parts)
    return Rollouts(
        problem_ids=list(problem_ids), group=torch.cat(groups),
        prompt_ids=torch.cat([_padded(p.prompt_ids, p.prompt_mask, p_width, pad_id, "left") for p in parts]),
        prompt_mask=torch.cat([_padded(p.prompt_mask, p.prompt_mask, p_width, 0, "left") for p in parts]),
        completion_ids=torch.cat([_padded(p.completion_ids, p.completion_mask, c_width, pad_id, "right")
                                  for p in parts]),
        completion_mask=torch.cat([_padded(p.completion_mask, p.completion_mask, c_width, 0, "right")
                                   for p in parts]),
        sample_logps=torch.cat([_padded(p.sample_logps, p.completion_mask, c_width, 0.0, "right") for p in parts]),
        rewards=torch.cat([p.rewards for p in parts]),
        completions=[text for p in parts for text in p.completions],
        temperature=parts[0].temperature,
    )


def add_completions(first: Rollouts, more: Rollouts, problems: np.ndarray, pad_id: int) -> Rollouts:
    """`first` with the rows of `more` (rollouts of `first`'s problems at positions `problems`) added to their
    groups; each problem's rows stay together, `first`'s before `more`'s."""
    merged = stack_rows([first, more], [first.group, torch.as_tensor(problems, dtype=torch.long)[more.group]],
                        first.problem_ids, pad_id)
    return merged.take_rows(torch.argsort(merged.group, stable=True))


def tokenize_prompts(tokenizer, prompts: list) -> list[list[int]]:
    """Token ids of each prompt exactly as TRL's GRPOTrainer tokenizes them (chat template for message lists)."""
    if prompts and isinstance(prompts[0], list):
        out = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True)
        return [list(ids) for ids in out["input_ids"]]
    return tokenizer(text=list(prompts))["input_ids"]


def pad(seqs: list[list[int]], value: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to a [B, L] tensor and its mask."""
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def reward_metadata(problem: Problem) -> dict:
    """What the reward sees about a problem besides its answer (corruption flags, the id for the fixed coin)."""
    return {**problem.metadata, "problem_id": problem.id}


def reward_completions(reward, problems: list[Problem], texts: list[str], completion_ids: list[list[int]]
                       ) -> list[float]:
    """One reward per completion (problems[j] is completion j's problem). A reward that scores as TRL's trainer
    does (`GradAlignGRPOTrainer`'s) takes the completions' token ids too, through `score_completions`."""
    if hasattr(reward, "score_completions"):
        return reward.score_completions(problems, texts, completion_ids)
    return reward.batch(texts, [p.answer for p in problems], [reward_metadata(p) for p in problems])


def reward_keys(reward, problems: list[Problem], texts: list[str]) -> list[str | None]:
    """What the reward reads of each completion (problems[j] is completion j's problem): its `answer_keys`
    (`ProblemReward.answer_keys`), all None for a reward that does not say (e.g. a TRL trainer's own functions)."""
    keys = getattr(reward, "answer_keys", None)
    if keys is None:
        return [None] * len(texts)
    return keys(texts, [p.answer for p in problems], [reward_metadata(p) for p in problems])


def block_seed(seed: int, block: int) -> int:
    """The sampling seed of one block of `prompts_per_batch` problems: the same however the blocks are shared
    out between processes."""
    return int(np.random.SeedSequence([seed, block]).generate_state(1)[0])


class PaddedSampler:
    """Our own sampler: a padded `generate` at `sampling`'s temperature and top-p, with sampling-time log-probs.

    Used where no TRL trainer exists to sample with (evaluation, the warm start, CROPI's offline store, LearnAlign's
    warmed-up copy, one-shot `select`); a trainer's selection samples with `trl_bridge.TrainerSampler` instead.
    `synced`: every rank of an FSDP group calls `generate` in step (`synced_gpus`)."""

    def __init__(self, model, tokenizer, sampling: SamplingConfig, synced: bool = False):
        self.model, self.tokenizer, self.sampling, self.synced = model, tokenizer, sampling, synced

    def __call__(self, prompt_ids: list[list[int]]) -> tuple[list[list[int]], list[list[float]]]:
        """A completion (ids up to and including EOS) and its tokens' sampling log-probs for each prompt row."""
        tok, s = self.tokenizer, self.sampling
        device = next(self.model.parameters()).device
        p_ids, p_mask = pad(prompt_ids, tok.pad_token_id, "left")
        out = self.model.generate(
            input_ids=p_ids.to(device), attention_mask=p_mask.to(device), do_sample=True,
            temperature=s.temperature, top_p=s.top_p, top_k=0, max_new_tokens=s.max_new_tokens, output_scores=True,
            return_dict_in_generate=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            synced_gpus=self.synced,
        )
        comp = out.sequences[:, p_ids.shape[1]:].cpu()
        tok_logp = torch.stack(out.scores, 1).float().log_softmax(-1).cpu().gather(-1, comp.unsqueeze(-1)).squeeze(-1)
        rows, logps = [], []
        for i, row in enumerate(comp.tolist()):
            length = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            rows.append(row[:length])
            logps.append(tok_logp[i, :length].tolist())
        return rows, logps


def sampling_logps(model, prompt_ids: list[list[int]], completions: list[list[int]], pad_id: int,
                   temperature: float, top_p: float) -> list[list[float]]:
    """Log-prob of each completion token under the distribution it was sampled from (logits / temperature,
    renormalised over the top-p nucleus), from one forward: for samplers that return none (TRL's padded and
    continuous-batching paths), as `PaddedSampler` records them while sampling."""
    p_ids, p_mask = pad(prompt_ids, pad_id, "left")
    c_ids, c_mask = pad(completions, pad_id, "right")
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=torch.cat([p_ids, c_ids], 1).to(device),
                       attention_mask=torch.cat([p_mask, c_mask], 1).to(device)).logits
    logits = logits[:, p_ids.shape[1] - 1:-1].float().cpu() / temperature
    if top_p < 1.0:  # transformers' TopPLogitsWarper: drop the tail whose cumulative probability is <= 1 - top_p
        ordered, order = logits.sort(-1)
        tail = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
        tail[..., -1] = False
        logits = logits.masked_fill(tail.scatter(-1, order, tail), float("-inf"))
    tok = logits.log_softmax(-1).gather(-1, c_ids.unsqueeze(-1)).squeeze(-1)
    return [tok[i, :len(c)].tolist() for i, c in enumerate(completions)]


@torch.no_grad()
def sample_rollouts(model, tokenizer, problems: list[Problem], k: int, reward: ProblemReward,
                    sampling: SamplingConfig, seed: int, desc: str = "rollouts", blocks: list[int] | None = None,
                    shards: ProcessGroup = SINGLE, tokenize=None, generate=None) -> Rollouts:
    """Sample `k` completions for every problem from `model` and reward them with `reward`.

    Problems are sampled in blocks of `sampling.prompts_per_batch`, each prompt as k consecutive rows; block b is
    sampled with torch seeded by `block_seed(seed, b)`. `blocks` limits sampling to some blocks (one process's
    shard); the result then holds just their problems, in block order. Deterministic given `seed`, the model and
    the block size (for samplers that draw from torch's generator).
    `generate` (prompt id rows -> completion ids and their sampling log-probs, or None) samples; default our
    `PaddedSampler`. Under an FSDP `shards` group every rank calls the sampler as often; a sampler with a
    `lockstep` group (TRL's: vLLM generation is collective) is also called with a full block's rows on every rank.
    A rank short of blocks samples its first block again and drops the result. Log-probs a sampler returns as
    None are left NaN.
    `tokenize` (prompts -> token id lists) replaces `tokenize_prompts`, e.g. by a TRL trainer's own.
    """
    if k < 1:
        raise ValueError(f"need at least one rollout per problem, got k={k}")
    step = max(1, sampling.prompts_per_batch)
    blocks = list(range(block_count(len(problems), step))) if blocks is None else list(blocks)
    batches = [problems[b * step:(b + 1) * step] for b in blocks]
    problems = [p for batch in batches for p in batch]
    if not problems:
        raise ValueError("no problems to roll out")
    generate = generate or PaddedSampler(model, tokenizer, sampling, synced=shards.sharded)
    lockstep = getattr(generate, "lockstep", None) or shards
    full_blocks = getattr(generate, "lockstep", None) is not None and lockstep.sharded
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    prompt_rows, comp_rows, logp_rows, groups = [], [], [], []
    start = 0
    jobs = list(zip(blocks, batches))
    jobs += [(None, batches[0])] * (lockstep.max(len(jobs)) - len(jobs))  # padding calls: no rows kept
    # Progress bars only for multi-batch jobs, and (disable=None) only on a terminal, never in log files.
    for b, batch in tqdm(jobs, desc=desc, leave=False, disable=True if len(jobs) <= 1 else None):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(block_seed(seed, b or 0))
            prompts = [p.prompt for p in batch]
            if full_blocks:  # vLLM's server mode hands rank r the r-th slice of the gathered rows: equal shares
                prompts += [prompts[0]] * (step - len(prompts))
            ids = (tokenize or functools.partial(tokenize_prompts, tokenizer))(prompts)
            ids = [list(s) for s in ids for _ in range(k)]
            completions, logps = generate(ids)
        if b is None:
            continue
        n = len(batch) * k
        comp_rows += [list(c) for c in completions[:n]]
        logp_rows += list(logps[:n]) if logps is not None else [None] * n
        prompt_rows += ids[:n]
        groups += [start + i // k for i in range(n)]
        start += len(batch)
    model.train(was_training)
    return assemble(problems, groups, prompt_rows, comp_rows, logp_rows, tokenizer, reward, sampling.temperature)


def assemble(problems: list[Problem], groups: list[int], prompt_rows, comp_rows, logp_rows, tokenizer,
             reward: ProblemReward, temperature: float) -> Rollouts:
    """`Rollouts` from per-row prompt ids, completion ids and log-probs (None: not known, NaN), rewarded."""
    pad_id = tokenizer.pad_token_id
    prompt_ids, prompt_mask = pad(prompt_rows, pad_id, "left")
    completion_ids, completion_mask = pad(comp_rows, pad_id, "right")
    sample_logps = torch.zeros(completion_ids.shape)
    for i, lp in enumerate(logp_rows):
        sample_logps[i, :len(comp_rows[i])] = float("nan") if lp is None else torch.tensor(lp, dtype=torch.float32)
    texts = tokenizer.batch_decode(comp_rows, skip_special_tokens=True)
    rewards = reward_completions(reward, [problems[g] for g in groups], texts, comp_rows)
    return Rollouts(
        problem_ids=[p.id for p in problems], group=torch.tensor(groups, dtype=torch.long), prompt_ids=prompt_ids,
        prompt_mask=prompt_mask, completion_ids=completion_ids, completion_mask=completion_mask,
        sample_logps=sample_logps, rewards=torch.tensor(rewards, dtype=torch.float32), completions=texts,
        temperature=temperature,
    )
