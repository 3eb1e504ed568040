"""Variants measured back to back, in alternating rounds: one tool for every such comparison.

    python -m pipeline compare dtype --export F32_DIR BF16_DIR --ranks 1 2 --threads 2 \
        --prompt-len 128 --gen-len 32 --iters 3 --warmup 1 --rounds 3 --out results/compare/dtype.json
    python -m pipeline compare ranks --export F32_DIR [BF16_DIR INT8_DIR] --threads 2 \
        --algos online_softmax ... --out results/compare/ranks.json
    python -m pipeline compare ceilings --export F32_DIR [BF16_DIR INT8_DIR] --threads 2 ... \
        --out results/compare/ceilings.json
    python -m pipeline compare baselines --export F32_DIR BF16_DIR INT8_DIR --checkpoint CKPT \
        --baselines llamacpp torch --gguf f32=F32.gguf bf16=BF16.gguf q8_0=Q8.gguf --threads 2 ... \
        [--reference-cache results/work/reference-runs] --out results/compare/baselines.json

On a shared machine two things measured minutes apart differ by the load in between; measured
one right after the other they see the same load, so their ratio holds. A named comparison
(COMPARISONS) is a question and its variants (pipeline.study.variants: an engine cell, the
ceilings, later other programs); each variant's rates are divided by those of its reference.
Every round runs each variant once, as a subprocess, in the order of the round before reversed
(ABBA), so a steady drift in the machine's speed favours none; a ratio is taken within each round,
between runs adjacent in time, and the figure is the median over the rounds. Each run's own JSON
is kept in `<out without .json>/{variant}_r{round}.json`; files there from other runs are removed.
The result, one JSON shape for every comparison, is written atomically to --out.

With --reference-cache (baselines), every variant, ours and theirs, is also measured against one
float32 run of our engine on the float32 export (NMSE, KL and top-1, pipeline.study.lowprec):
before the rounds, `pipeline generate` makes it unless the cache holds it already, as the
refcache entry our bf16 and int8 cells read, and each variant's accuracy is the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from model_export.atomic import write_json_atomic
from model_export.reader import open_export
from pipeline.cells import MANIFEST_DTYPES
from pipeline.engine.launch import threads_per_rank
from pipeline.engine.machine import machine_facts
from pipeline.engine.prompts import random_prompt
from pipeline.engine.strategies import ALGORITHMS
from pipeline.study import refcache
from pipeline.study.lowprec import MIN_STEPS
from pipeline.study.variants import (
    PHASES,
    UNITS,
    Measured,
    RunSettings,
    Unavailable,
    Variant,
    check_variant,
    measure,
)

SCHEMA_VERSION = 1
STRATEGY = "headwise"  # the strategy every comparison's engine cells run (on 1 rank all run alike)
DTYPE_ALGO = "online_softmax"  # the dtype comparison's attention (the weights' bytes are the question)


@dataclass(frozen=True)
class Plan:
    question: str  # one line: what the comparison answers
    metric: str  # a key of variants.UNITS: what the rates measure
    variants: list[Variant]
    skipped: list[str] = field(default_factory=list)  # one line per variant left out (Unavailable)
    reference: Reference | None = None  # the float32 run every variant is also measured against


@dataclass(frozen=True)
class Reference:
    """A float32 run of our engine: the refcache entry `path`, made from `export` on `prompt`."""

    export: str
    path: Path
    prompt: list[int]
    steps: int


COMPARISONS: dict[str, Callable[[argparse.Namespace], Plan]] = {}


def comparison(name: str):
    """Register the decorated function (args -> Plan; ValueError for bad input) as comparison `name`."""
    def register(plan: Callable[[argparse.Namespace], Plan]):
        COMPARISONS[name] = plan
        return plan
    return register


def layout(nranks: int, threads: int) -> str:
    """ "2 ranks x 1 thread": a job of `threads` cores in all on `nranks` ranks."""
    t = threads_per_rank(threads, nranks)
    return f"{nranks} rank{'s' * (nranks > 1)} x {t} thread{'s' * (t > 1)}"


def engine_cell(name: str, label: str, export: str, algo: str, nranks: int, threads: int,
                reference: str | None = None) -> Variant:
    settings = {"export": export, "strategy": STRATEGY, "algo": algo, "ranks": nranks, "threads": threads}
    return Variant(name, label, "bench", settings, reference)


def dtypes_of(exports: list[str], least: int = 2, name: str = "dtype") -> list[tuple[str, str]]:
    """[(dtype, export)] of exports of one model in distinct dtypes (manifest names: float32,
    bfloat16, int8), in the order given; comparison `name` takes at least `least` of them."""
    found, models = [], set()
    for path in exports:
        export = open_export(path)  # CheckpointError (a ValueError) for a missing or malformed export
        if export.dtype_name in (d for d, _ in found):
            first = dict(found)[export.dtype_name]
            raise ValueError(f"two exports hold {export.dtype_name}: {first}, {path}")
        found.append((export.dtype_name, path))
        models.add(json.dumps(export.cfg.to_dict(), sort_keys=True))
    if len(found) < least or len(models) > 1:
        count = "two" if least > 1 else "one"
        raise ValueError(f"comparison {name} takes {count} or more exports of one model, got {exports}")
    return found


@comparison("dtype")
def dtype_plan(args: argparse.Namespace) -> Plan:
    """The first export's dtype against each other's, at each rank count on the same cores."""
    (ref_dtype, ref_export), *others = dtypes_of(args.export)
    variants = []
    for p in args.ranks:
        where = layout(p, args.threads)
        ref = engine_cell(f"{ref_dtype}_np{p}", f"{ref_dtype}, {where}", ref_export, DTYPE_ALGO, p,
                          args.threads)
        variants.append(ref)
        variants += [engine_cell(f"{dtype}_np{p}", f"{dtype}, {where}", export, DTYPE_ALGO, p, args.threads,
                                 reference=ref.name) for dtype, export in others]
    names = ", ".join(d for d, _ in others)
    return Plan(f"How fast does the engine run on {names} weights against {ref_dtype}, at the same ranks "
                f"and threads ({STRATEGY} + {DTYPE_ALGO})?", "tokens_per_s", variants)


def per_dtype(args: argparse.Namespace) -> list[tuple[str, str]]:
    """[(dtype, export)] of a comparison run per dtype, dtype in pipeline.cells' names (float32, bf16,
    int8): its variants are named {dtype}_{algo}_np{P}."""
    return [(MANIFEST_DTYPES[d], path) for d, path in dtypes_of(args.export, least=1, name=args.name)]


@comparison("ranks")
def ranks_plan(args: argparse.Namespace) -> Plan:
    """Head-wise on C ranks x 1 thread against 1 rank x C threads, C = --threads, per dtype and algorithm."""
    cores = args.threads
    if cores < 2:
        raise ValueError(f"comparison ranks needs --threads >= 2 (C ranks x 1 thread against 1 x C), "
                         f"got {cores}")
    variants = []
    for dtype, export in per_dtype(args):
        for algo in args.algos:
            one = engine_cell(f"{dtype}_{algo}_np1", f"{dtype}, {layout(1, cores)}, {algo}", export,
                              algo, 1, cores)
            many = engine_cell(f"{dtype}_{algo}_np{cores}", f"{dtype}, {layout(cores, cores)}, {algo}",
                               export, algo, cores, cores, reference=one.name)
            variants += [one, many]
    return Plan(f"Does {STRATEGY} on {cores} ranks x 1 thread run as fast as 1 rank x {cores} threads on the "
                "same cores?", "tokens_per_s", variants)


@comparison("ceilings")
def ceilings_plan(args: argparse.Namespace) -> Plan:
    """1 rank x C threads, per dtype and algorithm, against the GEMM and streaming ceilings on the same
    C cores (measured once: the streaming ceiling is GB/s, whichever dtype's bytes a decode step reads)."""
    exports, cores = per_dtype(args), args.threads
    ref = Variant("ceilings", f"ceilings, {cores} thread{'s' * (cores > 1)}", "ceilings",
                  {"export": exports[0][1], "threads": cores})
    engines = [engine_cell(f"{dtype}_{algo}_np1", f"{dtype}, {layout(1, cores)}, {algo}", export, algo, 1,
                           cores, reference=ref.name) for dtype, export in exports for algo in args.algos]
    question = (f"How close does 1 rank x {cores} threads come to this machine's GEMM ceiling in prefill "
                "and its streaming-GEMV bandwidth in decode, measured beside it?")
    return Plan(question, "roofline", [ref, *engines])


# a baseline's (kind, dtype) -> the export dtypes of ours it is set beside, the first of them exported
BASELINE_PAIRS = {("llamacpp", "f32"): ("float32",), ("llamacpp", "bf16"): ("bfloat16",),
                  ("llamacpp", "q8_0"): ("int8", "bfloat16"), ("torch", "float32"): ("float32",),
                  ("torch", "bf16"): ("bfloat16",)}
BASELINE_LABELS = {"llamacpp": "llama.cpp", "torch": "HF transformers (torch)"}


def gguf_files(pairs: list[str]) -> list[tuple[str, str]]:
    """[(dtype, path)] of --gguf DTYPE=PATH pairs (dtype f32, bf16 or q8_0)."""
    out = []
    for pair in pairs:
        dtype, _, path = pair.partition("=")
        if ("llamacpp", dtype) not in BASELINE_PAIRS or not path:
            raise ValueError(f"--gguf {pair!r}: expected DTYPE=PATH with DTYPE f32, bf16 or q8_0")
        out.append((dtype, path))
    return out


def baseline_variants(args: argparse.Namespace, ours: dict[str, Variant]) -> list[tuple[str, Variant]]:
    """[(our dtype, baseline variant)]: each asked-for baseline beside the first of its dtypes we exported."""
    runs = []
    if "llamacpp" in args.baselines:
        runs += [("llamacpp", dtype, {"gguf": path}) for dtype, path in gguf_files(args.gguf)]
    if "torch" in args.baselines:
        if not args.checkpoint:
            raise ValueError("comparison baselines with torch needs --checkpoint (Hugging Face directory)")
        runs += [("torch", dtype, {"checkpoint": args.checkpoint, "dtype": dtype})
                 for dtype in ("float32", "bf16")]
    out = []
    for kind, dtype, settings in runs:
        mine = next((d for d in BASELINE_PAIRS[kind, dtype] if d in ours), None)
        if mine is None:
            continue  # nothing of ours in a dtype to set it beside
        label = f"{BASELINE_LABELS[kind]} {dtype}, {args.threads} thread{'s' * (args.threads > 1)}"
        out.append((mine, Variant(f"{kind}_{dtype}", label, kind, {**settings, "threads": args.threads},
                                  ours[mine].name)))
    return out


@comparison("baselines")
def baselines_plan(args: argparse.Namespace) -> Plan:
    """Each baseline (llama.cpp per GGUF dtype, torch float32 and bf16) beside our 1-rank cell of a dtype."""
    cores, where = args.threads, layout(1, args.threads)
    exports = dict(dtypes_of(args.export, least=1, name="baselines"))
    ours = {dtype: engine_cell(f"ours_{dtype}", f"ours {dtype}, {where}", export, DTYPE_ALGO, 1, cores)
            for dtype, export in exports.items()}
    pairs = baseline_variants(args, ours)
    skipped = []
    if "llamacpp" in args.baselines and not args.gguf:  # the workflow writes none without the packages
        skipped.append("llama.cpp: skipped, no GGUF files (llama-cpp-python or gguf is not installed: "
                       "bash envs/llama-cpp.sh)")
    variants = []
    for dtype, mine in ours.items():  # each of ours between its baselines: pairs adjacent in time
        theirs = [v for d, v in pairs if d == dtype]
        variants += [*theirs[:1], mine, *theirs[1:]]
    question = (f"How fast is the engine ({where}, {STRATEGY} + {DTYPE_ALGO}) beside llama.cpp and torch on "
                "the same checkpoint, prompt ids, lengths and threads?")
    reference = float32_reference(args, exports)
    if reference is not None:
        variants = [measured_against(v, reference, args.reference_cache) for v in variants]
    return Plan(question, "tokens_per_s", variants, skipped, reference)


def float32_reference(args: argparse.Namespace, exports: dict[str, str]) -> Reference | None:
    """The float32 run of --reference-cache (None without it): the float32 export's, on the
    bench's prompt, of max(gen_len, MIN_STEPS) steps, keyed as bench keys its own."""
    if args.reference_cache is None:
        return None
    if "float32" not in exports:
        raise ValueError("--reference-cache measures every variant against the float32 export: pass one "
                         "with --export")
    export = exports["float32"]
    prompt = random_prompt(0, open_export(export).cfg.vocab_size, args.prompt_len)  # the programs' seed 0
    steps = max(args.gen_len, MIN_STEPS)
    key = refcache.reference_key(export, prompt, steps, DTYPE_ALGO)
    return Reference(export, Path(args.reference_cache) / f"{key}.npz", [int(t) for t in prompt], steps)


def measured_against(v: Variant, ref: Reference, cache: str) -> Variant:
    """`v` with the settings that make its program measure itself against `ref` too."""
    extra = ({"reference_export": ref.export, "reference_cache": cache} if v.kind == "bench"
             else {"reference": str(ref.path)})
    return replace(v, settings={**v.settings, **extra})


def make_reference(ref: Reference, run: RunSettings, threads: int) -> None:
    """The float32 run `ref` names, by `pipeline generate` on 1 rank, unless the cache holds it."""
    if ref.path.exists():
        print(f"[compare] float32 reference run: {ref.path} (cached)", file=sys.stderr, flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "logits.npy"
        cmd = [*shlex.split(run.mpi), "-n", "1", sys.executable, "-m", "mpi4py", "-m", "pipeline", "generate",
               "--export", ref.export, "--parallel-strategy", STRATEGY, "--attention-algo", DTYPE_ALGO,
               "--prompt-ids", ",".join(map(str, ref.prompt)), "--max-new-tokens", str(ref.steps),
               "--threads", str(threads), "--logits-out", str(npy)]
        print("[compare] float32 reference run: " + shlex.join(cmd), file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=run.timeout or None)
        if proc.returncode or not npy.is_file():
            raise RuntimeError(f"the float32 reference run failed: {shlex.join(cmd)}\n{proc.stderr[-2000:]}")
        logits = np.load(npy)
    tokens = [int(t) for t in logits.argmax(axis=1)]  # generate's greedy tokens: argmax of each row
    refcache.store(ref.path, tokens, logits, f"generate_{STRATEGY}_{DTYPE_ALGO}_np1", np.asarray(ref.prompt))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help=f"the comparison: one of {', '.join(COMPARISONS)}")
    p.add_argument("--export", nargs="+", required=True, help="export directories (dtype: one per dtype)")
    p.add_argument("--threads", type=int, required=True, help="cores of every variant (all its ranks)")
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2], help="rank counts (dtype)")
    p.add_argument("--algos", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS,
                   help="attention algorithms (ranks, ceilings)")
    p.add_argument("--checkpoint", default="", help="Hugging Face checkpoint directory (baselines: torch)")
    p.add_argument("--gguf", nargs="*", default=[], metavar="DTYPE=PATH",
                   help="GGUF files by dtype f32, bf16, q8_0 (baselines: llamacpp)")
    p.add_argument("--baselines", nargs="*", default=["llamacpp", "torch"], choices=list(BASELINE_LABELS),
                   help="the baselines to run (baselines)")
    p.add_argument("--reference-cache", default=None, metavar="DIR",
                   help="baselines: measure every variant against the float32 export's run kept here "
                        "(bench --reference-cache's entries; made first when missing)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mpi", default="mpiexec", help="MPI launcher command (before -n P)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per program (0: none)")
    p.add_argument("--out", required=True, help="result JSON; the rounds' JSONs go in its stem's folder")
    args = p.parse_args(argv)
    if min(args.rounds, args.threads, args.prompt_len, args.gen_len, args.iters, *args.ranks) < 1:
        p.error("--rounds, --threads, --prompt-len, --gen-len, --iters and --ranks must be >= 1")
    if not args.out.endswith(".json"):
        p.error(f"--out must name a .json file, got {args.out}")
    return args


