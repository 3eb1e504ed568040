"""Parallel strategies by name; each one implements pipeline.strategies.base.Strategy."""

from pipeline.strategies.headwise import HeadwiseStrategy
from pipeline.strategies.sequence import SequenceStrategy

STRATEGIES = {s.name: s for s in (HeadwiseStrategy, SequenceStrategy)}
ALGORITHMS = ("standard", "online_softmax")

__all__ = ["STRATEGIES", "ALGORITHMS", "HeadwiseStrategy", "SequenceStrategy"]
