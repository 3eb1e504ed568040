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
    """(cfg, P, T): half the time a P up to the query heads, so that runnable layouts are common."""
    hkv = rng.choice([1, 2, 3, 4, 6, 8, 12, 16])
    cfg = Qwen3Config(**dict(PRESETS["tiny"], num_key_value_heads=hkv,
                             num_attention_heads=hkv * rng.choice([1, 2, 3, 4]),
                             intermediate_size=rng.choice([1, 2, 3, 4, 8, 12]) * rng.randrange(1, 40),
                             vocab_size=rng.randrange(1, 1000), num_hidden_layers=rng.randrange(1, 5)))
    P = rng.randrange(1, cfg.num_attention_heads + 1) if rng.random() < 0.5 else rng.randrange(1, 20)
    return cfg, P, rng.randrange(0, 40)


CASES = [random_case(random.Random(seed)) for seed in range(300)]


def assert_covers(blocks: list[range], n: int) -> None:
    """Contiguous, in rank order, covering [0, n) exactly."""
    assert all(b.step == 1 for b in blocks)
    assert [b.start for b in blocks] == [0] + [b.stop for b in blocks[:-1]]
    assert blocks[-1].stop == n


def assert_tiles(blocks: list[range], n: int) -> None:
    """Covering [0, n) in rank order, sizes within one and non-increasing."""
    assert_covers(blocks, n)
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("n, parts", [(0, 1), (1, 3), (7, 7), (10, 3), (151936, 6), (5, 8)])
def test_block_tiles_balanced(n, parts):
    assert_tiles([partition.block(n, parts, i) for i in range(parts)], n)


def test_why_not_exactly_when_the_split_fails():
    for cfg, P, T in CASES:
        H, L = cfg.num_attention_heads, cfg.num_hidden_layers
        headwise, sequence, layer = (partition.why_not(cfg, s, P, T) for s in partition.STRATEGIES)
        assert (headwise is None) == (P <= H and P <= cfg.intermediate_size and T >= 1), (H, P, T)
        assert (sequence is None) == (T >= P), (P, T)
        assert (layer is None) == (P <= L and T >= 1), (L, P, T)
        if P > H:
            assert headwise == f"headwise: {P} ranks exceed the {H} query heads; use at most {H}"
        if P > L:
            assert layer == f"layer: {P} stages exceed the {L} layers; use at most {L}"
        if 1 <= T < P:
            assert sequence == (f"sequence: the prompt has {T} tokens, fewer than the {P} ranks it "
                                f"splits over; every rank needs at least one token (use P <= {T})")


def test_the_real_models_rank_counts():
    # Qwen3-0.6B: 16 query heads, 8 KV heads, 28 layers
    assert all(partition.why_not(CFG06, "headwise", p, 128) is None for p in range(1, 17))
    assert partition.why_not(CFG06, "headwise", 17, 128) == (
        "headwise: 17 ranks exceed the 16 query heads; use at most 16")
    assert all(partition.why_not(CFG06, "layer", p, 128) is None for p in range(1, 29))
    assert partition.why_not(CFG06, "layer", 29, 128) == (
        "layer: 29 stages exceed the 28 layers; use at most 28")
    assert [len(partition.shard(CFG06, "headwise", 3, r).kv_heads) for r in range(3)] == [3, 3, 2]


