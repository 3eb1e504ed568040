"""What one variant of a back-to-back comparison is, and how it is measured: a registry of kinds.

A variant is one thing measured beside others (pipeline.study.compare runs them in turn): an
engine cell (kind "bench": an export, a strategy, an attention algorithm, ranks and threads) or
this machine's ceilings (kind "ceilings"). Each kind is one function, registered with `@kind`:
it runs one program in a subprocess, which writes a JSON, and returns that JSON's rates per
metric and phase, and the greedy tokens where the program produces some. An optional `check`
raises ValueError for a variant that cannot run, before any variant runs. A baseline that is
another program is one more such function: "llamacpp" (llama.cpp on a GGUF file,
pipeline.study.llamacpp) and "torch" (Hugging Face transformers, pipeline.study.baseline). A
baseline's package is optional: its check raises Unavailable (not a ValueError) when the package is
not installed, and the comparison then runs without that variant and says why in its result.

    Variant --KINDS[variant.kind].measure(variant, run, out)--> Measured(rates, tokens, accuracy)

A variant whose settings name a float32 reference (bench: "reference_export" and
"reference_cache"; llama.cpp and torch: "reference", that cache's entry) also returns its
NMSE, KL and top-1 against it (pipeline.study.lowprec), measured after its timing.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from model_export.reader import open_export
from pipeline.engine.model import check_job

PHASES = ("prefill", "decode")
# metric -> the unit of each phase's rate. tokens_per_s: the benchmark definitions' tokens/s;
# roofline: prefill's achieved FLOP rate and decode's streamed bytes, what the ceilings bound.
UNITS = {"tokens_per_s": {"prefill": "tokens/s", "decode": "tokens/s"},
         "roofline": {"prefill": "GFLOP/s", "decode": "GB/s"}}


@dataclass(frozen=True)
class RunSettings:
    """What every variant of one comparison shares: the workload, the launcher, the time limit."""

    prompt_len: int = 128
    gen_len: int = 32
    iters: int = 3
    warmup: int = 1
    mpi: str = "mpiexec"
    timeout: float = 3600  # seconds per program (0: none)


@dataclass(frozen=True)
class Variant:
    name: str  # unique in its comparison; also its round files' stem
    label: str  # what the report calls it
    kind: str  # a key of KINDS
    settings: dict = field(default_factory=dict)  # the kind's own: export, strategy, algo, ranks, threads
    reference: str | None = None  # the variant its rates are divided by (None: it is a reference)


@dataclass(frozen=True)
class Measured:
    rates: dict[str, dict[str, float]]  # metric -> phase -> rate, in UNITS[metric][phase]
    tokens: list[int] | None = None  # greedy tokens, where the program generates
    accuracy: dict | None = None  # lowprec.measures against the float32 reference, where asked for
    build: str | None = None  # what another project's program ran as (its version, ISA, buffers)


ACCURACY_KEYS = ("steps", "nmse", "kl_mean", "kl_max", "top1_agreement")


def accuracy_of(doc: dict) -> dict | None:
    """The measures of a program's JSON against its float32 reference (None: it was not asked)."""
    low = doc.get("low_precision")
    return None if low is None else {k: low[k] for k in ACCURACY_KEYS}


class Kind(NamedTuple):
    measure: Callable[[Variant, RunSettings, Path], Measured]
    check: Callable[[Variant, RunSettings], None]
    metrics: tuple[str, ...]  # the metrics its Measured.rates always holds


KINDS: dict[str, Kind] = {}


def no_check(variant: Variant, run: RunSettings) -> None:
    """The default check: nothing to verify before the run."""


def kind(name: str, *, metrics: tuple[str, ...], check: Callable[[Variant, RunSettings], None] = no_check):
    """Register the decorated function as the `measure` of variant kind `name`."""
    def register(measure: Callable[[Variant, RunSettings, Path], Measured]):
        KINDS[name] = Kind(measure, check, metrics)
        return measure
    return register


class ProgramFailed(RuntimeError):
    """A variant's program failed, timed out or wrote nothing; `why` says how in a few words."""

    def __init__(self, why: str, cmd: list[str], stderr: str = "") -> None:
        super().__init__(f"{why}: {shlex.join(cmd)}" + (f"\n{stderr[-2000:]}" if stderr else ""))
        self.why = why


def exit_words(returncode: int) -> str:
    """How a program ended: "exit status 1", or "killed by SIGILL (illegal instruction)"."""
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        sig = signal.Signals(-returncode)
    except ValueError:
        return f"killed by signal {-returncode}"
    return f"killed by {sig.name} ({signal.strsignal(sig).lower()})"


