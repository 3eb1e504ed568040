"""Who owns what: whether a layout can run at P ranks with T prompt tokens, and how the layers,
query heads, KV heads, MLP features, vocabulary rows and prompt tokens split among the ranks.

This module alone decides it. The strategies (pipeline/engine/strategies), the engine's job
check, the Snakefile (`why_not`, at parse time) and the cost model (pipeline/study/costmodel.py)
ask it; the export reader is handed the ranges it computes, so the format knows no strategy.
It reads only the model's config: no MPI, no arrays.

A layout is one strategy over all P ranks ("headwise", "sequence", "layer") or two levels,
"{across}{a}.{inside}{b}" with P = a x b: `across` splits the ranks into a groups of b adjacent
ranks (rank r is in group r // b at place r % b) and `inside` splits each group. "layer2.headwise2"
is tensor parallelism inside each of 2 pipeline stages; "sequence2.headwise2" context parallelism
across 2 groups with tensor parallelism inside each. Adjacent ranks share a group, so with ranks
placed on nodes in blocks the tensor-parallel Allreduces stay inside a node.

    why_not(cfg, layout, P, T) -> None | "headwise: 17 ranks exceed the 16 query heads; ..."
    check(cfg, layout, P, T)      the same reason, raised as ValueError
    levels(layout, P, r)       -> [Level(strategy, size, index, color)]: rank r's place in each level
    shard(cfg, layout, P, r)   -> Shard(layers, kv_heads, q_heads, features, vocab): ranges rank r holds
    prompt_chunks(layout, T, P, r, sequence_layout) -> [range, ...]: prompt positions rank r computes
    token_counts(layout, T, P, sequence_layout)     -> tokens per rank
    micro_batches(T, size)     -> [range, ...]: the token blocks a pipeline streams through its stages

Head-wise takes any P up to the query heads: blocks of whole KV groups (uneven when P does not
divide the KV heads: 8 on 3 ranks are 3/3/2), and when P exceeds the KV heads each KV head is
held by the ranks that split its query heads (replication, as vLLM does past the KV head count).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from model_export.config import Qwen3Config

STRATEGIES = ("headwise", "sequence", "layer")
ACROSS = ("layer", "sequence")  # what a two-level layout may run across its groups
INSIDE = ("headwise",)  # and inside each group
SEQUENCE_LAYOUTS = ("zigzag", "contiguous")  # zigzag: Megatron's causal load balance (see sequence.py)
_LEVEL = re.compile(r"^(?P<strategy>[a-z]+)(?P<size>\d*)$")


@dataclass(frozen=True)
class Shard:
    """What rank `rank` of `nranks` holds: [start, stop) ranges over the model's dimensions.

    GQA holds inside a shard: every query head in `q_heads` reads a KV head in `kv_heads`, with
    the model's ratio when the shard holds whole KV groups, else one (replicated) KV head.
    """

    rank: int
    nranks: int
    layers: range  # decoder layers this rank runs
    kv_heads: range  # KV heads in its K/V projections and KV cache (Hkv_r)
    q_heads: range  # query heads in its q_proj and o_proj (H_r)
    features: range  # MLP intermediate features in its gate/up/down (I_r)
    vocab: range  # rows of the vocabulary-parallel lm_head (V_r)


@dataclass(frozen=True)
class Level:
    """Rank r's place in one level of a layout: `index` of `size` parts of `strategy`.

    Ranks with the same `color` share this level's communicator (MPI Comm.Split), ordered by index.
    """

    strategy: str
    size: int
    index: int
    color: int


def block(n: int, parts: int, index: int) -> range:
    """Block `index` when n items are split into `parts` contiguous blocks, sizes within one."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


