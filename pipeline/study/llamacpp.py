"""Baseline: llama.cpp (through the PyPI `llama-cpp-python`) on a GGUF file of the same checkpoint.

    python -m pipeline gguf --checkpoint DIR --dtype q8_0 --out q/model-q8_0.gguf
    python -m pipeline llamacpp --gguf q/model-q8_0.gguf --prompt-len 128 --gen-len 64 --iters 3 \
        --warmup 1 --threads 2 --out results/baseline/llamacpp-q8_0_p128.json

The same workload as pipeline.study.bench and pipeline.study.baseline: the prompt ids of
`pipeline.engine.prompts.random_prompt(seed, vocab, prompt_len)`; prefill: one llama_decode of the
whole prompt into an empty KV cache (n_batch and n_ubatch >= the prompt, so it is one batch, the
logits of the last position only); decode: gen_len greedy steps of one token each. Each iteration
clears the KV cache first; warm-up iterations are excluded; statistics are pipeline.study.stats'.
Times include fetching the logits row (llama_get_logits_ith synchronises), as the other programs'
include producing theirs. The C API is called directly (llama_cpp's ctypes bindings), not the
`Llama` class: no sampler, no tokenizer, exactly these token ids; the synthetic checkpoint's GGUF
has no vocabulary ("none"), which the class does not expect.

Settings are llama.cpp's defaults (a float16 KV cache, flash attention "auto") unless asked
otherwise; `--kv-type f32` with an f32 GGUF is the like-for-like check of our float32 engine.
The JSON records the llama-cpp-python version, llama.cpp's system info (the CPU features its
ggml-cpu was built with) and the buffer types its log reports (e.g. CPU_REPACK for Q8_0 weights
repacked for the CPU's int8 dot products).

With `--reference RUN.npz` (a float32 run of our engine on the same prompt, pipeline.study.refcache's
entry) the JSON also holds `low_precision`: NMSE, KL and top-1 of llama.cpp's logits against it,
llama.cpp fed the reference's tokens (teacher forcing, pipeline.study.lowprec), after the timing.

Without llama-cpp-python the output says {"available": false, "reason": ...} and the command exits 0.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import platform
import resource
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from model_export.atomic import write_json_atomic
from pipeline.engine.machine import cpu_model, fold_into_huge_pages, huge_page_share
from pipeline.engine.prompts import random_prompt
from pipeline.study.lowprec import describe, load_reference, measures
from pipeline.study.lowprec import teacher_forced as teacher_forced_rows
from pipeline.study.stats import add_run_args, check_run_args, logits_digest, timings

SCHEMA_VERSION = 1
NAME = "llama.cpp"
KV_TYPES = ("f16", "f32")
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}  # llama_flash_attn_type
LOG_KEEP = ("buffer size", "REPACK", "file type", "flash_attn", "type_k", "n_ctx")  # log lines recorded


def import_llama() -> tuple[ModuleType | None, str | None]:
    """llama_cpp, or the reason it cannot be used."""
    try:
        import llama_cpp
    except (ImportError, OSError) as e:  # OSError: the package's libllama.so fails to load
        return None, f"llama-cpp-python not importable: {e}"
    return llama_cpp, None


@dataclass
class Session:
    """One loaded model and context: decode token ids, read the last position's logits."""

    lib: ModuleType
    model: object
    ctx: object
    n_vocab: int
    log: list[str] = field(default_factory=list)

    def reset(self) -> None:
        """Empty the KV cache (every iteration starts from position 0)."""
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)

    def decode(self, ids: list[int]) -> np.ndarray:
        """Append `ids` at the next positions; the logits (V,) of the last one (a view of llama.cpp's)."""
        arr = (self.lib.llama_token * len(ids))(*ids)
        status = self.lib.llama_decode(self.ctx, self.lib.llama_batch_get_one(arr, len(ids)))
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} for {len(ids)} tokens")
        ptr = self.lib.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def close(self) -> None:
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)


_CALLBACKS: list = []  # ctypes log callbacks: llama.cpp may log until the process exits


def capture_log(lib: ModuleType, lines: list[str]) -> None:
    """Route llama.cpp's log into `lines` instead of stderr."""
    @lib.llama_log_callback
    def callback(level, text, user_data):
        lines.append(text.decode(errors="replace"))

    _CALLBACKS.append(callback)
    lib.llama_log_set(callback, ctypes.c_void_p(0))


