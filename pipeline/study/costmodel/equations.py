"""The cost model's equations, as the report's appendix renders them."""

EQUATIONS_MD = r"""
### Cost model

Notation: `L` layers, `d` hidden, `H`/`Hkv` query/KV heads, `D` head_dim, `I` intermediate,
`V` vocab, `P` ranks, `T` prompt tokens, `S` keys in the cache, `b` bytes per weight element
(4 float32, 2 bf16), KV cache float32.

**Work.** Projection weights per layer `M = d·H·D + 2·d·Hkv·D + H·D·d + 3·d·I`.

- matmul FLOPs of `T` tokens: `W_mm(T) = 2·L·M·T + 2·d·V` (lm_head on the last position only)
- attention FLOPs: `W_att = 4·L·H·D·pairs`, with `pairs` the causal (query, key) pairs:
  `pairs(T) = T(T+1)/2` for a prefill, `S` for a decode step over `S` keys
- bytes read: `Q_w = b·(L·M + V·d) + 4·(norms)` (every weight once; the lm_head in full),
  `Q_kv(S) = 2·L·S·Hkv·D·4`

**A rank's time.** `R` ranks share a node of `C` cores and bandwidth `B`; a rank has `c = C/R`
cores (fewer than one if oversubscribed, its threads when the ranks leave cores idle) and the
bandwidth share `B·min(1, c·R/C)/R` (the streaming rate grows with the cores that stream). With
per-core rates `f_mm` (matmuls), `f_att` (attention), `f_dec` (decode GEMVs), FLOP time
`t_f = W_mm,r/(c·f_mm) + W_att,r/(c·f_att)` and memory time `t_m = Q_r/B_r`:

decode `t_rank = max(t_f, t_m) + t_fix + t_comm + t_wait` (the GEMV's FLOPs hide under its stream);
prefill `t_rank = t_f + t_m + t_fix + t_comm + t_wait` (a GEMM reads each weight once and does not
hide that read: measured, the sum puts head-wise, sequence and layer prefill at one rank speed);
`t_wait = w·(busy time)`, the waiting for the slowest rank, a fraction `w` of the rank's busy time
measured in situ (a rank's delays accrue with the work between two collectives).

A phase takes the slowest rank's time. Prefill tok/s = `T / t`, decode tok/s = `1 / t_step`.

**Collectives** (alpha-beta, Thakur-Rabenseifner algorithms), `n` = bytes of the result,
`lg = ceil(log2 P)`: Allreduce `2·lg·α + 2(P-1)/P·n·β`; Allgather(v) `lg·α + (P-1)/P·n·β`;
Bcast `lg·(α + n·β)`. `α, β` are the intra-node values (measured by the ping-pong/Allreduce sweep)
when all ranks share a node, otherwise the network's (config values). A measured cell whose ranks
ran on several hosts (the matrix across the emulated cluster) puts each call whose communicator
spans hosts on that link's calibration and the calls inside a node on shared memory's.

**Per strategy** (what pipeline/engine/strategies does):

| phase | FLOPs per rank (matmul; attention) | bytes per rank | communication |
|---|---|---|---|
| headwise prefill | `W_mm/P`; `W_att/P` | `Q_w/P` | `2L`·AR(`4Td`) + AG(`4V`) |
| headwise decode | `W_mm(1)/P`; `4LHD·S/P` | `(Q_w+Q_kv(S))/P` | `2L`·AR(`4d`) + AG(`4V`) |
| sequence prefill | `2LM·T_r+2dV/P`; `4LHD·pairs_r` | `bLM+bVd/P` | `2L`·AG(`4T·Hkv·D`)+BC(`4d`)+AG(`4V`) |
| sequence decode | `2LM+2dV/P`; `4LHD·S/P` | `bLM + (bVd+Q_kv(S))/P` | `L`·AG(`4P(HD+2H)`) + AG(`4V`) |
| layer prefill, stage s | `2L_s·MT`; `4L_s·HD·pairs` | `bL_s·M` a batch | `(P+m-2)`SEND(`4t_mb·d`)+BC+AG |
| layer decode, stage s | `2L_s·M`; `4L_s·HD·S` | `bL_s·M+Q_kv,s(S)` | `(P-1)`SEND(`4d`)+BC(`4d`)+AG(`4V`) |

SEND = one point-to-point message from a stage to the next. A pipeline's stages run one after
another on each of its `m` micro-batches of `t_mb` tokens (`m = 1` in decode): with `t_s` a
stage's time per batch (its FLOPs over `m`, its weights read once per batch, its fixed cost per
batch), `t = Σ_s t_s + (m-1)·max_s t_s` (the first batch crosses every stage, the slowest paces
the rest), plus the lm_head (`2dV/P` FLOPs, vocabulary-parallel on every rank) after the last.
Two-level layouts compose the levels: `layerA.headwiseB` is the pipeline with each stage's work
split head-wise over `B` ranks and `2·L` Allreduces of a batch's rows on the `B`-rank group;
`sequenceA.headwiseB` is sequence over `A` groups with each rank's heads `H/B` (the exchange
carries those) and `2L` Allreduces inside the group. The cost model's families
`layer.headwise2` and `sequence_zigzag.headwise2` are these at `B = 2` for any even `P`.

AR = Allreduce (after o_proj and down_proj), AG = Allgather(v) (prefill K and V; decode the
(o, m, l) statistics; the logits of the vocabulary-parallel lm_head), BC = Bcast (the last
position's hidden state from the rank that owns it).

`T_r` and `pairs_r` are the tokens and causal pairs of the slowest rank: with contiguous blocks
(the engine's `sequence`) the last rank has `pairs ≈ (T/P)(T - T/2P)`, almost twice the balanced
`T²/2P`; `sequence_zigzag` (zig-zag, as in Megatron's context parallelism) gives rank `r`
chunks `r` and `2P-1-r` of `2P` equal chunks, which balances them.
Under sequence decode every rank reads all layer weights, so `R` ranks on a node need `R` times
the bytes of one: it pays off only across nodes or when attention over a long cache dominates.

**Calibration** on this machine's single-rank cells (per attention algorithm):
`f_mm` (and `f_att`) from prefill: `t·c = W_mm/f_mm + W_att/f_att`, least squares on relative
error over the prompt lengths measured (one length: `f_att = f_mm`, which is exact for that cell);
`B = ΣQ(S_i)/t_decode` over the decode steps; `f_dec` is `f_mm`, raised if needed until no
calibration step is compute bound, so the cell is reproduced; `α, β` from the Allreduce sweep
(`t = 2·lg·α + 2(P-1)/P·n·β` fitted on relative error), per message-size class (below and
above 64 KiB: latency-bound and bandwidth-bound messages follow different lines, most of all over
TCP), from the sweep of the network the cell ran on: shared memory, or the emulated nodes' links.

**Fixed cost.** A forward pays `t_fix = c_step + c_layer·L_r` (Python, kernel launches) whatever
its FLOPs and bytes: measured from the decode of a tiny Qwen3 (hidden 64) at 2 and 28 layers on
one rank (`c_layer` the slope, `c_step` the intercept), added to every rank's prefill and decode
step, and taken out of the calibration cells' times before the rates are fitted. Each collective
also pays `c_call(n)`, the engine's own cost around an MPI call beyond the sweep's back-to-back
calls, per message-size class: least squares over the phases of multi-rank cells that are not held
out (measured transfer minus the sweep's prediction = Σ_class calls · c_call), on each network;
the tiny model's decode (its step at P=2 minus its step at P=1 minus the sweep, per call) when no
such cell was measured. A rank among others on one machine runs at a measured fraction of the
calibration's lone rank (predicted busy over measured compute of those cells, the median over
every network's session), applied to the held-out cells' rates. So
`t_rank = busy(FLOP, memory) + t_fix + Σ_calls (alpha-beta(n) + c_call(n)) + w·busy`.
"""
