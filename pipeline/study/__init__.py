"""The study: programs that measure the engine and this machine, each writing one JSON.

- bench.py: one cell (strategy x attention algorithm x ranks x prompt length) under mpiexec:
  prefill and decode times, what it computed (tokens, logits digest), the ceilings beside it.
- compare.py, variants.py: variants measured back to back in alternating rounds (float32 against
  bf16, ranks against threads, 1 rank against the ceilings); a variant kind is one function.
- baseline.py: Hugging Face transformers on the same checkpoint and prompt.
- roofline.py: this machine's GEMM and streaming-GEMV ceilings and the model's work per phase.
- commbench.py, costmodel.py: MPI latency and bandwidth, and the alpha-beta model calibrated on
  them and on the 1-rank cells, extrapolated to a cluster.
- cluster.py: an emulated cluster of network namespaces joined by capped links.
- stats.py: the timing statistics and logits digest bench and baseline share.

May import: pipeline.engine, model_export, pipeline.cells. Nothing below imports the study.
"""
