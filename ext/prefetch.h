/* The software prefetch distance of the one-token row kernels (qgemv.h's q8_rows_vnni, gemv.pxd's
   gemv_rows_bf16_units), in bytes ahead of the row being read: 8 KiB on Intel CPUs, none
   elsewhere. On an Intel Xeon (2026-12-02) a decode step's layers took 1.43-1.59x a plain read
   of their bytes without it and 1.12-1.29x with it; on Zen 4 a prefetch gained nothing for int8
   (docs/design-notes.md#row-prefetch, #int8-gemv). QWEN3_GEMV_PREFETCH=<bytes> (0: none)
   overrides, read once. Pasted into each module that includes it: a static function. */
#ifndef QWEN3_PREFETCH_H
#define QWEN3_PREFETCH_H
#include <stdlib.h>

static long rows_prefetch_bytes(void) {
    static long bytes = -1;   /* every thread computes the same value: a benign race */
    if (bytes < 0) {
        const char *env = getenv("QWEN3_GEMV_PREFETCH");
        long b = 0;
        if (env && *env) {
            b = atol(env);
        } else {
#if defined(__x86_64__) && defined(__GNUC__)
            __builtin_cpu_init();
            b = __builtin_cpu_is("intel") ? 8192 : 0;
#endif
        }
        bytes = b > 0 ? b : 0;
    }
    return bytes;
}
#endif