def open_session(lib: ModuleType, path: str, threads: int, n_ctx: int, n_batch: int, kv_type: str,
                 flash_attn: str) -> Session:
    """Load the GGUF at `path` on the CPU and make a context of n_ctx positions; RuntimeError if it fails."""
    log: list[str] = []
    capture_log(lib, log)
    lib.llama_backend_init()
    mparams = lib.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = lib.llama_model_load_from_file(os.fsencode(path), mparams)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}: " + "".join(log[-5:]).strip())
    cparams = lib.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, n_batch, n_batch
    cparams.n_threads = cparams.n_threads_batch = threads
    kv = lib.GGML_TYPE_F16 if kv_type == "f16" else lib.GGML_TYPE_F32
    cparams.type_k = cparams.type_v = kv
    cparams.flash_attn_type = FLASH_ATTN[flash_attn]
    cparams.no_perf = True
    ctx = lib.llama_init_from_model(model, cparams)
    if not ctx:
        lib.llama_model_free(model)
        raise RuntimeError(f"llama.cpp could not make a context for {path}: " + "".join(log[-5:]).strip())
    n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
    return Session(lib, model, ctx, n_vocab, log)


def generate(session: Session, prompt: list[int], gen_len: int) -> dict:
    """One prefill of `prompt` into an empty cache, then gen_len greedy steps; times, tokens, logits."""
    session.reset()
    t0 = time.perf_counter()
    first = session.decode(prompt).copy()
    prefill_s = time.perf_counter() - t0
    tokens, steps, logits = [int(first.argmax())], [], first
    t1 = time.perf_counter()
    for _ in range(gen_len):
        t = time.perf_counter()
        logits = session.decode([tokens[-1]])
        tokens.append(int(logits.argmax()))
        steps.append(time.perf_counter() - t)
    decode_s = time.perf_counter() - t1
    return {"prefill_s": prefill_s, "decode_s": decode_s, "steps": steps, "tokens": tokens,
            "first": first, "final": logits.copy()}


