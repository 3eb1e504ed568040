"""Parallel strategies by name; each one implements pipeline.engine.strategies.base.Strategy.

A layout ("headwise", "layer2.headwise2", ...) is run by the strategy of its outermost level.
"""

from pipeline.engine import partition
from pipeline.engine.strategies.base import Comms, Strategy
from pipeline.engine.strategies.headwise import HeadwiseStrategy
from pipeline.engine.strategies.layer import LayerStrategy
from pipeline.engine.strategies.sequence import SequenceStrategy

STRATEGIES = {s.name: s for s in (HeadwiseStrategy, SequenceStrategy, LayerStrategy)}
ALGORITHMS = ("standard", "online_softmax")
assert tuple(STRATEGIES) == partition.STRATEGIES


def make_strategy(layout: str, comms: Comms, cfg, attend_fn, max_seq: int, *,
                  sequence_layout: str = "zigzag", micro_batch: int | None = None) -> Strategy:
    """The strategy running `layout` on this rank, with the options its levels take."""
    outer = partition.levels(layout, comms.world.size, comms.world.rank)[0].strategy
    options = {}
    if outer == "sequence":
        options["sequence_layout"] = sequence_layout
    if outer == "layer" and micro_batch is not None:
        options["micro_batch"] = micro_batch
    return STRATEGIES[outer](comms, cfg, attend_fn, max_seq, layout=layout, **options)


__all__ = ["ALGORITHMS", "Comms", "HeadwiseStrategy", "LayerStrategy", "STRATEGIES", "SequenceStrategy",
           "Strategy", "make_strategy"]