def planned(args: argparse.Namespace, run: RunSettings) -> Plan:
    """The named comparison's plan, every variant checked; ValueError naming what is wrong."""
    if args.name not in COMPARISONS:
        raise ValueError(f"unknown comparison {args.name!r} (known: {', '.join(COMPARISONS)})")
    plan = COMPARISONS[args.name](args)
    kept, skipped = [], list(plan.skipped)
    for variant in plan.variants:
        try:
            check_variant(variant, run, plan.metric)
        except Unavailable as e:  # an optional baseline not installed: left out, and said so
            skipped.append(str(e))
            continue
        kept.append(variant)
    names = {v.name for v in kept}
    for v in [v for v in kept if v.reference is not None and v.reference not in names]:
        kept.remove(v)
        skipped.append(f"{v.label}: skipped, its reference {v.reference} is")
    for line in skipped:
        print(f"[compare] {line}", file=sys.stderr, flush=True)
    return replace(plan, variants=kept, skipped=skipped)


def in_turn(items: list, rnd: int) -> list:
    """The order of round `rnd`: as given on even rounds, reversed on odd ones (ABBA)."""
    return list(items) if rnd % 2 == 0 else list(items)[::-1]


def round_files(raw: Path, variants: list[Variant], rounds: int) -> dict[str, list[Path]]:
    """Each variant's JSON of each round; other JSONs in `raw` (earlier runs, more rounds) removed."""
    files = {v.name: [raw / f"{v.name}_r{rnd}.json" for rnd in range(rounds)] for v in variants}
    raw.mkdir(parents=True, exist_ok=True)
    keep = {f for paths in files.values() for f in paths}
    for stale in set(raw.glob("*.json")) - keep:
        stale.unlink()
    return files