def parse(layout: str, nranks: int) -> list[tuple[str, int]]:
    """[(strategy, size), ...] of a layout name at `nranks` ranks; ValueError naming the problem."""
    names = layout.split(".") if isinstance(layout, str) else [str(layout)]
    if not 1 <= len(names) <= 2:
        raise ValueError(f"layout {layout!r}: one strategy or two levels 'across.inside' "
                         "(for example layer2.headwise2)")
    parsed = []
    for name in names:
        m = _LEVEL.match(name)
        if m is None or m["strategy"] not in STRATEGIES:
            raise ValueError(f"unknown parallel strategy {name!r} in layout {layout!r}; "
                             f"choose from {list(STRATEGIES)}")
        parsed.append((m["strategy"], int(m["size"]) if m["size"] else None))
    if len(parsed) == 1:
        (strategy, size), = parsed
        if size is not None and size != nranks:
            raise ValueError(f"layout {layout!r} names {size} ranks but the job has {nranks}")
        return [(strategy, nranks)]
    (across, a), (inside, b) = parsed
    if a is None or b is None:
        raise ValueError(f"layout {layout!r}: a two-level layout gives both sizes, "
                         f"e.g. {across}2.{inside}2")
    if across not in ACROSS or inside not in INSIDE:
        raise ValueError(f"layout {layout!r}: two levels run {'/'.join(ACROSS)} across the groups "
                         f"and {'/'.join(INSIDE)} inside each (for example layer2.headwise2)")
    if a * b != nranks:
        raise ValueError(f"layout {layout!r} needs {a} x {b} = {a * b} ranks, the job has {nranks}")
    return [(across, a), (inside, b)]


def layout_ranks(layout: str) -> int | None:
    """The rank count a layout names ("layer2.headwise2": 4, "headwise4": 4), None if it names none."""
    sizes = [m["size"] for m in map(_LEVEL.match, layout.split(".")) if m is not None]
    if not sizes or not all(sizes):
        return None
    return int(sizes[0]) * (int(sizes[1]) if len(sizes) > 1 else 1)


def levels(layout: str, nranks: int, rank: int) -> list[Level]:
    """Rank `rank`'s place in each level of `layout` (outermost first)."""
    if not 0 <= rank < nranks:
        raise ValueError(f"rank {rank} out of range for {nranks} ranks")
    parsed = parse(layout, nranks)
    if len(parsed) == 1:
        return [Level(parsed[0][0], nranks, rank, 0)]
    (across, a), (inside, b) = parsed
    group, place = divmod(rank, b)
    # across: the a ranks at the same place of every group; inside: the b ranks of one group
    return [Level(across, a, group, place), Level(inside, b, place, group)]


def role(layout: str, nranks: int, rank: int, strategy: str) -> Level | None:
    """Rank `rank`'s level of `strategy` in `layout`, None when the layout has no such level."""
    return next((lv for lv in levels(layout, nranks, rank) if lv.strategy == strategy), None)


def rank_of(layout: str, nranks: int, place: dict[str, int]) -> int:
    """The rank with the given index in each level ({strategy: index}); missing levels take 0."""
    parsed = parse(layout, nranks)
    if len(parsed) == 1:
        return place.get(parsed[0][0], 0)
    (across, _), (inside, b) = parsed
    return place.get(across, 0) * b + place.get(inside, 0)


def why_not(cfg: Qwen3Config, layout: str, nranks: int, prompt_len: int) -> str | None:
    """None when `layout` can run at `nranks` ranks with a `prompt_len`-token prompt, else the
    one-line reason, naming what would work."""
    if nranks < 1:
        return f"{layout}: {nranks} ranks; a job needs at least one"
    try:
        parsed = parse(layout, nranks)
    except ValueError as e:
        return str(e)
    for strategy, size in parsed:
        reason = _level_why_not(cfg, strategy, size)
        if reason is not None:
            return reason
    if prompt_len < 1:
        return "the prompt is empty"
    for strategy, size in parsed:
        if strategy == "sequence" and prompt_len < size:
            return (f"sequence: the prompt has {prompt_len} tokens, fewer than the {size} ranks "
                    f"it splits over; every rank needs at least one token (use P <= {prompt_len})")
    return None


def check(cfg: Qwen3Config, layout: str, nranks: int, prompt_len: int) -> None:
    """Raise ValueError with `why_not`'s reason when the layout cannot run."""
    reason = why_not(cfg, layout, nranks, prompt_len)
    if reason is not None:
        raise ValueError(reason)


def _level_why_not(cfg: Qwen3Config, strategy: str, size: int) -> str | None:
    """Why the weights cannot be split `size` ways by `strategy`, whatever the prompt."""
    H, L, inter = cfg.num_attention_heads, cfg.num_hidden_layers, cfg.intermediate_size
    if strategy == "headwise" and size > H:
        return f"headwise: {size} ranks exceed the {H} query heads; use at most {H}"
    if strategy == "headwise" and size > inter:
        return f"headwise: {size} ranks exceed the {inter} MLP features; use at most {inter}"
    if strategy == "layer" and size > L:
        return f"layer: {size} stages exceed the {L} layers; use at most {L}"
    return None


