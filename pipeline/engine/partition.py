"""Who owns what: whether a layout can run at P ranks with T prompt tokens, and how the query
heads, KV heads, MLP features, vocabulary rows and prompt tokens split among the ranks.

This module alone decides it. The strategies (pipeline/engine/strategies), the engine's job
check, the Snakefile (`why_not`, at parse time) and the cost model (pipeline/study/costmodel.py)
ask it; the export reader is handed the ranges it computes, so the format knows no strategy.
It reads only the model's config: no MPI, no arrays.

    why_not(cfg, strategy, P, T) -> None | "headwise: 3 ranks do not divide num_key_value_heads=8; ..."
    check(cfg, strategy, P, T)      the same reason, raised as ValueError
    shard(cfg, strategy, P, r)   -> Shard(layers, kv_heads, q_heads, features, vocab): ranges rank r holds
    prompt_chunks(strategy, T, P, r, sequence_layout) -> [range, ...]: prompt positions rank r computes
    token_counts(strategy, T, P, sequence_layout)     -> tokens per rank

Callers use the lengths of the ranges, never `n // P`, so that the next layouts need no change
outside this module (and the engine work they need): head-wise with uneven KV-group blocks when
P does not divide Hkv, KV-head replication when P > Hkv (a rank's `kv_heads` is then one head
that other ranks hold too, its `q_heads` a part of that head's queries), a `layer` strategy
(`Shard.layers` a block of layers), and two-level names such as "layer2.headwise2" (a `Shard` per
level composed; `why_not` asks each level). Today a layout is one strategy over all P ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_export.config import Qwen3Config

STRATEGIES = ("headwise", "sequence")
SEQUENCE_LAYOUTS = ("zigzag", "contiguous")  # zigzag: Megatron's causal load balance (see sequence.py)


@dataclass(frozen=True)
class Shard:
    """What rank `rank` of `nranks` holds: [start, stop) ranges over the model's dimensions.

    GQA holds inside a shard: query head h reads KV head h // (H / Hkv), and both are in it.
    """

    rank: int
    nranks: int
    layers: range  # decoder layers this rank runs
    kv_heads: range  # KV heads (GQA groups) in its K/V projections and KV cache (Hkv_r)
    q_heads: range  # query heads in its q_proj and o_proj (H_r)
    features: range  # MLP intermediate features in its gate/up/down (I_r)
    vocab: range  # rows of the vocabulary-parallel lm_head (V_r)


def block(n: int, parts: int, index: int) -> range:
    """Block `index` when n items are split into `parts` contiguous blocks, sizes within one."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


def why_not(cfg: Qwen3Config, strategy: str, nranks: int, prompt_len: int) -> str | None:
    """None when `strategy` can run at `nranks` ranks with a `prompt_len`-token prompt, else the
    one-line reason, naming what would work."""
    reason = _weights_why_not(cfg, strategy, nranks)
    if reason is not None:
        return reason
    if prompt_len < 1:
        return "the prompt is empty"
    if strategy == "sequence" and prompt_len < nranks:
        return (f"sequence: the prompt has {prompt_len} tokens, fewer than the {nranks} ranks; "
                f"every rank needs at least one token (use P <= {prompt_len})")
    return None


def check(cfg: Qwen3Config, strategy: str, nranks: int, prompt_len: int) -> None:
    """Raise ValueError with `why_not`'s reason when the layout cannot run."""
    reason = why_not(cfg, strategy, nranks, prompt_len)
    if reason is not None:
        raise ValueError(reason)


def headwise_rank_counts(cfg: Qwen3Config) -> list[int]:
    """The P head-wise runs at: P divides both num_key_value_heads and intermediate_size."""
    hkv, inter = cfg.num_key_value_heads, cfg.intermediate_size
    return [p for p in range(1, hkv + 1) if hkv % p == 0 and inter % p == 0]


def _weights_why_not(cfg: Qwen3Config, strategy: str, nranks: int) -> str | None:
    """Why the weights cannot be split for `strategy` over `nranks` ranks, whatever the prompt."""
    if strategy not in STRATEGIES:
        return f"unknown parallel strategy {strategy!r}; choose from {list(STRATEGIES)}"
    if nranks < 1:
        return f"{strategy}: {nranks} ranks; a job needs at least one"
    if strategy != "headwise":
        return None
    # Even blocks of whole KV groups (with their query heads) and of MLP features: the engine's
    # buffers and the Allreduces assume every rank holds the same count (uneven blocks: next issue).
    for field in ("num_key_value_heads", "intermediate_size"):
        if getattr(cfg, field) % nranks:
            return (f"headwise: {nranks} ranks do not divide {field}={getattr(cfg, field)}; "
                    f"use P in {headwise_rank_counts(cfg)}")
    return None


def shard(cfg: Qwen3Config, strategy: str, nranks: int, rank: int) -> Shard:
    """The weights rank `rank` of `nranks` holds under `strategy` (ValueError if it cannot run)."""
    reason = _weights_why_not(cfg, strategy, nranks)
    if reason is not None:
        raise ValueError(reason)
    if not 0 <= rank < nranks:
        raise ValueError(f"rank {rank} out of range for {nranks} ranks")
    L, H, Hkv = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    vocab = block(cfg.vocab_size, nranks, rank)  # every strategy finishes vocabulary-parallel
    if strategy == "headwise":
        kv = block(Hkv, nranks, rank)
        q = range(kv.start * cfg.n_rep, kv.stop * cfg.n_rep)  # the query heads of those KV groups
        return Shard(rank, nranks, range(L), kv, q, block(cfg.intermediate_size, nranks, rank), vocab)
    return Shard(rank, nranks, range(L), range(Hkv), range(H), range(cfg.intermediate_size), vocab)


def prompt_chunks(strategy: str, prompt_len: int, nranks: int, rank: int,
                  sequence_layout: str = "zigzag") -> list[range]:
    """The prompt positions rank `rank` computes in a prefill, in its local row order.

    Head-wise: every rank all of them. Sequence: one contiguous block each, or (zigzag) chunks
    r and 2P-1-r of 2P, which balances the causal attention work; a chunk may be empty.
    `sequence_layout` matters only for sequence.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown parallel strategy {strategy!r}; choose from {list(STRATEGIES)}")
    if sequence_layout not in SEQUENCE_LAYOUTS:
        raise ValueError(f"unknown sequence layout {sequence_layout!r}; choose from {list(SEQUENCE_LAYOUTS)}")
    if not 0 <= rank < nranks:
        raise ValueError(f"rank {rank} out of range for {nranks} ranks")
    if strategy == "headwise":
        return [range(prompt_len)]
    if sequence_layout == "contiguous":
        return [block(prompt_len, nranks, rank)]
    return [block(prompt_len, 2 * nranks, rank), block(prompt_len, 2 * nranks, 2 * nranks - 1 - rank)]


def token_counts(strategy: str, prompt_len: int, nranks: int, sequence_layout: str = "zigzag") -> list[int]:
    """Prompt tokens each rank computes in a prefill, rank by rank."""
    return [sum(len(c) for c in prompt_chunks(strategy, prompt_len, nranks, r, sequence_layout))
            for r in range(nranks)]