def run_rounds(plan: Plan, run: RunSettings, files: dict[str, list[Path]],
               rounds: int) -> tuple[dict[str, list[Measured]], list[list[str]], dict[str, str]]:
    """Every variant once per round, in ABBA order: the measurements by variant, each round's order,
    and the baselines that failed (name: why), each left out of the rounds after its failure. A
    baseline is another project's program and may crash on a CPU it was built for (llama.cpp's AMX
    kernels did on a Xeon, docs/design-notes.md#baseline-crash); our own variants may not fail."""
    got: dict[str, list[Measured]] = {v.name: [] for v in plan.variants}
    order, failed = [], {}
    for rnd in range(rounds):
        print(f"[compare] round {rnd + 1} of {rounds}", file=sys.stderr, flush=True)
        turn = [v for v in in_turn(plan.variants, rnd) if v.name not in failed]
        order.append([v.name for v in turn])
        for v in turn:
            try:
                got[v.name].append(measure(v, run, files[v.name][rnd]))
            except RuntimeError as e:
                if v.kind not in BASELINE_LABELS:
                    raise
                failed[v.name] = f"{v.label}: {getattr(e, 'why', e)} in round {rnd + 1}, left out"
                print(f"[compare] {failed[v.name]}\n{e}", file=sys.stderr, flush=True)
    return got, order, failed