def run_program(cmd: list[str], out: Path, timeout: float) -> dict:
    """Run `cmd`, which writes the JSON `out`; that JSON. ProgramFailed with the command and its
    stderr's tail when it fails, times out or writes nothing."""
    out.unlink(missing_ok=True)  # a file left by an earlier run must not pass for this run's
    print("[compare] " + shlex.join(cmd), file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or None)
    except subprocess.TimeoutExpired:
        raise ProgramFailed(f"timed out after {timeout:g} s", cmd) from None
    if proc.returncode or not out.is_file():
        why = exit_words(proc.returncode) if proc.returncode else "exit status 0 but no output"
        raise ProgramFailed(f"failed ({why})", cmd, proc.stderr)
    return json.loads(out.read_text())


def check_bench(variant: Variant, run: RunSettings) -> None:
    """The export opens and the engine can run this cell (head-wise splits, context length)."""
    s = variant.settings
    if s["ranks"] < 1 or s["threads"] < 1:
        raise ValueError(f"variant {variant.name}: ranks and threads must be >= 1")
    export = open_export(s["export"])  # CheckpointError (a ValueError) for a missing export
    check_job(export, s["strategy"], s["algo"], s["ranks"], run.prompt_len, run.gen_len)


@kind("bench", metrics=("tokens_per_s", "roofline"), check=check_bench)
def bench(variant: Variant, run: RunSettings, out: Path) -> Measured:
    """`mpiexec -n ranks python -m mpi4py -m pipeline bench ...` on `threads` cores in all."""
    s = variant.settings
    cmd = [*shlex.split(run.mpi), "-n", str(s["ranks"]), sys.executable, "-m", "mpi4py", "-m", "pipeline",
           "bench", "--export", str(s["export"]), "--parallel-strategy", s["strategy"],
           "--attention-algo", s["algo"], "--prompt-len", str(run.prompt_len), "--gen-len", str(run.gen_len),
           "--iters", str(run.iters), "--warmup", str(run.warmup), "--threads", str(s["threads"]),
           "--out", str(out)]
    if s.get("reference_export"):
        cmd += ["--reference-export", str(s["reference_export"]),
                "--reference-cache", str(s["reference_cache"])]
    doc = run_program(cmd, out, run.timeout)
    roofline = doc["roofline"]  # achieved rates from the phase medians (pipeline.study.roofline)
    return Measured({"tokens_per_s": {phase: doc[phase]["tokens_per_s"] for phase in PHASES},
                     "roofline": {"prefill": roofline["prefill_gflops"], "decode": roofline["decode_gb_s"]}},
                    doc["output"]["greedy_tokens"], accuracy_of(doc))


def check_ceilings(variant: Variant, run: RunSettings) -> None:
    if variant.settings["threads"] < 1:
        raise ValueError(f"variant {variant.name}: threads must be >= 1")
    open_export(variant.settings["export"])


@kind("ceilings", metrics=("roofline",), check=check_ceilings)
def ceilings(variant: Variant, run: RunSettings, out: Path) -> Measured:
    """`python -m pipeline ceilings`: GEMM GFLOP/s at the prefill shapes, streaming-GEMV GB/s."""
    s = variant.settings
    cmd = [sys.executable, "-m", "pipeline", "ceilings", "--export", str(s["export"]),
           "--prompt-len", str(run.prompt_len), "--threads", str(s["threads"]), "--out", str(out)]
    doc = run_program(cmd, out, run.timeout)
    return Measured({"roofline": {"prefill": doc["gemm_gflops"], "decode": doc["gemv_gb_s"]}})


class Unavailable(Exception):  # noqa: N818  (a state, not an error: the variant is skipped)
    """A variant whose program cannot run here (its optional package is missing); the message says why."""


# how a baseline's package is installed (README, Install)
INSTALL = {"llama_cpp": "bash envs/llama-cpp.sh", "torch": "pip install -e '.[test]'",
           "transformers": "pip install -e '.[test]'"}


def require(variant: Variant, *modules: str) -> None:
    """Unavailable naming the first of `modules` that is not installed (found without importing it)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise Unavailable(f"{variant.label}: skipped, the Python package {module!r} is not installed "
                              f"({INSTALL[module]})")


def phase_rates(doc: dict) -> Measured:
    """The tokens/s and greedy tokens of a baseline program's JSON (pipeline.study.stats' shape)."""
    if not doc.get("available", True):  # installed but not importable (a library that fails to load)
        raise RuntimeError(f"baseline {doc.get('name')}: not available ({doc.get('reason')})")
    return Measured({"tokens_per_s": {phase: doc[phase]["tokens_per_s"] for phase in PHASES}},
                    doc["output"]["greedy_tokens"], accuracy_of(doc))


def reference_option(settings: dict) -> list[str]:
    """A baseline's --reference, where its settings name the float32 run to be measured against."""
    return ["--reference", str(settings["reference"])] if settings.get("reference") else []


