"""One command for every step: python -m pipeline COMMAND [options] (also: qwen3-parallel COMMAND).

Under MPI: mpiexec -n P python -m mpi4py -m pipeline bench ... (mpi4py's runner aborts the whole
job when any rank raises). `python -m pipeline COMMAND --help` prints the options of a command.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module whose main(argv) runs it, one line of what it does)
COMMANDS = {
    "synthetic": ("model_export.synthetic", "write a synthetic Qwen3 checkpoint (seeded random weights)"),
    "export": ("model_export.__main__", "export a Qwen3 checkpoint into per-layer subgraph files"),
    "gguf": ("model_export.gguf", "a Qwen3 checkpoint as a GGUF file for llama.cpp (f32, bf16, q8_0)"),
    "generate": ("pipeline.engine.generate", "greedy generation under mpiexec with any strategy"),
    "bench": ("pipeline.study.bench", "benchmark one cell (prefill + decode) under mpiexec"),
    "compare": ("pipeline.study.compare", "two or more variants back to back, in alternating rounds"),
    "baseline": ("pipeline.study.baseline", "Hugging Face transformers on the same checkpoint"),
    "llamacpp": ("pipeline.study.llamacpp", "llama.cpp (llama-cpp-python) on a GGUF file of the checkpoint"),
    "commbench": ("pipeline.study.commbench", "MPI ping-pong and Allreduce sweep (latency, bandwidth)"),
    "costmodel": ("pipeline.study.costmodel", "the alpha-beta cost model: calibrate, predict"),
    "launch": ("pipeline.engine.binding", "mpiexec with ranks and their threads bound to cores"),
    "netcal": ("pipeline.study.netcal", "the MPI sweep and held-out cells, shared memory or emulated nodes"),
    "cluster": ("pipeline.study.cluster", "an emulated cluster: nodes as network namespaces, capped links"),
    "ceilings": ("pipeline.study.roofline", "this machine's GEMM and streaming ceilings"),
    "verify": ("pipeline.report.verify", "every cell against the single-rank reference"),
    "report": ("pipeline.report.cli", "the report, summary.json/csv and figures from the JSONs"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "usage: python -m pipeline COMMAND [options]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"python -m pipeline {name}", *rest]  # argparse's prog in usage and errors
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
