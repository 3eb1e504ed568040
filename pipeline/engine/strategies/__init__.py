"""Parallel strategies by name; each one implements pipeline.engine.strategies.base.Strategy."""

from pipeline.engine.strategies.headwise import HeadwiseStrategy
from pipeline.engine.strategies.sequence import SequenceStrategy

STRATEGIES = {s.name: s for s in (HeadwiseStrategy, SequenceStrategy)}
ALGORITHMS = ("standard", "online_softmax")

__all__ = ["STRATEGIES", "ALGORITHMS", "HeadwiseStrategy", "SequenceStrategy"]
