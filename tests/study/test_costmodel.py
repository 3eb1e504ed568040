"""The alpha-beta + roofline cost model on synthetic inputs (TEST DATA: made-up timings, no runs)."""

from __future__ import annotations

import json
import math

import pytest

from model_export.config import PRESETS, Qwen3Config
from pipeline.study import costmodel as cm
from pipeline.study.roofline import attention_pairs

CFG06 = Qwen3Config(**PRESETS["qwen3-0.6b"])
RATES = cm.Rates(f_mm=90e9, f_att=30e9, f_dec=90e9, bandwidth=24e9)  # per core, per node
NET = cm.Network(alpha=5e-6, beta=2e-10)


def fake_run(strategy: str, algo: str, P: int, T: int, prefill_tps: float, decode_tps: float,
             gen_len: int = 8, dtype: str = "float32", cfg: Qwen3Config = CFG06) -> dict:
    """A bench result with made-up timings: only the keys the cost model reads."""
    threads = max(1, 2 // P)
    return {"cell": {"parallel_strategy": strategy, "attention_algo": algo, "nranks": P, "prompt_len": T,
                     "gen_len": gen_len, "threads_per_rank": threads},
            "environment": {"cores": 2, "oversubscribed": P * threads > 2},
            "model": {"config": cfg.to_dict(), "dtype": dtype},
            "prefill": {"median_s": T / prefill_tps, "tokens_per_s": prefill_tps, "comm_s": 0.0},
            "decode": {"median_s": gen_len / decode_tps, "tokens_per_s": decode_tps, "comm_s": 0.0}}


def curve(result: dict, strategy: str, T: int, key: str, algo: str = "online_softmax") -> dict[int, float]:
    return {row["nranks"]: row[key] for row in result["groups"][0]["curves"]
            if row["strategy"] == strategy and row["prompt_len"] == T and row["feasible"]
            and row["attention_algo"] == algo}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_calibration_reproduces_the_single_rank_cell(dtype):
    run = fake_run("headwise", "online_softmax", 1, 128, prefill_tps=201.5, decode_tps=9.7, dtype=dtype)
    result = cm.build([run], comm=None)
    cell = result["groups"][0]["cells"][0]
    assert cell["calibration_cell"]
    assert cell["predicted_prefill_tok_s"] == pytest.approx(201.5, rel=1e-9)
    assert cell["predicted_decode_tok_s"] == pytest.approx(9.7, rel=1e-9)
    assert cell["predicted_prefill_bound"] == "compute" and cell["predicted_decode_bound"] == "memory"
    cal = result["groups"][0]["calibration"]["online_softmax"]
    assert cal["checks"] == []
    # bf16 reads half the bytes in the same time: half the effective bandwidth
    expected_gb_s = 9.7 / 8 * sum(cm.model_bytes(CFG06, 4 if dtype == "float32" else 2, 128 + i + 1)
                                  for i in range(8)) / 1e9
    assert cal["mem_gb_s_per_node"] == pytest.approx(expected_gb_s)


def test_two_rate_fit_recovers_rates_from_the_models_own_predictions():
    place = cm.local_placement(1, cores=2, threads_per_rank=2)
    runs = []
    for T in (128, 4096):
        p = cm.predict(CFG06, "headwise", 1, T, place, RATES, NET, 4, gen_len=4)
        runs.append(fake_run("headwise", "standard", 1, T, p["prefill_tok_s"], p["decode_tok_s"], gen_len=4))
    cal = cm.calibrate(CFG06, runs)["standard"]
    assert cal["prefill_fit"].startswith("two rates")
    assert cal["gflops_per_core"] == pytest.approx(90, rel=1e-6)
    assert cal["attn_gflops_per_core"] == pytest.approx(30, rel=1e-6)


def test_collectives():
    assert cm.t_allreduce(1000, 1, NET) == cm.t_allgather(1000, 1, NET) == cm.t_bcast(8, 1, NET) == 0
    assert cm.t_allreduce(1000, 2, NET) == pytest.approx(2 * 5e-6 + 1000 * 2e-10)
    assert cm.t_allgather(1000, 4, NET) == pytest.approx(2 * 5e-6 + 0.75 * 1000 * 2e-10)
    assert cm.t_bcast(1000, 8, NET) == pytest.approx(3 * (5e-6 + 1000 * 2e-10))


@pytest.mark.parametrize("P", [1, 2, 3, 4, 8])
def test_sequence_blocks_cover_the_causal_triangle(P):
    T = 1000
    for zigzag in (False, True):
        blocks = cm.sequence_blocks(T, P, zigzag)
        assert sum(t for t, _ in blocks) == T
        assert sum(p for _, p in blocks) == attention_pairs(T)
    contiguous = max(p for _, p in cm.sequence_blocks(T, P, False))
    zigzag = max(p for _, p in cm.sequence_blocks(T, P, True))
    assert zigzag <= contiguous
    if P > 1:  # contiguous: the last rank carries ~(2P-1)/P times its fair share
        assert contiguous / (attention_pairs(T) / P) == pytest.approx((2 * P - 1) / P, rel=0.02)
        assert zigzag / (attention_pairs(T) / P) == pytest.approx(1.0, rel=0.02)


def test_curves_cover_exactly_the_layouts_the_engine_can_run():
    """Head-wise up to one rank per query head (8 in tiny), sequence where every rank gets a prompt
    token; the others carry the engine's reason, naming P."""
    cfg = Qwen3Config(**dict(PRESETS["tiny"], intermediate_size=90))  # 4 KV heads: P=4 splits them, not I
    run = fake_run("headwise", "standard", 1, 16, 2000, 400, cfg=cfg)
    result = cm.build([run], comm=None, ranks=[1, 2, 3, 4, 5, 8, 9], prompt_lens=[2, 4, 16])
    rows = result["groups"][0]["curves"]
    assert {r["strategy"] for r in rows} == {"headwise", "sequence", "sequence_zigzag", "layer",
                                             "layer.headwise2", "sequence_zigzag.headwise2"}
    for row in rows:
        P, T, strategy = row["nranks"], row["prompt_len"], row["strategy"]
        if strategy == "headwise":
            runs = P <= 8
        elif strategy == "layer":
            runs = P <= 2  # tiny has 2 layers
        elif strategy == "layer.headwise2":
            runs = P % 2 == 0 and P // 2 <= 2 and P <= 2 * 8
        elif strategy == "sequence_zigzag.headwise2":
            runs = P % 2 == 0 and T >= P // 2
        else:
            runs = T >= P
        assert row["feasible"] == runs, row
        named = [f"{n} {what}" for n in (P, P // 2) for what in ("ranks", "stages")]
        assert runs or any(x in row["reason"] for x in named), row


def test_predictions_are_sane():
    run = fake_run("headwise", "online_softmax", 1, 128, prefill_tps=200, decode_tps=10)
    result = cm.build([run], comm=None, cluster={"net_alpha_s": 2e-6, "net_bandwidth_gb_s": 25.0})
    rows = result["groups"][0]["curves"]
    for row in rows:
        if row["feasible"]:
            for key in ("prefill_tok_s", "decode_tok_s"):
                assert math.isfinite(row[key]) and row[key] > 0
            if row["nranks"] == 1:
                assert row["prefill"]["comm_s"] == row["decode"]["comm_s"] == 0
    # headwise up to one rank per query head (16; past the 8 KV heads they are replicated)
    assert sorted(curve(result, "headwise", 128, "prefill_tok_s")) == [1, 2, 4, 8, 16]
    # one rank per node: head-wise prefill and decode grow with P (more nodes, more bandwidth)
    for key in ("prefill_tok_s", "decode_tok_s"):
        hw = curve(result, "headwise", 4096, key)
        assert all(hw[a] < hw[b] for a, b in [(1, 2), (2, 4), (4, 8)]), (key, hw)
    # longer prompts are slower per token (attention grows with T)
    hw_long, hw_short = (curve(result, "headwise", T, "prefill_tok_s") for T in (32768, 128))
    assert hw_long[1] < hw_short[1]
    # zig-zag balance never loses to contiguous blocks in prefill
    seq, zz = curve(result, "sequence", 32768, "prefill_tok_s"), curve(result, "sequence_zigzag", 32768,
                                                                        "prefill_tok_s")
    assert all(zz[P] >= seq[P] * (1 - 1e-12) for P in seq)
    assert zz[8] > 1.3 * seq[8]
    # sequence decode replicates the layer weights: it saturates instead of scaling
    sd = curve(result, "sequence", 128, "decode_tok_s")
    assert sd[64] < 2 * sd[1] and curve(result, "headwise", 128, "decode_tok_s")[8] > 4 * sd[1]


def test_same_node_sequence_decode_pays_for_replicated_weights():
    """On one node every sequence rank streams all weights: decode slows down with P."""
    times = [cm.phase_time(CFG06, "sequence", "decode", 1, cm.local_placement(P, 2, max(1, 2 // P)),
                           RATES, NET, 4, context=128)["total_s"] for P in (1, 2)]
    assert times[1] > 1.5 * times[0]
    hw = [cm.phase_time(CFG06, "headwise", "decode", 1, cm.local_placement(P, 2, max(1, 2 // P)),
                        RATES, NET, 4, context=128)["total_s"] for P in (1, 2)]
    assert hw[1] == pytest.approx(hw[0], rel=0.05)  # same bytes over the same bandwidth, plus a little comm


def test_cli(tmp_path, capsys):
    runs = [fake_run("headwise", "online_softmax", 1, 128, 200, 10),
            fake_run("headwise", "online_softmax", 2, 128, 180, 10.5),
            fake_run("sequence", "standard", 2, 128, 150, 5)]  # "standard": no P=1 cell, borrows
    paths = []
    for i, r in enumerate(runs):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(r))
    comm = {"nranks": 2, "allreduce": {"alpha_s": 4e-6, "beta_s_per_byte": 2e-10}, "pingpong": None}
    (tmp_path / "comm.json").write_text(json.dumps(comm))
    out = tmp_path / "costmodel.json"
    rc = cm.main(["--runs", *map(str, paths), "--comm", str(tmp_path / "comm.json"),
                  "--cluster", "cores_per_node=64", "mem_gb_s_per_node=200", "name=test cluster",
                  "--ranks", "1", "2", "4", "--prompt-lens", "128", "1024", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    g = result["groups"][0]
    assert g["intra_node"]["source"].startswith("allreduce") and g["intra_node"]["alpha_s"] == 4e-6
    assert g["cluster"]["cores_per_node"] == 64 and g["cluster"]["mem_gb_s_per_node"] == 200
    assert g["cluster"]["name"] == "test cluster"
    assert g["calibration"]["standard"]["borrowed_from"] == "online_softmax"
    assert g["error"]["cells"] == 3 and g["error"]["held_out_cells"] == 2
    assert {c["cell"] for c in g["cells"]} == {
        "headwise_online_softmax_np1_p128", "headwise_online_softmax_np2_p128", "sequence_standard_np2_p128"}
    assert len(g["curves"]) == 2 * 6 * 2 * 3  # algos x layouts x prompt lengths x ranks
    assert "Allreduce" in result["equations_md"] and "held out" in capsys.readouterr().err


def test_cli_errors(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(fake_run("headwise", "standard", 2, 128, 150, 5)))
    assert cm.main(["--runs", str(path), "--out", str(tmp_path / "o.json")]) == 1
    assert "no single-rank" in capsys.readouterr().err
    assert cm.main(["--runs", str(path), "--cluster", "cores=4", "--out", str(tmp_path / "o.json")]) == 1
    assert "unknown keys" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_equations_document_every_term():
    md = cm.EQUATIONS_MD
    for term in ("W_mm", "W_att", "Q_w", "Q_kv", "f_mm", "f_att", "f_dec", "Allreduce", "Allgather",
                 "zig-zag", "Calibration"):
        assert term in md, term


def test_groups_by_model_and_tiny_config():
    """Runs of two models/dtypes are calibrated separately; a group without a P=1 cell is skipped."""
    tiny = Qwen3Config(**PRESETS["tiny"])
    runs = [fake_run("headwise", "standard", 1, 16, 2000, 400, cfg=tiny),
            fake_run("headwise", "standard", 2, 16, 1500, 350, cfg=tiny),
            fake_run("sequence", "standard", 2, 16, 1200, 300, cfg=tiny),
            fake_run("headwise", "standard", 2, 128, 150, 5, dtype="bfloat16")]
    result = cm.build(runs, comm=None, ranks=[1, 2, 4], prompt_lens=[16, 64])
    assert len(result["groups"]) == 1 and result["groups"][0]["model"]["config"] == tiny.to_dict()
    assert result["skipped"][0]["dtype"] == "bfloat16" and "no single-rank" in result["skipped"][0]["reason"]
    for row in result["groups"][0]["curves"]:
        if row["feasible"]:
            assert math.isfinite(row["prefill_tok_s"]) and row["decode_tok_s"] > 0
    cell = next(c for c in result["groups"][0]["cells"] if c["calibration_cell"])
    assert cell["predicted_prefill_tok_s"] == pytest.approx(2000, rel=1e-9)
    assert cell["predicted_decode_tok_s"] == pytest.approx(400, rel=1e-9)
