"""Small deterministic pieces of the curriculum: chunking the pool, per-round seeds, the training schedule and the
sampler that plays it to TRL (checked against TRL's own `RepeatSampler` and hand-written layouts)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from trl.trainer.utils import RepeatSampler

from gradalign.curriculum.setup import INITIAL_EVAL, chunk_order, round_seed
from gradalign.curriculum.trl_bridge import ScheduleSampler, plan_blocks

# ───────────────────────────────────────────────────────────────────────────────── chunk_order


@pytest.mark.parametrize("n_pool, m", [(23, 5), (20, 5), (7, 7), (100, 32), (5, 1)])
def test_chunk_order_shapes_and_coverage(n_pool, m):
    chunks = chunk_order(n_pool, m, seed=3)
    assert len(chunks) == math.ceil(n_pool / m)
    for ch in chunks:
        assert len(ch) == m
        assert all(0 <= int(i) < n_pool for i in ch)
        assert len(set(ch.tolist())) == m  # no problem twice within a chunk
    flat = np.concatenate(chunks).tolist()
    assert set(flat) == set(range(n_pool))  # the chunks cover every pool index
    assert sorted(flat[:n_pool]) == list(range(n_pool))  # the first N entries are one shuffled pass
    if n_pool % m == 0:
        assert sorted(flat) == list(range(n_pool))  # a permutation: each index exactly once


def test_chunk_order_is_seeded():
    a = chunk_order(50, 10, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, chunk_order(50, 10, seed=0)))
    b = chunk_order(50, 10, seed=1)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(np.concatenate(a), np.arange(50))  # actually shuffled


def test_chunk_order_cycles_over_rounds():
    """The loop takes chunk r % len(chunks) in round r: any len(chunks) consecutive rounds see the whole pool."""
    n_pool, m = 23, 5
    chunks = chunk_order(n_pool, m, seed=7)
    rounds = [chunks[r % len(chunks)] for r in range(3 * len(chunks))]
    for start in range(len(rounds) - len(chunks) + 1):
        window = rounds[start:start + len(chunks)]
        assert set(np.concatenate(window).tolist()) == set(range(n_pool))
    assert np.array_equal(rounds[0], rounds[len(chunks)])


# ───────────────────────────────────────────────────────────────────────────────── round_seed


def test_round_seed_distinct_and_deterministic():
    seeds = {(s, r): round_seed(s, r) for s in range(10) for r in range(200)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(isinstance(v, int) and 0 <= v < 2**32 for v in seeds.values())
    assert round_seed(3, 17) == seeds[(3, 17)]
    assert round_seed(0, INITIAL_EVAL) not in {round_seed(0, r) for r in range(1000)}
    assert round_seed(0, 1) != round_seed(1, 0)  # not a function of seed + round


# ───────────────────────────────────────────────────────────────────────────────── plan_blocks


def passes(blocks: list[list[int]], n_items: int) -> list[list[int]]:
    stream = [i for b in blocks for i in b]
    return [stream[k:k + n_items] for k in range(0, len(stream), n_items)]


@pytest.mark.parametrize("n_items, block_size, n_blocks", [(10, 4, 7), (12, 4, 3), (3, 8, 5), (1, 2, 3), (5, 5, 1),
                                                           (7, 3, 10)])
def test_plan_blocks(n_items, block_size, n_blocks):
    blocks = plan_blocks(n_items, block_size, n_blocks, np.random.default_rng(0))
    assert len(blocks) == n_blocks
    assert all(len(b) == block_size for b in blocks)
    assert all(isinstance(i, int) and 0 <= i < n_items for b in blocks for i in b)
    for k, chunk in enumerate(passes(blocks, n_items)):
        # each complete pass uses every item exactly once; the last, partial pass has no repeats
        if len(chunk) == n_items:
            assert sorted(chunk) == list(range(n_items)), (k, chunk)
        else:
            assert len(set(chunk)) == len(chunk)
    if block_size <= n_items and n_items % block_size == 0:
        assert all(len(set(b)) == block_size for b in blocks)  # no repeats inside a block then


def test_plan_blocks_small_selection_repeats_within_block():
    blocks = plan_blocks(2, 5, 2, np.random.default_rng(1))
    assert all(len(b) == 5 and set(b) == {0, 1} for b in blocks)


def test_plan_blocks_seeded():
    a = plan_blocks(20, 4, 10, np.random.default_rng(5))
    assert a == plan_blocks(20, 4, 10, np.random.default_rng(5))
    assert a != plan_blocks(20, 4, 10, np.random.default_rng(6))


def test_plan_blocks_empty_selection_raises():
    with pytest.raises(ValueError, match="empty"):
        plan_blocks(0, 4, 2, np.random.default_rng(0))


# ───────────────────────────────────────────────────────────────────────────────── ScheduleSampler


def test_schedule_sampler_hand_layout():
    sampler = ScheduleSampler([[4, 1], [0, 3]], mini_repeat_count=2, repeat_count=3)
    expected = [4, 4, 1, 1] * 3 + [0, 0, 3, 3] * 3
    assert list(sampler) == expected
    assert len(sampler) == len(expected)
    assert list(sampler) == expected  # re-iterable, same order


@pytest.mark.parametrize("mini, batch, repeat, n", [(2, 3, 4, 7), (3, 4, 2, 12), (1, 1, 1, 3), (4, 2, 1, 6)])
def test_schedule_sampler_matches_trl_repeat_sampler(mini, batch, repeat, n):
    """Blocks = RepeatSampler's unshuffled batches ⇒ identical index stream."""
    trl = list(RepeatSampler(list(range(n)), mini_repeat_count=mini, batch_size=batch, repeat_count=repeat,
                             shuffle=False))
    blocks = [list(range(s, s + batch)) for s in range(0, n - batch + 1, batch)]  # full batches only, as TRL
    ours = ScheduleSampler(blocks, mini_repeat_count=mini, repeat_count=repeat)
    assert list(ours) == trl
    assert len(ours) == len(trl)


def test_schedule_sampler_plays_planned_blocks():
    blocks = plan_blocks(5, 3, 4, np.random.default_rng(2))
    sampler = ScheduleSampler(blocks, mini_repeat_count=2, repeat_count=2)
    items = list(sampler)
    assert len(items) == len(sampler) == 4 * 3 * 2 * 2
    expected = []
    for b in blocks:
        for _ in range(2):
            for i in b:
                expected += [i, i]
    assert items == expected
