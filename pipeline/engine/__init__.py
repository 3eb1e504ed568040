"""The engine: Qwen3 inference under MPI, one SPMD code path for every rank.

- model.py: `Qwen3Engine`, the forward pass (prefill, KV-cache decode, greedy generation) and
  `check_job`, every reason a job cannot run, raised before any heavy work.
- partition.py: who owns what; whether a layout can run at P ranks with T prompt tokens, and
  which heads, KV heads, MLP features, vocabulary rows and prompt tokens each rank holds.
- strategies/: one class per parallel strategy (base.Strategy is the interface: which weights
  a rank holds, which tokens it computes, how attention and the row-sharded matmuls complete).
- comm.py: the buffer-based collectives, keeping the books (seconds, bytes) per rank.
- launch.py, threads.py, machine.py, prompts.py: threads per rank and up-front validation, the
  thread pools, the facts every measurement records, the benchmark prompt.
- reference.py: the plain NumPy (float64) forward pass every cell is checked against.
- generate.py: `python -m pipeline generate`, greedy generation with any strategy.

May import: ext (kernels), model_export (config, export reader, atomic writes), mpi4py, numpy.
Never imports pipeline.study or pipeline.report: the study measures the engine, not the reverse.
"""