def tokens_agree(runs: list[Measured], reference: list[Measured]) -> bool | None:
    """Whether every round of both generated the same greedy tokens (None: one of them generates none)."""
    if any(m.tokens is None for m in runs + reference):
        return None
    return all(m.tokens == reference[0].tokens for m in runs + reference)


def variant_result(v: Variant, got: dict[str, list[Measured]], metric: str, files: list[Path]) -> dict:
    """One variant's entry of the result: settings, per-round rates, medians, ratios over its reference."""
    rates = {ph: [m.rates[metric][ph] for m in got[v.name]] for ph in PHASES}
    entry = {**asdict(v), "rounds": rates, "median": {ph: statistics.median(rates[ph]) for ph in PHASES},
             "files": [str(f) for f in files]}
    if v.reference is not None:
        ref = {ph: [m.rates[metric][ph] for m in got[v.reference]] for ph in PHASES}
        ratios = {ph: [a / b for a, b in zip(rates[ph], ref[ph], strict=True)] for ph in PHASES}
        entry["ratio_rounds"] = ratios
        entry["ratio"] = {ph: statistics.median(ratios[ph]) for ph in PHASES}
        entry["tokens_agree"] = tokens_agree(got[v.name], got[v.reference])
    builds = sorted({m.build for m in got[v.name] if m.build})
    if builds:
        entry["build"] = "; ".join(builds)
    measured = [m.accuracy for m in got[v.name] if m.accuracy is not None]
    if measured:  # the same measurement each round, up to a program's nondeterminism: the median
        entry["accuracy"] = {k: measured[0][k] if k == "steps" else statistics.median(a[k] for a in measured)
                             for k in measured[0]}
    return entry


