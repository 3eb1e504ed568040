"""Qwen3 inference in parallel on CPUs: the MPI engine, the study that measures it, the report.

Subpackages, each importing only those below it (docs/architecture.md draws them):

    pipeline.study     benchmarks, back-to-back comparisons, baselines, ceilings, cost model
        |
    pipeline.engine    the SPMD MPI engine: model, partition, strategies, comm, reference
        |
    ext, model_export  the kernels; the model description and on-disk format (import nothing here)

    pipeline.report    verify and render: reads the JSONs the others write, imports none of them
    pipeline.cells     the cell identity (strategy, algorithm, ranks, prompt length), imports nothing

`python -m pipeline COMMAND` (pipeline/__main__.py) is the one command line; it dispatches to
each module's `main(argv)`.

Importing ext first configures the thread pools (see ext/__init__.py), before numpy loads
OpenBLAS and before libgomp loads: both read their settings once, at load time.
"""

import ext  # noqa: F401  (for its side effect: thread-pool settings in the environment)
