"""This machine's ceilings for the two phases, measured in the calling process, and the model's work.

Prefill is compute bound: its ceiling is NumPy's float32 GEMM rate at the model's own prefill
shapes (T x d @ d x N for q, k, v, o, gate, up, down, in the engine's weight layouts), reported
FLOP-weighted: total FLOPs of one pass over the seven shapes / total time.
Decode is memory bound: every step streams all weights once. Its ceiling is the streaming-GEMV
bandwidth: y = W @ x over distinct matrices that together exceed the last-level cache many times
(512 MB by default), so each pass reads from DRAM as a decode step does. The matrices have the
model's (I, d) shape; below 4 MB per matrix (tiny configs) a fixed (4096, 1024) shape is used,
so the number always means "GB/s of GEMV streaming from DRAM".
Both are medians of a few repeats after a warm-up; about one second in all for Qwen3-0.6B.

    ceilings = measure_ceilings(cfg, prompt_len=128, threads=2)
    fraction = model_flops(cfg, 128) / prefill_s / 1e9 / ceilings["gemm_gflops"]

Call it with the threads the whole job uses on this node (the ceiling is the node's), while the
other ranks wait, outside the timed regions: the GEMV set allocates `gemv_bytes` of memory.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from model_export.config import Qwen3Config

GEMM_MAX_TOKENS = 1024  # beyond this the GEMMs are deep in the compute-bound regime; keeps it short
GEMV_BYTES = 512 << 20  # >= 16x a 32 MB L3: streams from DRAM
GEMV_MIN_MATRIX_BYTES = 4 << 20  # smaller model matrices are replaced by a fixed shape
GEMV_FIXED_SHAPE = (4096, 1024)  # 16 MB float32


def layer_matmul_shapes(cfg: Qwen3Config) -> dict[str, tuple[int, int]]:
    """(K, N) of each per-layer projection: input features K, output features N."""
    d, I = cfg.hidden_size, cfg.intermediate_size
    qd, kvd = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    return {"q": (d, qd), "k": (d, kvd), "v": (d, kvd), "o": (qd, d),
            "gate": (d, I), "up": (d, I), "down": (I, d)}


def layer_matmul_params(cfg: Qwen3Config) -> int:
    """Weights of one layer's projections (the parameters that multiply every token)."""
    return sum(k * n for k, n in layer_matmul_shapes(cfg).values())


def attention_pairs(T: int, context: int = 0) -> int:
    """Causal (query, key) pairs of T new queries at positions context..context+T-1: each sees pos+1 keys."""
    return T * context + T * (T + 1) // 2


def model_flops(cfg: Qwen3Config, T: int, context: int = 0, *, lm_head_rows: int = 1) -> int:
    """FLOPs of a forward of T tokens after `context` cached ones (a prefill: context 0; a decode step: T 1).

    2 x (projection weights) x T per layer, plus attention 4 x H x D per causal (query, key) pair
    per layer (2 for Q K^T, 2 for P V), plus the lm_head on `lm_head_rows` positions (the engine
    computes only the last position's logits). Norms, RoPE and softmax are left out (< 1%).
    """
    L, H, D = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim
    matmul = 2 * layer_matmul_params(cfg) * T * L
    attention = 4 * H * D * attention_pairs(T, context) * L
    head = 2 * cfg.hidden_size * cfg.vocab_size * lm_head_rows
    return matmul + attention + head


def model_bytes(cfg: Qwen3Config, dtype_bytes: float, context: int = 0, *, kv_bytes: int = 4,
                norm_bytes: int = 4) -> int:
    """Bytes one decode step reads: every weight once, plus the KV cache of `context` positions.

    Weights: each layer's projections and norms, the final norm, one embedding row, and the
    whole lm_head for the logits (the embedding itself when tied: it is read in full once).
    `dtype_bytes` is the matrices' element size (4 float32, 2 bf16); norms are float32 in both
    exports. The KV cache (float32 in the engine) is read once: 2 x L x context x Hkv x D.
    """
    L, d, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    # lm_head (V, d) in full; untied, the token's embedding row comes from a separate table
    matrices = L * layer_matmul_params(cfg) + V * d + (0 if cfg.tie_word_embeddings else d)
    norms = L * (2 * d + 2 * cfg.head_dim) + d
    kv = 2 * L * context * cfg.num_key_value_heads * cfg.head_dim * kv_bytes
    return int(matrices * dtype_bytes + norms * norm_bytes + kv)


def decode_bytes(cfg: Qwen3Config, dtype_bytes: float, prompt_len: int, gen_len: int) -> int:
    """Total bytes of `gen_len` decode steps after a prompt (step i attends over prompt_len + i + 1)."""
    return sum(model_bytes(cfg, dtype_bytes, prompt_len + i + 1) for i in range(gen_len))


