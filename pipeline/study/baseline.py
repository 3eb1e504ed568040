"""Baseline: Hugging Face transformers' Qwen3ForCausalLM (PyTorch, CPU) on the same checkpoint and prompt.

    python -m pipeline baseline --checkpoint DIR --prompt-len 128 --gen-len 32 --iters 3 --warmup 1 \
        --threads 2 --out results/baseline/hf_p128.json

The model is loaded from the checkpoint directory the export was made from, in float32 (a bf16
checkpoint is widened, as the float32 export is) or, with `--dtype bf16`, in bfloat16 (torch then
runs its linear layers through oneDNN's bf16 matmul where the CPU has the units), with
`torch.set_num_threads(threads)`. The
prompt is pipeline.study.bench's: `pipeline.engine.prompts.random_prompt(seed, vocab, prompt_len)`.
prefill: one forward of the prompt into an empty cache (use_cache=True, logits of the last
position only, as `generate` asks for them); decode: gen_len greedy steps on that KV cache.
Warm-up iterations are excluded; the statistics (pipeline.study.stats) are the bench's.

With `--reference RUN.npz` (a float32 run of our engine on the same prompt, pipeline.study.refcache's
entry) the JSON also holds `low_precision`: NMSE, KL and top-1 of torch's logits against it, from
one forward of the prompt and the reference's tokens (teacher forcing, pipeline.study.lowprec),
after the timing.

Without torch or transformers (or a transformers that has no Qwen3), the output says
{"available": false, "reason": ...} and the command exits 0: the baseline is optional.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import socket
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from model_export.atomic import write_json_atomic
from pipeline.engine.machine import cpu_model
from pipeline.engine.prompts import random_prompt
from pipeline.study.lowprec import describe, load_reference, measures
from pipeline.study.stats import add_run_args, check_run_args, logits_digest, timings

if TYPE_CHECKING:  # only for the annotations: torch and transformers are optional
    import torch as torch_module
    from transformers import Qwen3ForCausalLM

SCHEMA_VERSION = 1
NAME = "HF transformers (torch)"
DTYPES = ("float32", "bf16")  # --dtype -> torch's dtype name
TORCH_DTYPE = {"float32": "float32", "bf16": "bfloat16"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="Hugging Face Qwen3 checkpoint directory")
    add_run_args(p, "torch intra-op threads (default: all cores)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="the model's dtype in torch")
    p.add_argument("--reference", default=None, metavar="RUN.npz",
                   help="also measure NMSE/KL/top-1 against this float32 run of the same prompt "
                        "(an entry of bench --reference-cache)")
    p.add_argument("--out", required=True, help="result JSON (written atomically)")
    args = p.parse_args(argv)
    check_run_args(p, args)
    if args.reference is not None and not Path(args.reference).is_file():
        p.error(f"--reference {args.reference}: no such file")
    return args


def unavailable(reason: str) -> dict:
    return {"schema_version": SCHEMA_VERSION, "name": NAME, "available": False, "reason": reason}


def import_hf() -> tuple[tuple | None, str | None]:
    """(torch, Qwen3ForCausalLM), or the reason they cannot be used."""
    try:
        import torch
        import transformers
        from transformers import Qwen3ForCausalLM
    except ImportError as e:
        return None, f"torch/transformers not importable: {e}"
    return (torch, transformers, Qwen3ForCausalLM), None


def set_torch_threads(torch: ModuleType, threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only allowed before the first parallel work; harmless to skip
        pass


def one_iteration(model: Qwen3ForCausalLM, torch: ModuleType, ids: torch_module.Tensor, gen_len: int) -> dict:
    """One prefill of `ids` (1, T) into an empty cache, then gen_len greedy decode steps on it."""

    def forward(input_ids, cache=None):
        return model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)

    t0 = time.perf_counter()
    out = forward(ids)
    prefill_s = time.perf_counter() - t0
    first = out.logits[0, -1].float().numpy().copy()
    tokens = [int(first.argmax())]
    cache, steps = out.past_key_values, []
    t1 = time.perf_counter()
    for _ in range(gen_len):
        t = time.perf_counter()
        out = forward(torch.tensor([[tokens[-1]]]), cache)
        cache = out.past_key_values
        tokens.append(int(out.logits[0, -1].argmax()))
        steps.append(time.perf_counter() - t)
    decode_s = time.perf_counter() - t1
    return {"prefill_s": prefill_s, "decode_s": decode_s, "steps": steps, "tokens": tokens,
            "first": first, "final": out.logits[0, -1].float().numpy()}


def teacher_forced(model: Qwen3ForCausalLM, torch: ModuleType, prompt: np.ndarray,
                   tokens: list[int]) -> np.ndarray:
    """(len(tokens), V) float32 logits of one forward of the prompt and tokens[:-1]: row i is what
    the model predicts where the reference predicted tokens[i]."""
    ids = torch.tensor([[int(t) for t in prompt] + tokens[:-1]], dtype=torch.int64)
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=False, logits_to_keep=len(tokens))
    return out.logits[0].float().numpy()


def timed_iterations(model: Qwen3ForCausalLM, torch: ModuleType, prompt: np.ndarray,
                     args: argparse.Namespace) -> list[dict]:
    """args.warmup + args.iters iterations; the timed ones (warm-up excluded)."""
    ids = torch.from_numpy(prompt.astype(np.int64))[None, :]  # (1, T)
    runs = []
    with torch.inference_mode():
        for it in range(args.warmup + args.iters):
            r = one_iteration(model, torch, ids, args.gen_len)
            kind = "warm-up" if it < args.warmup else "iter"
            print(f"[baseline] {kind} {it + 1}/{args.warmup + args.iters}: prefill {r['prefill_s']:.3f} s, "
                  f"decode {r['decode_s']:.3f} s", file=sys.stderr, flush=True)
            if it >= args.warmup:
                runs.append(r)
    return runs


def onednn_bf16(torch: ModuleType) -> bool | None:
    """Whether torch's oneDNN (mkldnn) runs bf16 on this CPU's units (None: this torch cannot say)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def environment(torch: ModuleType, transformers: ModuleType, model: Qwen3ForCausalLM) -> dict:
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 1,
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "onednn_bf16": onednn_bf16(torch),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def run(args: argparse.Namespace) -> dict:
    hf, reason = import_hf()
    if hf is None:
        return unavailable(reason)
    torch, transformers, Qwen3ForCausalLM = hf
    threads = args.threads or os.cpu_count() or 1
    set_torch_threads(torch, threads)
    dtype = getattr(torch, TORCH_DTYPE[args.dtype])
    model = Qwen3ForCausalLM.from_pretrained(args.checkpoint, dtype=dtype).eval()
    prompt = random_prompt(args.seed, model.config.vocab_size, args.prompt_len)
    reference = None if args.reference is None else load_reference(args.reference, prompt)  # before timing
    runs = timed_iterations(model, torch, prompt, args)
    last = runs[-1]
    extra = {}
    if reference is not None:
        low = measures(teacher_forced(model, torch, prompt, reference[0]), reference[1])
        extra["low_precision"] = {"reference": os.path.abspath(args.reference), **low}
    return {
        "schema_version": SCHEMA_VERSION,
        "name": NAME,
        "available": True,
        "cell": {"prompt_len": args.prompt_len, "gen_len": args.gen_len, "iters": args.iters,
                 "warmup": args.warmup, "threads": threads, "seed": args.seed},
        "environment": environment(torch, transformers, model),
        "model": {"checkpoint": os.path.abspath(args.checkpoint), "dtype": args.dtype,
                  "num_parameters": int(sum(p.numel() for p in model.parameters()))},
        **timings([r["prefill_s"] for r in runs], [r["decode_s"] for r in runs],
                  [s for r in runs for s in r["steps"]], args.prompt_len, args.gen_len),
        "memory": {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        "output": {"prompt_ids": [int(t) for t in prompt], "greedy_tokens": last["tokens"],
                   "prefill_logits": logits_digest(last["first"]),
                   "final_logits": logits_digest(last["final"])},
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except ValueError as e:  # a reference run of another prompt or vocabulary: one line, exit 1
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_json_atomic(args.out, result)
    if result["available"]:
        p, d = result["prefill"], result["decode"]
        print(
            f"{NAME} {args.dtype}, {result['cell']['threads']} threads, prompt {args.prompt_len}: prefill "
            f"{p['tokens_per_s']:.1f} tok/s, decode {d['tokens_per_s']:.2f} tok/s"
        )
        if "low_precision" in result:
            print(f"{NAME} {args.dtype} {describe(result['low_precision'])}")
    else:
        print(f"{NAME}: not available ({result['reason']}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
