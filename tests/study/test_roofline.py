"""Roofline helpers: the FLOP and byte counts by hand, and the ceilings' measurement (briefly)."""

from __future__ import annotations

import math

import pytest

from model_export.config import PRESETS, Qwen3Config
from pipeline.study.roofline import (
    decode_bytes,
    layer_matmul_params,
    measure_ceilings,
    model_bytes,
    model_flops,
    roofline_fractions,
    stream_fractions,
)
from tests.tiny import QWEN3_06B_PARAMS

# A config of our own (not the `tiny` preset, which may change) so the hand count stays valid.
HAND = Qwen3Config(vocab_size=100, hidden_size=8, intermediate_size=12, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=4,
                   max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1e4,
                   tie_word_embeddings=False)


def test_model_flops_by_hand():
    # per layer: q 8x16 + k 8x8 + v 8x8 + o 16x8 + gate/up/down 3 x 8x12 = 128+64+64+128+288 = 672
    assert layer_matmul_params(HAND) == 672
    T = 5
    matmul = 2 * 672 * T * 3  # 20160
    attention = 4 * 4 * 4 * (1 + 2 + 3 + 4 + 5) * 3  # 4 H D x causal pairs x L = 2880
    head = 2 * 8 * 100  # one lm_head row = 1600
    assert model_flops(HAND, T) == matmul + attention + head == 24640
    # a decode step at position 7 (context 7): one token attending over 8 keys
    assert model_flops(HAND, 1, context=7) == 2 * 672 * 3 + 4 * 4 * 4 * 8 * 3 + 1600
    assert model_flops(HAND, T, lm_head_rows=T) == matmul + attention + 5 * head


def test_model_bytes_by_hand():
    # untied: layers' matrices + the whole lm_head + one embedding row, norms float32
    matrices = 3 * 672 + 100 * 8 + 8
    norms = 3 * (2 * 8 + 2 * 4) + 8
    assert model_bytes(HAND, 4) == 4 * (matrices + norms)
    assert model_bytes(HAND, 2) == 2 * matrices + 4 * norms
    kv_per_position = 2 * 3 * 2 * 4 * 4  # K and V, L layers, Hkv x D float32
    assert model_bytes(HAND, 2, context=10) == 2 * matrices + 4 * norms + 10 * kv_per_position
    assert decode_bytes(HAND, 4, prompt_len=6, gen_len=2) == model_bytes(HAND, 4, 7) + model_bytes(HAND, 4, 8)


def test_qwen3_06b_counts_match_the_issue():
    cfg = Qwen3Config(**PRESETS["qwen3-0.6b"])
    assert model_bytes(cfg, 4) == 4 * QWEN3_06B_PARAMS  # every parameter once (tied: the table is the head)
    assert abs(layer_matmul_params(cfg) * cfg.num_hidden_layers - 440e6) < 1e6  # "2 x 440e6 FLOP per token"


def test_measure_ceilings_is_positive_and_short():
    cfg = Qwen3Config(**PRESETS["tiny"])
    c = measure_ceilings(cfg, prompt_len=16, threads=1, repeats=2, gemv_bytes=32 << 20)
    for key in ("gemm_gflops", "gemv_gb_s", "seconds"):
        assert math.isfinite(c[key]) and c[key] > 0, key
    assert c["gemm_tokens"] == 16 and {s["name"] for s in c["gemm_shapes"]} == {
        "q", "k", "v", "o", "gate", "up", "down"}
    # tiny matrices are replaced by the fixed shape, so the GEMV streams a sizeable buffer set
    assert c["gemv_total_mb"] >= 32 and c["gemv_matrices"] >= 2
    assert c["seconds"] < 10
    with pytest.raises(ValueError):
        measure_ceilings(cfg, prompt_len=0, threads=1)


def test_roofline_fractions():
    ceilings = {"gemm_gflops": 100.0, "gemv_gb_s": 20.0}
    f = roofline_fractions(HAND, ceilings, prompt_len=5, gen_len=2, prefill_s=24640 / 50e9,
                           decode_s=decode_bytes(HAND, 4, 5, 2) / 10e9, dtype_bytes=4)
    assert f["prefill_fraction"] == pytest.approx(0.5) and f["decode_fraction"] == pytest.approx(0.5)


def test_stream_fractions_pair_each_iteration_with_its_reads():
    """The decode fraction is the median over iterations of the iteration's decode rate over the
    rate of the reads of the weights beside it, not the ratio of the two medians."""
    step_bytes = decode_bytes(HAND, 4, 5, 2)
    # iteration rates 10, 20, 30 GB/s against reads at 20, 20, 60 GB/s: fractions 0.5, 1.0, 0.5
    decode_s = [step_bytes / r / 1e9 for r in (10.0, 20.0, 30.0)]
    stream_s = [1e9 / r / 1e9 for r in (20.0, 20.0, 60.0)]
    f = stream_fractions(HAND, 4, 5, 2, decode_s, stream_s, stream_bytes=10**9)
    assert f["decode_fraction_rounds"] == pytest.approx([0.5, 1.0, 0.5])
    assert f["decode_fraction"] == pytest.approx(0.5)  # the medians' ratio would say 1.0
    assert f["stream_gb_s"] == pytest.approx(20.0) and f["stream_gb_s_best"] == pytest.approx(60.0)
    with pytest.raises(ValueError, match="against"):
        stream_fractions(HAND, 4, 5, 2, decode_s, stream_s[:2], stream_bytes=10**9)


def test_fraction_in_order_is_the_steps_worth_of_reads_over_the_decode_time():
    """gen_len reads in a step's order over each iteration's decode seconds, median over iterations;
    absent when no such reads were taken (older runs), refused when they do not pair up."""
    step_bytes = decode_bytes(HAND, 4, 5, 2)
    decode_s, stream_s = [1.0, 2.0, 4.0], [0.1, 0.1, 0.1]
    f = stream_fractions(HAND, 4, 5, 2, decode_s, stream_s, 10**9, in_order_s=[0.4, 0.5, 0.5])
    assert f["decode_fraction_in_order_rounds"] == pytest.approx([0.8, 0.5, 0.25])
    assert f["decode_fraction_in_order"] == pytest.approx(0.5)
    assert f["decode_fraction"] == pytest.approx(step_bytes / 2.0 / 1e10)  # the node's, unchanged
    assert "decode_fraction_in_order" not in stream_fractions(HAND, 4, 5, 2, decode_s, stream_s, 10**9)
    with pytest.raises(ValueError, match="in order"):
        stream_fractions(HAND, 4, 5, 2, decode_s, stream_s, 10**9, in_order_s=[0.4])


def test_reads_in_order_take_the_stages_in_turn(tmp_path):
    """Under mpiexec, two pipeline stages whose layer reads take 0.15 s and 0.25 s and a head read
    of 0.05 s: read in a step's order, 0.45 s (all at once it would be 0.30 s)."""
    from tests.mpi import REPO, run_mpi

    proc = run_mpi(2, [str(REPO / "tests" / "study" / "in_order_mpi.py")])
    assert proc.returncode == 0, proc.stderr
    seconds = float(proc.stdout.split()[-1])
    assert 0.45 <= seconds < 0.45 + 0.1, seconds