def _times(fn, repeats: int) -> list[float]:
    fn()  # warm-up: page faults, BLAS thread start-up, caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def measure_gemm(cfg: Qwen3Config, T: int, repeats: int = 5) -> dict:
    """float32 GEMM GFLOP/s at the prefill shapes, in the engine's layouts; FLOP-weighted total.

    q/k/v/gate/up: x (T, K) @ w.T with w (N, K) stored row-major (np.matmul(x, w.T));
    o/down: x (T, K) @ w_t with w_t (K, N) (the transposed, row-sharded exports).
    """
    rng = np.random.default_rng(0)
    x_by_k: dict[int, np.ndarray] = {}
    shapes = []
    total_flops, total_s, best_s = 0, 0.0, 0.0
    for name, (K, N) in layer_matmul_shapes(cfg).items():
        x = x_by_k.setdefault(K, rng.standard_normal((T, K), dtype=np.float32))
        transposed = name in ("o", "down")
        w = (rng.random((K, N), dtype=np.float32) if transposed
             else rng.random((N, K), dtype=np.float32)) - np.float32(0.5)
        out = np.empty((T, N), np.float32)
        op = w if transposed else w.T
        times = _times(lambda x=x, op=op, out=out: np.matmul(x, op, out=out), repeats)
        seconds = statistics.median(times)
        flops = 2 * T * K * N
        total_flops += flops
        total_s += seconds
        best_s += min(times)
        shapes.append({"name": name, "T": T, "K": K, "N": N, "seconds": seconds,
                       "gflops": flops / seconds / 1e9})
    return {"gemm_gflops": total_flops / total_s / 1e9, "gemm_gflops_best": total_flops / best_s / 1e9,
            "gemm_tokens": T, "gemm_shapes": shapes}


def gemv_matrix_shape(cfg: Qwen3Config) -> tuple[int, int]:
    shape = (cfg.intermediate_size, cfg.hidden_size)  # (I, d): gate/up as the engine stores them
    return shape if shape[0] * shape[1] * 4 >= GEMV_MIN_MATRIX_BYTES else GEMV_FIXED_SHAPE


def measure_gemv(cfg: Qwen3Config, total_bytes: int = GEMV_BYTES, repeats: int = 5) -> dict:
    """Streaming-GEMV bandwidth: y = W_i @ x over distinct matrices totalling `total_bytes`.

    W @ x on a row-major W is what the engine's decode does for q/k/v/gate/up (np.matmul(w, x)).
    """
    rows, cols = gemv_matrix_shape(cfg)
    count = max(2, math.ceil(total_bytes / (rows * cols * 4)))
    # Filled (not np.empty): untouched pages would all map the shared zero page, which caches.
    mats = [np.full((rows, cols), 0.01, np.float32) for _ in range(count)]
    x = np.full(cols, 0.5, np.float32)
    y = np.empty(rows, np.float32)

    def sweep() -> None:
        for w in mats:
            np.matmul(w, x, out=y)

    times = _times(sweep, repeats)
    seconds = statistics.median(times)
    nbytes = count * rows * cols * 4
    return {"gemv_gb_s": nbytes / seconds / 1e9, "gemv_gb_s_best": nbytes / min(times) / 1e9,
            "gemv_matrix_shape": [rows, cols],
            "gemv_matrices": count, "gemv_total_mb": nbytes / 1e6, "gemv_sweep_s": seconds}


def measure_ceilings(cfg: Qwen3Config, prompt_len: int, threads: int, *, repeats: int = 5,
                     gemv_bytes: int = GEMV_BYTES) -> dict:
    """GEMM GFLOP/s at the prefill shapes (T = min(prompt_len, 1024)) and streaming-GEMV GB/s.

    BLAS runs with `threads` threads for the measurement (the previous limit is restored after).
    Returns {"gemm_gflops", "gemm_gflops_best", "gemm_tokens", "gemm_shapes", "gemv_gb_s",
    "gemv_gb_s_best", "gemv_matrix_shape", "gemv_matrices", "gemv_total_mb", "gemv_sweep_s",
    "threads", "repeats", "seconds"}: the plain keys from medians (the ceilings), the "_best"
    ones from the fastest repeat (how far a noisy, shared machine pulled the medians down).
    """
    if prompt_len < 1 or threads < 1:
        raise ValueError(f"prompt_len and threads must be >= 1 (got {prompt_len}, {threads})")
    t0 = time.perf_counter()
    with threadpool_limits(limits=threads, user_api="blas"):
        gemm = measure_gemm(cfg, min(prompt_len, GEMM_MAX_TOKENS), repeats)
        gemv = measure_gemv(cfg, gemv_bytes, repeats)
    return {**gemm, **gemv, "threads": threads, "repeats": repeats,
            "seconds": time.perf_counter() - t0}