def teacher_forced(session: Session, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """lowprec.teacher_forced on llama.cpp: the prompt into an empty cache, then tokens[:-1]."""
    session.reset()
    return teacher_forced_rows(lambda ids: session.decode([int(t) for t in ids]),
                               lambda token: session.decode([token]), prompt, tokens, session.n_vocab)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", required=True, help="GGUF file (python -m pipeline gguf)")
    add_run_args(p, "llama.cpp threads (default: all cores)")
    p.add_argument("--kv-type", choices=KV_TYPES, default="f16",
                   help="KV cache type (default f16, llama.cpp's)")
    p.add_argument("--flash-attn", choices=FLASH_ATTN, default="auto", help="llama.cpp's default: auto")
    p.add_argument("--reference", default=None, metavar="RUN.npz",
                   help="also measure NMSE/KL/top-1 against this float32 run of the same prompt "
                        "(an entry of bench --reference-cache)")
    p.add_argument("--out", required=True, help="result JSON (written atomically)")
    args = p.parse_args(argv)
    check_run_args(p, args)
    if args.reference is not None and not Path(args.reference).is_file():
        p.error(f"--reference {args.reference}: no such file")
    if not Path(args.gguf).is_file():
        p.error(f"--gguf {args.gguf}: no such file (write it with python -m pipeline gguf)")
    return args


def unavailable(reason: str) -> dict:
    return {"schema_version": SCHEMA_VERSION, "name": NAME, "available": False, "reason": reason}


def gguf_facts(path: str) -> dict:
    """The file's dtype (general.file_type) and size, read with gguf when it is installed."""
    facts = {"path": os.path.abspath(path), "bytes": os.path.getsize(path)}
    try:
        import gguf

        field = gguf.GGUFReader(path).fields.get("general.file_type")
        if field is not None:
            facts["file_type"] = gguf.LlamaFileType(int(field.contents())).name
    except (ImportError, ValueError):  # the run does not need it; the record just says less
        pass
    return facts


def environment(lib: ModuleType, session: Session, args: argparse.Namespace) -> dict:
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 1,
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "llama_cpp_python": getattr(lib, "__version__", None),
        "system_info": lib.llama_print_system_info().decode(errors="replace").strip(),
        "kv_type": args.kv_type,
        "flash_attn": args.flash_attn,
        "log": [line.strip() for line in session.log if any(k in line for k in LOG_KEEP)][:40],
        "env": {k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")},
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def timed_iterations(session: Session, prompt: list[int], args: argparse.Namespace) -> list[dict]:
    runs = []
    for it in range(args.warmup + args.iters):
        r = generate(session, prompt, args.gen_len)
        kind = "warm-up" if it < args.warmup else "iter"
        print(f"[llamacpp] {kind} {it + 1}/{args.warmup + args.iters}: prefill {r['prefill_s']:.3f} s, "
              f"decode {r['decode_s']:.3f} s", file=sys.stderr, flush=True)
        if it >= args.warmup:
            runs.append(r)
    return runs


def prefault(path: str) -> tuple[float | None, float | None]:
    """Read the GGUF once through a map advised for 2 MiB pages, as bench does our export: its
    pages come in as 2 MiB folios (re-read where the cache held small ones), which llama.cpp's own
    map (not advised) then finds, so both engines read their weights alike
    (docs/design-notes.md#huge-folios). The JSON records the (before, after) share and what
    llama.cpp got (memory.weights_in_2mib_pages)."""
    return fold_into_huge_pages([Path(path)], path)


def run(args: argparse.Namespace) -> dict:
    lib, reason = import_llama()
    if lib is None:
        return unavailable(reason)
    threads = args.threads or os.cpu_count() or 1
    n_ctx = args.prompt_len + max(args.gen_len, reference_steps(args.reference)) + 1
    folded = prefault(args.gguf)
    session = open_session(lib, args.gguf, threads, n_ctx, max(args.prompt_len, 512), args.kv_type,
                           args.flash_attn)
    try:
        prompt = [int(t) for t in random_prompt(args.seed, session.n_vocab, args.prompt_len)]
        # the reference is checked before the timing, measured against after it
        reference = None if args.reference is None else load_reference(args.reference, prompt)
        runs = timed_iterations(session, prompt, args)
        env = environment(lib, session, args)
        huge = huge_page_share(args.gguf)  # while llama.cpp still maps the file
        low = None if reference is None else against(reference, teacher_forced(session, prompt, reference[0]))
    finally:
        session.close()
    last = runs[-1]
    return {
        "schema_version": SCHEMA_VERSION,
        "name": NAME,
        "available": True,
        "cell": {"prompt_len": args.prompt_len, "gen_len": args.gen_len, "iters": args.iters,
                 "warmup": args.warmup, "threads": threads, "seed": args.seed},
        "environment": env,
        "model": {"gguf": gguf_facts(args.gguf), "n_vocab": session.n_vocab},
        **timings([r["prefill_s"] for r in runs], [r["decode_s"] for r in runs],
                  [s for r in runs for s in r["steps"]], args.prompt_len, args.gen_len),
        "memory": {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "weights_in_2mib_pages": huge,
                   "weights_refolded": {"before": folded[0], "after": folded[1]}},
        "output": {"prompt_ids": prompt, "greedy_tokens": last["tokens"],
                   "prefill_logits": logits_digest(last["first"]),
                   "final_logits": logits_digest(last["final"])},
        **({} if low is None else {"low_precision": {"reference": os.path.abspath(args.reference), **low}}),
    }


def reference_steps(path: str | None) -> int:
    """Steps of the reference run at `path` (0 without one): the context must hold them too."""
    if path is None:
        return 0
    try:
        with np.load(path) as z:
            return int(z["tokens"].shape[0])
    except (OSError, KeyError, ValueError) as e:
        raise RuntimeError(f"--reference {path}: not a reference run ({e})") from None


def against(reference: tuple[list[int], np.ndarray], logits: np.ndarray) -> dict:
    """pipeline.study.lowprec's measures of teacher-forced `logits` against the reference run's."""
    ref_logits = reference[1]
    if logits.shape != ref_logits.shape:
        raise RuntimeError(f"logits {logits.shape} vs the reference's {ref_logits.shape}: another vocabulary")
    return measures(logits, ref_logits)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (RuntimeError, ValueError) as e:  # a file that does not load, a failed decode, a reference
        print(f"error: {e}", file=sys.stderr)  # run of another prompt: one line, exit 1
        return 1
    write_json_atomic(args.out, result)
    if result["available"]:
        p, d = result["prefill"], result["decode"]
        kind = result["model"]["gguf"].get("file_type", "?")
        print(f"{NAME} ({kind}), {result['cell']['threads']} threads, prompt {args.prompt_len}: "
              f"prefill {p['tokens_per_s']:.1f} tok/s, "
              f"decode {d['tokens_per_s']:.2f} tok/s")
        if "low_precision" in result:
            print(f"{NAME} ({kind}) {describe(result['low_precision'])}")
    else:
        print(f"{NAME}: not available ({result['reason']}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