def test_check_raises_the_reason():
    with pytest.raises(ValueError, match="fewer than the 4 ranks"):
        partition.check(TINY, "sequence", 4, 3)
    partition.check(TINY, "sequence", 4, 4)  # one token each is enough
    for layout, P, T, message in [
            ("pipeline", 2, 8, "unknown parallel strategy 'pipeline'"), ("headwise", 0, 8, "0 ranks"),
            ("sequence", 1, 0, "the prompt is empty"), ("layer2.headwise2", 3, 8, "needs 2 x 2 = 4 ranks"),
            ("headwise2.layer2", 4, 8, "two levels run layer/sequence across"),
            ("layer.headwise", 4, 8, "gives both sizes"),
            ("headwise3", 2, 8, "names 3 ranks but the job has 2"),
            ("layer2.headwise2.sequence2", 8, 8, "one strategy or two levels"),
            ("sequence2.headwise2", 4, 1, "fewer than the 2 ranks")]:
        assert message in partition.why_not(TINY, layout, P, T)
        with pytest.raises(ValueError, match=message):
            partition.check(TINY, layout, P, T)


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
        # query heads follow their KV heads, so they tile without being balanced within one
        assert_covers([s.q_heads for s in shards], H)
        for field, n in [("features", cfg.intermediate_size), ("vocab", cfg.vocab_size)]:
            assert_tiles([getattr(s, field) for s in shards], n)
        if P <= Hkv:  # whole KV groups: the KV heads tile too
            assert_tiles([s.kv_heads for s in shards], Hkv)
        else:  # every KV head held by at least one rank, each rank one head
            assert all(len(s.kv_heads) == 1 for s in shards)
            assert sorted({s.kv_heads.start for s in shards}) == list(range(Hkv))
        for r, s in enumerate(shards):
            assert (s.rank, s.nranks, s.layers) == (r, P, range(cfg.num_hidden_layers))
            assert len(s.q_heads) >= 1
            # GQA inside the shard: local query head i reads local KV head i // (H_r / Hkv_r)
            assert len(s.q_heads) % len(s.kv_heads) == 0
            local_rep = len(s.q_heads) // len(s.kv_heads)
            for i, h in enumerate(s.q_heads):
                assert h // n_rep == s.kv_heads.start + i // local_rep
        checked += 1
    assert checked > 50  # the random cases reach the runnable layouts often enough


def test_layer_shards_tile_the_layers_and_hold_every_head():
    for cfg, P, _ in CASES:
        if partition.why_not(cfg, "layer", P, 1):
            continue
        shards = [partition.shard(cfg, "layer", P, r) for r in range(P)]
        assert_tiles([s.layers for s in shards], cfg.num_hidden_layers)
        assert_tiles([s.vocab for s in shards], cfg.vocab_size)
        assert all(s.q_heads == range(cfg.num_attention_heads) and s.features == range(cfg.intermediate_size)
                   for s in shards)


@pytest.mark.parametrize("across", ["layer", "sequence"])
def test_two_level_shards_compose_the_levels(across):
    cfg = Qwen3Config(**dict(PRESETS["tiny"], num_hidden_layers=6, num_attention_heads=8,
                             num_key_value_heads=4, intermediate_size=96))
    a, b = 3, 2
    layout = f"{across}{a}.headwise{b}"
    for r in range(a * b):
        group, place = divmod(r, b)  # adjacent ranks share a group
        s = partition.shard(cfg, layout, a * b, r)
        inside = partition.shard(cfg, "headwise", b, place)
        assert (s.kv_heads, s.q_heads, s.features) == (inside.kv_heads, inside.q_heads, inside.features)
        assert s.vocab == partition.block(cfg.vocab_size, a * b, r)
        if across == "layer":
            assert s.layers == partition.shard(cfg, "layer", a, group).layers
        else:
            assert s.layers == range(6)
            assert (partition.prompt_chunks(layout, 20, a * b, r)
                    == partition.prompt_chunks("sequence", 20, a, group))
        levels = partition.levels(layout, a * b, r)
        assert [(lv.strategy, lv.size, lv.index, lv.color) for lv in levels] == [
            (across, a, group, place), ("headwise", b, place, group)]
        assert partition.rank_of(layout, a * b, {across: group, "headwise": place}) == r


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
    with pytest.raises(ValueError, match="unknown parallel strategy 'ring'"):
        partition.shard(TINY, "ring", 2, 0)
    with pytest.raises(ValueError, match="micro-batch of 0 tokens"):
        partition.micro_batches(8, 0)
    assert partition.micro_batches(11, 4) == [range(0, 4), range(4, 8), range(8, 11)]