def head_block(cfg: Qwen3Config, parts: int, index: int) -> tuple[range, range]:
    """(kv_heads, q_heads) of part `index` when the heads split `parts` ways (parts <= query heads).

    Up to one part per KV head: blocks of whole KV groups with their query heads. Beyond that the
    parts are dealt to the KV heads in blocks, and the parts of one KV head split its query heads,
    each holding that KV head (so every part reads exactly one KV head).
    """
    Hkv, rep = cfg.num_key_value_heads, cfg.n_rep
    if parts <= Hkv:
        kv = block(Hkv, parts, index)
        return kv, range(kv.start * rep, kv.stop * rep)
    group = next(g for g in range(Hkv) if index in block(parts, Hkv, g))
    sharers = block(parts, Hkv, group)  # the parts that hold KV head `group`
    queries = block(rep, len(sharers), index - sharers.start)
    return range(group, group + 1), range(group * rep + queries.start, group * rep + queries.stop)


def shard(cfg: Qwen3Config, layout: str, nranks: int, rank: int) -> Shard:
    """The weights rank `rank` of `nranks` holds under `layout` (ValueError if it cannot run)."""
    reason = why_not(cfg, layout, nranks, prompt_len=max(nranks, 1))
    if reason is not None:
        raise ValueError(reason)
    L, H, Hkv = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    layers, kv, q, features = range(L), range(Hkv), range(H), range(cfg.intermediate_size)
    for lv in levels(layout, nranks, rank):
        if lv.strategy == "layer":
            layers = block(L, lv.size, lv.index)
        elif lv.strategy == "headwise":
            kv, q = head_block(cfg, lv.size, lv.index)
            features = block(cfg.intermediate_size, lv.size, lv.index)
    vocab = block(cfg.vocab_size, nranks, rank)  # every layout finishes vocabulary-parallel
    return Shard(rank, nranks, layers, kv, q, features, vocab)


def prompt_chunks(layout: str, prompt_len: int, nranks: int, rank: int,
                  sequence_layout: str = "zigzag") -> list[range]:
    """The prompt positions rank `rank` computes in a prefill, in its local row order.

    Without a sequence level: all of them. Sequence over its a parts: one contiguous block each,
    or (zigzag) chunks i and 2a-1-i of 2a, which balances the causal attention work; a chunk may
    be empty. `sequence_layout` matters only for sequence.
    """
    lv = role(layout, nranks, rank, "sequence")
    if lv is None:
        sequence_chunks(prompt_len, 1, 0, sequence_layout)  # reject an unknown layout all the same
        return [range(prompt_len)]
    return sequence_chunks(prompt_len, lv.size, lv.index, sequence_layout)


def sequence_chunks(prompt_len: int, parts: int, index: int, sequence_layout: str = "zigzag") -> list[range]:
    """The prompt positions of part `index` when a sequence level splits the prompt `parts` ways."""
    if sequence_layout not in SEQUENCE_LAYOUTS:
        raise ValueError(f"unknown sequence layout {sequence_layout!r}; choose from {list(SEQUENCE_LAYOUTS)}")
    if sequence_layout == "contiguous":
        return [block(prompt_len, parts, index)]
    return [block(prompt_len, 2 * parts, index), block(prompt_len, 2 * parts, 2 * parts - 1 - index)]


def token_counts(layout: str, prompt_len: int, nranks: int, sequence_layout: str = "zigzag") -> list[int]:
    """Prompt tokens each rank computes in a prefill, rank by rank."""
    return [sum(len(c) for c in prompt_chunks(layout, prompt_len, nranks, r, sequence_layout))
            for r in range(nranks)]


def micro_batches(prompt_len: int, size: int) -> list[range]:
    """The consecutive token blocks of at most `size` that a pipeline streams through its stages."""
    if size < 1:
        raise ValueError(f"micro-batch of {size} tokens; it needs at least one")
    return [range(s, min(s + size, prompt_len)) for s in range(0, prompt_len, size)]
