/* The software prefetch of the one-token row kernels (qgemv.h's q8_rows_vnni, gemv.pxd's
   gemv_rows_bf16_units and gemv_row_l2): each 64-byte line is prefetched into L2 (_MM_HINT_T1) on
   Intel CPUs for int8 (16 KiB ahead of the row being read) and bf16 (4 KiB), on AMD CPUs with
   AVX-512 for float32 (4 KiB; elsewhere float32 reads eight rows at once, gemv_8rows). On one Intel
   Xeon (2026-12-02, ~17 GB/s) a decode step's layers took 1.43-1.59x a plain read of their bytes
   without it and 1.12-1.29x with an L1 prefetch 8 KiB ahead; on another (30 GB/s) that L1 prefetch
   made bf16 decode x0.79-0.91 of an L2 one 4 KiB ahead, the fastest there; on that Xeon later, int8
   decode 16 KiB ahead was x1.02-1.06 of 4 KiB and bf16 x0.93 (paired benches); on Zen 4 a prefetch
   gained nothing for int8 (docs/design-notes.md#row-prefetch, #prefetch-l2, #int8-gemv).
   QWEN3_GEMV_PREFETCH=<bytes> (0: none) overrides the three distances, read once. Pasted into each
   module that includes it: static functions. */
#ifndef QWEN3_PREFETCH_H
#define QWEN3_PREFETCH_H
#include <stdlib.h>

enum { ROWS_PF_BF16 = 0, ROWS_PF_INT8 = 1, ROWS_PF_F32 = 2 };

static long rows_prefetch_bytes(int kernel) {
    /* every thread computes the same values (a benign race); `ready`, stored after them with
       release order, keeps a thread from reading one before it is written */
    static long bytes[3];
    static int ready;
    if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
        const char *env = getenv("QWEN3_GEMV_PREFETCH");
        long b = 0, q = 0, f = 0;
        if (env && *env) {
            b = q = f = atol(env);
        } else {
#if defined(__x86_64__) && defined(__GNUC__)
            __builtin_cpu_init();
            if (__builtin_cpu_is("intel")) { b = 4096; q = 16384; }
            /* float32 at one token on Zen 4: one row with this prefetch read 93-100% of plain
               loads where eight rows at once read 78-94% (docs/design-notes.md#f32-row-prefetch) */
            if (__builtin_cpu_is("amd") && __builtin_cpu_supports("avx512f")) f = 4096;
#endif
        }
        bytes[2] = f > 0 ? f : 0;
        bytes[1] = q > 0 ? q : 0;
        bytes[0] = b > 0 ? b : 0;
        __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    }
    return bytes[kernel];
}

/* Prefetch the 64-byte line at p into L2 (not L1: with L1 as the target, 8 KiB ahead, bf16 rows
   took 1.3-1.5x longer on the second Xeon above; #prefetch-l2). */
#define ROWS_PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T1)
#endif