def check_llamacpp(variant: Variant, run: RunSettings) -> None:
    s = variant.settings
    if s["threads"] < 1:
        raise ValueError(f"variant {variant.name}: threads must be >= 1")
    if not Path(s["gguf"]).is_file():
        raise ValueError(f"variant {variant.name}: GGUF file {s['gguf']} not found (python -m pipeline gguf)")
    require(variant, "llama_cpp")


@kind("llamacpp", metrics=("tokens_per_s",), check=check_llamacpp)
def llamacpp(variant: Variant, run: RunSettings, out: Path) -> Measured:
    """`python -m pipeline llamacpp`: llama.cpp on the GGUF file, the same prompt ids and lengths."""
    s = variant.settings
    cmd = [sys.executable, "-m", "pipeline", "llamacpp", "--gguf", str(s["gguf"]),
           "--prompt-len", str(run.prompt_len), "--gen-len", str(run.gen_len), "--iters", str(run.iters),
           "--warmup", str(run.warmup), "--threads", str(s["threads"]), *reference_option(s),
           "--out", str(out)]
    doc = run_program(cmd, out, run.timeout)
    return replace(phase_rates(doc), build=llamacpp_build(doc.get("environment") or {}))


# llama.cpp's features that decide its speed here (its system info lists SSE3 and the like too)
LLAMACPP_ISA = ("AVX2", "AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8", "REPACK")
BUFFER_LINE = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+ MiB)")


def llamacpp_build(env: dict) -> str:
    """What llama.cpp ran as, from its JSON's environment: "llama-cpp-python 0.3.36, ggml-cpu with
    AVX2 AVX512 AMX_INT8, weights in AMX (674.95 MiB), CPU_Mapped (604.15 MiB)"."""
    info = env.get("system_info") or ""
    built = [f for f in LLAMACPP_ISA if re.search(rf"\b{f} = 1\b", info)]
    buffers = [f"{m[1]} ({m[2]})" for line in env.get("log") or [] if (m := BUFFER_LINE.search(line))]
    return ", ".join([f"llama-cpp-python {env.get('llama_cpp_python') or '?'}",
                      f"ggml-cpu with {' '.join(built) or 'none of ' + ' '.join(LLAMACPP_ISA)}",
                      *([f"weights in {', '.join(buffers)}"] if buffers else [])])


def check_torch(variant: Variant, run: RunSettings) -> None:
    s = variant.settings
    if s["threads"] < 1:
        raise ValueError(f"variant {variant.name}: threads must be >= 1")
    if not (Path(s["checkpoint"]) / "config.json").is_file():
        raise ValueError(f"variant {variant.name}: {s['checkpoint']} is not a checkpoint (no config.json)")
    require(variant, "torch", "transformers")


@kind("torch", metrics=("tokens_per_s",), check=check_torch)
def torch_baseline(variant: Variant, run: RunSettings, out: Path) -> Measured:
    """`python -m pipeline baseline`: Hugging Face transformers in settings["dtype"] on the checkpoint."""
    s = variant.settings
    cmd = [sys.executable, "-m", "pipeline", "baseline", "--checkpoint", str(s["checkpoint"]),
           "--dtype", s["dtype"], "--prompt-len", str(run.prompt_len), "--gen-len", str(run.gen_len),
           "--iters", str(run.iters), "--warmup", str(run.warmup), "--threads", str(s["threads"]),
           *reference_option(s), "--out", str(out)]
    return phase_rates(run_program(cmd, out, run.timeout))


def check_variant(variant: Variant, run: RunSettings, metric: str) -> None:
    """ValueError when `variant` cannot be measured in `metric`, Unavailable when its package is
    missing; before anything runs."""
    if variant.kind not in KINDS:
        raise ValueError(f"variant {variant.name}: unknown kind {variant.kind!r} (known: {', '.join(KINDS)})")
    found = KINDS[variant.kind]
    if metric not in found.metrics:
        raise ValueError(f"variant {variant.name}: kind {variant.kind} does not measure {metric}")
    found.check(variant, run)


def measure(variant: Variant, run: RunSettings, out: Path) -> Measured:
    return KINDS[variant.kind].measure(variant, run, out)
