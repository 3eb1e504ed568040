"""pipeline.engine.partition against independent arithmetic: who can run, and who owns what.

A split into contiguous, ordered blocks that tile [0, n), sizes within one and never growing, is
unique, so asserting those properties pins the exact split the engine has always used.
"""

from __future__ import annotations

import random

import pytest

from model_export.config import PRESETS, Qwen3Config
from pipeline.engine import partition

CFG06 = Qwen3Config(**PRESETS["qwen3-0.6b"])
TINY = Qwen3Config(**PRESETS["tiny"])


def random_case(rng: random.Random) -> tuple[Qwen3Config, int, int]:
    """(cfg, P, T): half the time a P that divides Hkv, so that runnable head-wise layouts are common."""
    hkv = rng.choice([1, 2, 3, 4, 6, 8, 12, 16])
    cfg = Qwen3Config(**dict(PRESETS["tiny"], num_key_value_heads=hkv,
                             num_attention_heads=hkv * rng.choice([1, 2, 3, 4]),
                             intermediate_size=rng.choice([1, 2, 3, 4, 8, 12]) * rng.randrange(1, 40),
                             vocab_size=rng.randrange(1, 1000), num_hidden_layers=rng.randrange(1, 5)))
    divisors = [p for p in range(1, hkv + 1) if hkv % p == 0]
    P = rng.choice(divisors) if rng.random() < 0.5 else rng.randrange(1, 20)
    return cfg, P, rng.randrange(0, 40)


CASES = [random_case(random.Random(seed)) for seed in range(300)]


def assert_tiles(blocks: list[range], n: int) -> None:
    """Contiguous, in rank order, covering [0, n) exactly, sizes within one and non-increasing."""
    assert all(b.step == 1 for b in blocks)
    assert [b.start for b in blocks] == [0] + [b.stop for b in blocks[:-1]]
    assert blocks[-1].stop == n
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("n, parts", [(0, 1), (1, 3), (7, 7), (10, 3), (151936, 6), (5, 8)])
def test_block_tiles_balanced(n, parts):
    assert_tiles([partition.block(n, parts, i) for i in range(parts)], n)


def test_why_not_exactly_when_the_split_fails():
    for cfg, P, T in CASES:
        hkv, inter = cfg.num_key_value_heads, cfg.intermediate_size
        headwise, sequence = (partition.why_not(cfg, s, P, T) for s in ("headwise", "sequence"))
        assert (headwise is None) == (hkv % P == 0 and inter % P == 0 and T >= 1), (hkv, inter, P, T)
        assert (sequence is None) == (T >= P), (P, T)
        works = f"use P in {[p for p in range(1, 65) if hkv % p == 0 and inter % p == 0]}"  # all that do
        if hkv % P:
            assert headwise == f"headwise: {P} ranks do not divide num_key_value_heads={hkv}; {works}"
        elif inter % P:
            assert headwise == f"headwise: {P} ranks do not divide intermediate_size={inter}; {works}"
        if 1 <= T < P:
            assert sequence == (f"sequence: the prompt has {T} tokens, fewer than the {P} ranks; "
                                f"every rank needs at least one token (use P <= {T})")


def test_the_real_models_message():
    assert partition.why_not(CFG06, "headwise", 3, 128) == (
        "headwise: 3 ranks do not divide num_key_value_heads=8; use P in [1, 2, 4, 8]")
    assert all(partition.why_not(CFG06, "headwise", p, 128) is None for p in (1, 2, 4, 8))


def test_check_raises_the_reason():
    kv = TINY.num_key_value_heads
    bad = kv + 1  # never divides kv
    with pytest.raises(ValueError, match=rf"{bad} ranks do not divide num_key_value_heads={kv}.*P in \[1, "):
        partition.check(TINY, "headwise", bad, 16)
    with pytest.raises(ValueError, match="fewer than the 4 ranks"):
        partition.check(TINY, "sequence", 4, 3)
    partition.check(TINY, "sequence", 4, 4)  # one token each is enough
    for strategy, P, T, message in [("pipeline", 2, 8, "unknown parallel strategy 'pipeline'"),
                                    ("headwise", 0, 8, "0 ranks"), ("sequence", 1, 0, "the prompt is empty")]:
        assert message in partition.why_not(TINY, strategy, P, T)
        with pytest.raises(ValueError, match=message):
            partition.check(TINY, strategy, P, T)


