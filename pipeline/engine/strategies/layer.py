"""Layer (pipeline) parallelism.

The ranks of the layer level are stages: stage s runs a contiguous, balanced block of the layers
(pipeline.engine.partition), caches K/V for those layers only, and holds only their weights, so
per-rank weight memory falls as 1/P. The first stage embeds the tokens; each stage passes its
output activations to the next with a buffer-based Send/Recv. The lm_head stays
vocabulary-parallel over every rank, as in the other layouts: the last stage broadcasts the
final-normed position and each rank multiplies its rows (one 1/P share of the biggest matrix).

Prefill streams the prompt through the stages in micro-batches of tokens, so stage s runs batch m
while stage s+1 runs batch m-1; attention of a batch reads the cached keys of the batches before
it (causal), so the result is exactly the unbatched one. Decode passes one token's activations
along: only one stage computes at a time, the price of holding 1/P of the model.

Inside a two-level layout ("layer2.headwise2") each stage is a group of ranks splitting its layers
head-wise (the base class's `reduce` over `comms.tensor`); every rank of a stage sends its copy of
the activations to the rank at the same place in the next stage.
"""

from __future__ import annotations

from pipeline.engine import partition
from pipeline.engine.strategies.headwise import HeadwiseStrategy

MICRO_BATCH = 32  # prefill tokens per pipeline step: 4 batches at 128 (docs/design-notes.md#layouts)


class LayerStrategy(HeadwiseStrategy):
    name = "layer"

    def __init__(self, comms, cfg, attend_fn, max_seq: int, layout: str = "layer",
                 micro_batch: int = MICRO_BATCH) -> None:
        super().__init__(comms, cfg, attend_fn, max_seq, layout)
        partition.micro_batches(1, micro_batch)  # reject a bad size now
        self.micro_batch = micro_batch
        self.stage, self.stages = comms.stages.rank, comms.stages.size

    @property
    def first_stage(self) -> bool:
        return self.stage == 0

    def batches(self, T: int, prefill: bool) -> list[range]:
        return partition.micro_batches(T, self.micro_batch) if prefill else [range(T)]

    def receive(self, x) -> None:
        if self.stage > 0:
            self.comms.stages.recv(x, self.stage - 1)

    def send(self, x) -> None:
        if self.stage < self.stages - 1:
            self.comms.stages.send(x, self.stage + 1)

    def _last_stage_rank(self) -> int:
        return partition.rank_of(self.layout, self.comm.size, {"layer": self.stages - 1})

    def last_token_owner(self, T: int) -> int:
        return self._last_stage_rank()

    def decode_owner(self) -> int:
        return self._last_stage_rank()