def roofline_fractions(cfg: Qwen3Config, ceilings: dict, *, prompt_len: int, gen_len: int,
                       prefill_s: float, decode_s: float, dtype_bytes: float) -> dict:
    """Achieved rates of a bench cell and their fractions of the measured ceilings.

    prefill: model_flops(prompt_len) / prefill_s over gemm_gflops; decode: the bytes of the
    gen_len steps (weights + the growing KV cache) / decode_s over gemv_gb_s.
    `prefill_s`/`decode_s` are the phase medians (decode: all gen_len steps together).
    """
    prefill_gflops = model_flops(cfg, prompt_len) / prefill_s / 1e9
    decode_gb_s = decode_bytes(cfg, dtype_bytes, prompt_len, gen_len) / decode_s / 1e9
    return {"gemm_gflops": ceilings["gemm_gflops"], "gemv_gb_s": ceilings["gemv_gb_s"],
            "prefill_gflops": prefill_gflops, "prefill_fraction": prefill_gflops / ceilings["gemm_gflops"],
            "decode_gb_s": decode_gb_s, "decode_fraction": decode_gb_s / ceilings["gemv_gb_s"],
            "prefill_flops": model_flops(cfg, prompt_len),
            "decode_bytes_per_step": model_bytes(cfg, dtype_bytes, prompt_len + 1),
            "dtype_bytes": dtype_bytes}


def stream_fractions(cfg: Qwen3Config, dtype_bytes: float, prompt_len: int, gen_len: int,
                     decode_s: list[float], stream_s: list[float], stream_bytes: int,
                     in_order_s: list[float] | None = None) -> dict:
    """Each iteration's decode rate over the rate at which the ranks read their weights right after
    it (bench.weights_read: `stream_bytes` in all, the slowest rank's `stream_s`); the median of
    those paired fractions is the cell's decode fraction, and replaces the GEMV one.

    The read ceiling is the node's: under `sequence` every rank reads a whole copy, under `layer`
    the stages read at once where decode runs them in turn, so those fractions show what the layout
    leaves of the node's bandwidth. `in_order_s` (bench.weights_read_in_order) reads the same bytes
    in a step's order, the layout's own ceiling: `decode_fraction_in_order` is gen_len such reads
    over the iteration's decode time (the KV cache left out, so it errs low), how close the engine
    comes to what its layout allows.
    """
    if len(decode_s) != len(stream_s) or not decode_s:
        raise ValueError(f"{len(decode_s)} decode times against {len(stream_s)} weight reads")
    step_bytes = decode_bytes(cfg, dtype_bytes, prompt_len, gen_len)
    stream = [stream_bytes / s / 1e9 for s in stream_s]
    paired = [step_bytes / d / 1e9 / g for d, g in zip(decode_s, stream, strict=True)]
    out = {"stream_gb_s": statistics.median(stream),
           "stream_gb_s_best": max(stream), "stream_bytes": stream_bytes,
           "decode_fraction": statistics.median(paired), "decode_fraction_rounds": paired}
    if in_order_s is not None:
        if len(in_order_s) != len(decode_s):
            raise ValueError(f"{len(decode_s)} decode times against {len(in_order_s)} reads in order")
        own = [gen_len * r / d for d, r in zip(decode_s, in_order_s, strict=True)]
        out.update(decode_fraction_in_order=statistics.median(own), decode_fraction_in_order_rounds=own)
    return out


def main(argv: list[str] | None = None) -> int:
    """python -m pipeline ceilings (--preset qwen3-0.6b | --export DIR) [--prompt-len 128] [--threads 2]
    [--out F.json]: measure the ceilings at the model's shapes; print them, or write them (atomically)."""
    import argparse
    import json
    import sys

    from model_export.atomic import write_json_atomic
    from model_export.config import PRESETS
    from model_export.reader import open_export

    p = argparse.ArgumentParser(description=main.__doc__)
    model = p.add_mutually_exclusive_group()
    model.add_argument("--preset", default="qwen3-0.6b", choices=sorted(PRESETS))
    model.add_argument("--export", help="take the model's shapes from this export instead")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="write the ceilings to this JSON file (default: print them)")
    args = p.parse_args(argv)
    try:
        cfg = open_export(args.export).cfg if args.export else Qwen3Config(**PRESETS[args.preset])
    except (OSError, ValueError) as e:  # a clear line before the measurement
        print(f"error: {e}", file=sys.stderr)
        return 2
    ceilings = measure_ceilings(cfg, args.prompt_len, args.threads)
    if args.out:
        write_json_atomic(args.out, ceilings)
    else:
        print(json.dumps(ceilings, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
