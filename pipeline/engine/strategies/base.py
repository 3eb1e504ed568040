"""The interface every parallel strategy implements; the model calls nothing else.

A strategy decides which weights and layers a rank holds, which tokens it computes, and how
attention, the row-sharded matmuls and the stages are completed across ranks (its messages).
A two-level layout ("layer2.headwise2") is run by the strategy of its outer level, handed one
communicator per level (`Comms`): head-wise's Allreduces go to `tensor`, sequence's K/V exchange
to `sequence`, the pipeline's Send/Recv to `stages`; a layout without a level gets a one-rank
communicator there, on which every call is a no-op.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from model_export.config import Qwen3Config
from model_export.reader import Export, LayerWeights
from pipeline.engine import partition
from pipeline.engine.comm import Comm


@dataclass
class Comms:
    world: Comm  # every rank: the logits' broadcast and gather
    tensor: Comm  # the ranks of this rank's head-wise level (o_proj and down_proj Allreduce)
    sequence: Comm  # the ranks of its sequence level (K/V exchange, decode merge)
    stages: Comm  # the ranks of its layer level, in stage order (activations Send/Recv)

    @classmethod
    def of_layout(cls, world: Comm, layout: str) -> Comms:
        """One communicator per level of `layout` (collective: every rank calls it alike)."""
        levels = partition.levels(layout, world.size, world.rank)
        by_strategy = {}
        for lv in levels:
            by_strategy[lv.strategy] = world if len(levels) == 1 else world.split(lv.color, lv.index)
        single = Comm(MPI.COMM_SELF, clock_offset=0.0)
        return cls(world, *(by_strategy.get(s, single) for s in ("headwise", "sequence", "layer")))


class Strategy(ABC):
    name: str = ""

    def __init__(self, comms: Comms, cfg: Qwen3Config, attend_fn, max_seq: int, layout: str) -> None:
        self.comms, self.comm, self.cfg, self.max_seq = comms, comms.world, cfg, max_seq
        self.layout = layout
        self.attend_fn = attend_fn  # attention kernel with the algorithm already chosen
        P, rank = self.comm.size, self.comm.rank
        self.shard = partition.shard(cfg, layout, P, rank)  # what this rank holds
        self.layers = self.shard.layers  # the decoder layers it runs
        self.vocab_rows = slice(self.shard.vocab.start, self.shard.vocab.stop)  # its lm_head rows
        vocab = [partition.shard(cfg, layout, P, r).vocab for r in range(P)]
        self.vocab_counts = np.array([len(b) for b in vocab], dtype=np.int64)
        self.vocab_displs = np.array([b.start for b in vocab], dtype=np.int64)

    def layer_weights(self, export: Export, i: int) -> LayerWeights:
        """The weights of layer i this rank multiplies with (zero-copy views of the export)."""
        s = self.shard
        return export.layer(i, q_heads=s.q_heads, kv_heads=s.kv_heads, features=s.features)

    @property
    def first_stage(self) -> bool:
        """Whether this rank embeds the tokens (every rank but those of later pipeline stages)."""
        return True

    def batches(self, T: int, prefill: bool) -> list[range]:
        """The row blocks of a forward pass over T local rows, run through the layers in turn."""
        return [range(T)]

    def receive(self, x: np.ndarray) -> None:  # noqa: B027 (a hook: only pipeline stages receive)
        """Fill x with the previous stage's output (a no-op without pipeline stages)."""

    def send(self, x: np.ndarray) -> None:  # noqa: B027 (a hook: only pipeline stages send)
        """Hand x to the next stage (a no-op without pipeline stages)."""

    def reduce(self, partial: np.ndarray) -> None:
        """Complete the output of a row-sharded matmul (o_proj, down_proj) in place."""
        self.comms.tensor.allreduce_sum(partial)

    @property
    def positional_cache(self) -> bool:
        """Whether decode attention is local: this rank's k_cache/v_cache (L_r, S, Hkv_r, D) hold
        position p at row p and the new token's attention needs nothing from other ranks. Then
        the engine may run a decode step's layers in one compiled call (ext.decode.DecodeStack),
        which writes the cache rows itself."""
        return False

    def decode_owner(self) -> int | None:
        """Rank whose decode output is the new token's final activations; None when all ranks'."""
        return None

    @abstractmethod
    def plan_prefill(self, T: int) -> np.ndarray:
        """Prepare a prefill of T prompt tokens; returns the positions this rank computes (int64)."""

    @abstractmethod
    def attend(self, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray,
               pos: int, prefill: bool) -> None:
        """Store this rank's new k/v (T, Hkv_r, D) in its cache and write attention of q into out.

        q (T, H_r, D) holds this rank's queries after RoPE: in prefill, those of the rows being
        run (pos is the first one's position); in decode, the one token at position pos.
        """

    @abstractmethod
    def last_token_owner(self, T: int) -> int | None:
        """Rank whose prefill output includes the last prompt position; None when all ranks'."""

    @abstractmethod
    def reset(self) -> None:
        """Empty the KV cache."""
