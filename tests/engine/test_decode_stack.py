"""The fused decode step (ext.decode.DecodeStack) is the per-op path, bit for bit.

The engine uses it for decode wherever nothing of the strategy runs between the kernels (one
rank per tensor group: headwise at P = 1, layer stages); the float64-reference tests of
tests/engine then run through it. Here, in one process, the same engine decodes with the stack
and with it switched off: every logit must be identical for float32 and int8 (both take the
one-token int8 GEMV, ext/qgemv.h, whose int32 sums are exact, also over the stack's row copies of
o_proj and down_proj), within float32 rounding for bf16 (whose row copies sum those two products
in another order; on the bf16 units both paths round the activations alike and the products are
exact, so the tiny model's logits may come out identical), for both attention algorithms, 1 and
2 threads, past one block of DECODE_KEYS = 128 keys.
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from ext import decode
from ext import linear as L
from model_export.export import export_checkpoint
from model_export.reader import open_export
from pipeline.engine.comm import Comm
from pipeline.engine.model import Qwen3Engine
from tests.kernels.test_hugepages import vm_flags_of

PROMPT = np.arange(120) * 7 % 500  # 120 prompt tokens + 20 decode steps: two key blocks


def engine(path, algo="online_softmax", threads=1, layout="headwise"):
    return Qwen3Engine(open_export(path), layout, algo, Comm(MPI.COMM_SELF), threads, max_seq=160)


@pytest.fixture(scope="module")
def synthetic_tiny_export_int8(synthetic_tiny_checkpoint):
    """Our int8 export of the `tiny` synthetic preset (the weights of synthetic_tiny_export)."""
    out = synthetic_tiny_checkpoint.parent / "export_int8"
    if not out.exists():
        export_checkpoint(synthetic_tiny_checkpoint, out, dtype="int8", progress=lambda msg: None)
    return out


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("algo", ["online_softmax", "standard"])
@pytest.mark.parametrize("dtype", ["float32", "bf16", "int8"])
def test_fused_decode_is_the_per_op_path_bit_for_bit(synthetic_tiny_export, synthetic_tiny_export_bf16,
                                                     synthetic_tiny_export_int8, dtype, algo, threads):
    path = {"float32": synthetic_tiny_export, "bf16": synthetic_tiny_export_bf16,
            "int8": synthetic_tiny_export_int8}[dtype]
    fused, per_op = engine(path, algo, threads), engine(path, algo, threads)
    assert fused.decode_stack is not None
    per_op.decode_stack = None
    tokens_f, logits_f = fused.generate(PROMPT, 21, keep_logits=True)
    tokens_p, logits_p = per_op.generate(PROMPT, 21, keep_logits=True)
    if dtype == "bf16":  # float32 sums in another order: a few ulps of the largest logit, or none
        np.testing.assert_allclose(logits_f, logits_p, rtol=0, atol=1e-5 * np.abs(logits_p).max())
    else:
        np.testing.assert_array_equal(logits_f, logits_p)
    assert tokens_f == tokens_p
    assert fused.attention_scratch_bytes == per_op.attention_scratch_bytes


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_sequence_on_one_rank_decodes_through_the_stack(synthetic_tiny_export, synthetic_tiny_export_int8,
                                                        dtype):
    """One rank in the sequence level caches every position in order: its decode runs the fused
    stack, with the per-op sequence path's logits and the head-wise cell's."""
    path = {"float32": synthetic_tiny_export, "int8": synthetic_tiny_export_int8}[dtype]
    fused, per_op = engine(path, layout="sequence"), engine(path, layout="sequence")
    assert fused.strategy.positional_cache and fused.decode_stack is not None
    per_op.decode_stack = None
    tokens_f, logits_f = fused.generate(PROMPT, 21, keep_logits=True)
    tokens_p, logits_p = per_op.generate(PROMPT, 21, keep_logits=True)
    np.testing.assert_array_equal(logits_f, logits_p)
    assert tokens_f == tokens_p
    tokens_h, logits_h = engine(path).generate(PROMPT, 21, keep_logits=True)
    np.testing.assert_array_equal(logits_f, logits_h)
    assert tokens_f == tokens_h
    assert fused.generate(PROMPT, 3)[0] == tokens_f[:3]  # reset: the next prefill starts again


@pytest.mark.parametrize("threads", [1, 2])
def test_int8_kernels_give_the_same_tokens_bit_for_bit(synthetic_tiny_export_int8, threads):
    """The VNNI and the plain C int8 GEMV sum the same integers: identical logits."""
    before, runs = L.int8_kernel(), []
    try:
        for kernel in L.int8_kernels():
            L.set_int8_kernel(kernel)
            e = engine(synthetic_tiny_export_int8, threads=threads)
            assert e.decode_stack is not None
            runs.append(e.generate(PROMPT, 9, keep_logits=True))
    finally:
        L.set_int8_kernel(before)
    for tokens, logits in runs[1:]:
        np.testing.assert_array_equal(logits, runs[0][1])
        assert tokens == runs[0][0]


@pytest.mark.parametrize("dtype", ["float32", "bf16", "int8"])
def test_row_copies_are_the_exports_matrices_in_huge_page_memory(synthetic_tiny_export,
                                                                 synthetic_tiny_export_bf16,
                                                                 synthetic_tiny_export_int8, dtype):
    """bf16, int8: o_proj's and down_proj's row copies hold the export's transposed matrices, in
    one mapping advised for 2 MiB pages (ext/hugepages.py); float32 reads the export's own."""
    path = {"float32": synthetic_tiny_export, "bf16": synthetic_tiny_export_bf16,
            "int8": synthetic_tiny_export_int8}[dtype]
    e = engine(path)
    copies = e.decode_stack.row_copies
    if dtype == "float32":
        assert copies == []
        return
    assert len(copies) == len(e.layers)
    for (o_rows, down_rows), w in zip(copies, e.layers.values(), strict=True):
        np.testing.assert_array_equal(o_rows, w.wo_t.T)
        np.testing.assert_array_equal(down_rows, w.w_down_t.T)
        assert "hg" in vm_flags_of(o_rows.ctypes.data) and "hg" in vm_flags_of(down_rows.ctypes.data)


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_copied_weights_are_the_exports_in_huge_page_memory_with_the_same_logits(
        synthetic_tiny_export, synthetic_tiny_export_int8, dtype):
    """weights="copy": every layer matrix and lm_head copied out of the export's map into one
    anonymous mapping advised for 2 MiB pages; the same numbers, so the same logits bit for bit."""
    path = {"float32": synthetic_tiny_export, "int8": synthetic_tiny_export_int8}[dtype]
    mapped = engine(path)
    copied = Qwen3Engine(open_export(path), "headwise", "online_softmax", Comm(MPI.COMM_SELF), 1,
                         max_seq=160, weights="copy")
    for w_m, w_c in zip(mapped.layers.values(), copied.layers.values(), strict=True):
        for k, a in vars(w_m).items():
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(getattr(w_c, k), a)
                assert not np.shares_memory(getattr(w_c, k), a)
    assert not np.shares_memory(copied.lm_head, mapped.lm_head)
    assert "hg" in vm_flags_of(copied.lm_head.ctypes.data)
    assert "hg" in vm_flags_of(next(iter(copied.layers.values())).wq.ctypes.data)
    tokens_m, logits_m = mapped.generate(PROMPT, 6, keep_logits=True)
    tokens_c, logits_c = copied.generate(PROMPT, 6, keep_logits=True)
    np.testing.assert_array_equal(logits_c, logits_m)
    assert tokens_c == tokens_m
    with pytest.raises(ValueError, match="weights 'disk'"):
        Qwen3Engine(open_export(path), "headwise", "online_softmax", Comm(MPI.COMM_SELF), 1,
                    max_seq=160, weights="disk")