def machine() -> dict:
    """This machine's facts (CPU, cores, host, versions, time); the layout keys belong to each run."""
    facts = machine_facts(1, 1)
    return {k: v for k, v in facts.items() if k not in ("nranks", "threads_per_rank", "oversubscribed")}


def result(name: str, plan: Plan, run: RunSettings, got: dict[str, list[Measured]],
           order: list[list[str]], files: dict[str, list[Path]]) -> dict:
    return {"schema_version": SCHEMA_VERSION, "name": name, "question": plan.question, "rounds": len(order),
            "metric": plan.metric, "units": UNITS[plan.metric],
            "run": {"prompt_len": run.prompt_len, "gen_len": run.gen_len, "iters": run.iters,
                    "warmup": run.warmup},
            "order": order,
            "variants": [variant_result(v, got, plan.metric, files[v.name]) for v in plan.variants],
            "skipped": plan.skipped,
            "machine": machine()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = RunSettings(args.prompt_len, args.gen_len, args.iters, args.warmup, args.mpi, args.timeout)
    try:
        plan = planned(args, run)
    except ValueError as e:  # one clear line before any run (CheckpointError is a ValueError)
        print(f"error: {e}", file=sys.stderr)
        return 2
    files = round_files(Path(args.out).with_suffix(""), plan.variants, args.rounds)
    try:
        if plan.reference is not None:
            make_reference(plan.reference, run, args.threads)
        got, order, failed = run_rounds(plan, run, files, args.rounds)
    except RuntimeError as e:  # one of our variants failed: its command and stderr
        print(f"error: {e}", file=sys.stderr)
        return 1
    plan = replace(plan, variants=[v for v in plan.variants if v.name not in failed],
                   skipped=[*plan.skipped, *failed.values()])
    doc = result(args.name, plan, run, got, order, files)
    write_json_atomic(args.out, doc)
    for v in doc["variants"]:
        if "ratio" in v:
            print(f"[compare] {args.name}: {v['label']} over {v['reference']}: " + ", ".join(
                f"{ph} x{v['ratio'][ph]:.3f}" for ph in PHASES), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