def test_headwise_shards_tile_heads_features_and_vocab():
    checked = 0
    for cfg, P, _ in CASES:
        if partition.why_not(cfg, "headwise", P, 1):
            with pytest.raises(ValueError, match="headwise: "):
                partition.shard(cfg, "headwise", P, 0)
            continue
        shards = [partition.shard(cfg, "headwise", P, r) for r in range(P)]
        H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        n_rep = H // Hkv
        for field, n in [("kv_heads", Hkv), ("q_heads", H), ("features", cfg.intermediate_size),
                         ("vocab", cfg.vocab_size)]:
            assert_tiles([getattr(s, field) for s in shards], n)
        for r, s in enumerate(shards):
            assert (s.rank, s.nranks, s.layers) == (r, P, range(cfg.num_hidden_layers))
            assert s.kv_heads == range(r * Hkv // P, (r + 1) * Hkv // P)  # even blocks today
            assert len(s.q_heads) == len(s.kv_heads) * n_rep
            for h in s.q_heads:  # GQA: query head h reads KV head h // n_rep, held by the same rank
                assert h // n_rep in s.kv_heads
                assert (h - s.q_heads.start) // n_rep == h // n_rep - s.kv_heads.start  # local index too
        checked += 1
    assert checked > 50  # the random cases reach the runnable layouts often enough


def test_sequence_shards_hold_everything_but_split_the_vocabulary():
    for cfg, P, _ in CASES[:50]:
        shards = [partition.shard(cfg, "sequence", P, r) for r in range(P)]
        assert_tiles([s.vocab for s in shards], cfg.vocab_size)
        for s in shards:
            assert s.kv_heads == range(cfg.num_key_value_heads)
            assert s.q_heads == range(cfg.num_attention_heads)
            assert s.features == range(cfg.intermediate_size) and s.layers == range(cfg.num_hidden_layers)


def test_prompt_chunks_tile_the_prompt():
    for _, P, T in CASES:
        contiguous = [partition.prompt_chunks("sequence", T, P, r, "contiguous") for r in range(P)]
        assert all(len(c) == 1 for c in contiguous)
        assert_tiles([c[0] for c in contiguous], T)
        zigzag = [partition.prompt_chunks("sequence", T, P, r, "zigzag") for r in range(P)]
        # rank r: chunks r and 2P-1-r of the 2P-way split (Megatron's causal balance)
        halves = [z[0] for z in zigzag] + [z[1] for z in reversed(zigzag)]
        assert_tiles(halves, T)
        for layout, chunks in [("contiguous", contiguous), ("zigzag", zigzag)]:
            counts = partition.token_counts("sequence", T, P, layout)
            assert counts == [sum(len(c) for c in ch) for ch in chunks]
            assert sum(counts) == T and max(counts) - min(counts) <= 1
            if T >= P:  # every layout why_not accepts gives every rank a token
                assert min(counts) >= 1
        assert all(partition.prompt_chunks("headwise", T, P, r) == [range(T)] for r in range(P))
        assert partition.token_counts("headwise", T, P) == [T] * P


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown sequence layout 'ring'; choose from"):
        partition.prompt_chunks("sequence", 8, 2, 0, "ring")
    with pytest.raises(ValueError, match="rank 2 out of range for 2 ranks"):
        partition.prompt_chunks("sequence", 8, 2, 2)
    with pytest.raises(ValueError, match="rank -1 out of range"):
        partition.shard(TINY, "headwise", 2, -1)
    with pytest.raises(ValueError, match="unknown parallel strategy 'layer'"):
        partition.shard(TINY, "layer", 2, 0)