def stack_args(path):
    e = engine(path)
    s = e.strategy
    layers = [tuple(getattr(e.layers[i], f) for f in decode.FIELDS) for i in s.layers]
    return e, [layers, s.k_cache, s.v_cache, e.cos, e.sin, 1e-6, 0.25]


def test_bad_arguments_are_refused_with_one_clear_error(synthetic_tiny_export):
    e, args = stack_args(synthetic_tiny_export)
    layers = args[0]
    bad_layer = layers[0][:9] + (layers[0][9][:-1],) + layers[0][10:]  # w_up one row short
    cases = [
        (layers[:1] + [bad_layer], "layer 1 w_up"),
        ([tuple(a.astype(np.int8) if a.ndim == 2 else a for a in layers[0])], "int8 weights need scales"),
        ([], "at least one layer"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            decode.DecodeStack(bad, *args[1:])
    with pytest.raises(ValueError, match="k_cache"):
        decode.DecodeStack(layers, args[1][:, :, :1], *args[2:])
    with pytest.raises(ValueError, match="unknown attention algo"):
        decode.DecodeStack(*args, algo="flash")
    stack = decode.DecodeStack(*args)
    with pytest.raises(ValueError, match="outside the cache"):
        stack.step(e.x[:1], 160)
    with pytest.raises(ValueError, match="x must be"):
        stack.step(e.x[:2], 0)


@pytest.mark.parametrize("layout, nranks", [("headwise", 2), ("headwise", 3), ("layer2.headwise2", 4),
                                           ("sequence", 2)])
def test_fused_decode_with_the_allreduce_hook_is_the_per_op_path(tiny_export, layout, nranks):
    """Head-wise over ranks: o_proj's and down_proj's partial sums go through the strategy's
    Allreduce between the compiled halves of each layer; the logits must not change by a bit."""
    from tests.engine.test_layouts import GQA
    from tests.mpi import REPO, run_mpi

    script = REPO / "tests" / "engine" / "decode_stack_mpi.py"
    proc = run_mpi(nranks, [str(script), str(tiny_export(GQA["kv2_ratio4"])), layout])
    assert proc.returncode == 0, proc.stderr
    expected = "no stack" if layout.startswith("sequence") else "identical"
    assert proc.stdout.strip().splitlines()[-1] == expected, proc.stdout
