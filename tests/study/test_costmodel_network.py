"""The cost model's network and fixed-cost terms, and its held-out cells per network (TEST DATA:
made-up sweeps and timings generated from known parameters; no runs)."""

from __future__ import annotations

import json
import math

import pytest

from model_export.config import PRESETS, Qwen3Config
from pipeline.report import network as network_report
from pipeline.study import costmodel as cm
from pipeline.study import netcal
from pipeline.study.costmodel.calibrate import per_call_cost
from pipeline.study.costmodel.heldout import tiny_calls
from pipeline.study.costmodel.network import SIZE_CLASSES, comm_time, fit_classes
from pipeline.study.costmodel.work import LAYOUTS
from pipeline.study.roofline import model_flops
from tests.study.test_costmodel import CFG06, fake_run

SIZES = [4 << i for i in range(21)]  # 4 B .. 4 MB, as netcal's sweep


def sweep(alpha_small: float, beta_small: float, alpha_large: float, beta_large: float, P: int = 2) -> dict:
    """A comm.json whose Allreduce times follow the model's formula with one (alpha, beta) per class."""
    lg = math.ceil(math.log2(P))
    times = [2 * lg * (alpha_small if n <= SIZE_CLASSES[0] else alpha_large)
             + 2 * (P - 1) / P * n * (beta_small if n <= SIZE_CLASSES[0] else beta_large) for n in SIZES]
    return {"nranks": P, "allreduce": {"sizes_bytes": SIZES, "median_s": times, "alpha_s": alpha_small,
                                       "beta_s_per_byte": beta_large}, "pingpong": None}


def test_size_classes_recover_each_line():
    comm = sweep(30e-6, 5e-8, 200e-6, 8e-9)
    (up1, a1, b1), (up2, a2, b2) = fit_classes(SIZES, comm["allreduce"]["median_s"], 2)
    assert up1 == SIZES[14] and math.isinf(up2)
    assert (a1, b1) == (pytest.approx(30e-6, rel=1e-6), pytest.approx(5e-8, rel=1e-6))
    assert (a2, b2) == (pytest.approx(200e-6, rel=1e-6), pytest.approx(8e-9, rel=1e-6))
    net, info = cm.network_from_comm(comm, per_call=7e-6)
    assert net.at(4096) == (a1, b1) and net.at(1 << 20) == (a2, b2) and info["per_call_s"] == 7e-6
    # an Allreduce of n bytes at P=2 costs 2 alpha + n beta (+ the engine's own cost per call)
    assert cm.t_allreduce(1 << 20, 2, net) == pytest.approx(2 * a2 + (1 << 20) * b2 + 7e-6)


def overhead_record(step_s: float, layer_s: float, comm: dict, per_call: float) -> dict:
    """netcal's `overhead`: decode steps of the tiny model that follow a known fixed cost, and at
    P=2 also the sweep's collectives and a known cost per call."""
    net, _ = cm.network_from_comm(comm)
    deep = netcal.OVERHEAD_LAYERS[-1]
    calls = [("allreduce", 4 * 64, 2 * deep), ("allgather", 4 * 512, 1)]
    runs = [{"layers": L, "nranks": 1, "decode_step_s": step_s + layer_s * L} for L in netcal.OVERHEAD_LAYERS]
    two = step_s + layer_s * deep + comm_time(calls, 2, net) + per_call * (2 * deep + 1)
    return {"preset": "tiny", "runs": [*runs, {"layers": deep, "nranks": 2, "decode_step_s": two}]}


def test_fixed_cost_and_cost_per_call_recovered():
    comm = sweep(30e-6, 5e-8, 200e-6, 8e-9)
    rec = overhead_record(0.4e-3, 25e-6, comm, per_call=12e-6)
    fixed, info = cm.fixed_cost(rec)
    assert fixed.step_s == pytest.approx(0.4e-3) and fixed.layer_s == pytest.approx(25e-6)
    assert info["layer_s"] == fixed.layer_s
    net, _ = cm.network_from_comm(comm)
    assert per_call_cost(rec, tiny_calls(rec), net) == pytest.approx(12e-6)
    assert cm.fixed_cost(None)[0] == cm.FixedCost()  # nothing measured: no fixed term


def test_fixed_cost_is_beyond_the_weights_read():
    """A step that also reads its weights (recorded beside it, growing with the depth) has the same
    fixed cost and cost per call once each run's read is taken out; the report line gives both."""
    comm = sweep(30e-6, 5e-8, 200e-6, 8e-9)
    rec = overhead_record(0.1e-3, 4e-6, comm, per_call=12e-6)
    for r in rec["runs"]:  # 5.6 us per layer of reading at P=1; each of 2 ranks reads half
        r["weights_read_step_s"] = 5.6e-6 * r["layers"] / r["nranks"]
        r["weights_bytes"] = 196_000 * r["layers"] // r["nranks"]
        r["decode_step_s"] += r["weights_read_step_s"]
    fixed, info = cm.fixed_cost(rec)
    assert fixed.step_s == pytest.approx(0.1e-3) and fixed.layer_s == pytest.approx(4e-6)
    assert info["measured_step_s"]["28"] == pytest.approx(0.1e-3 + 28 * 9.6e-6)
    net, _ = cm.network_from_comm(comm)
    assert per_call_cost(rec, tiny_calls(rec), net) == pytest.approx(12e-6)
    line = network_report.fixed_cost_line(info)
    assert "0.212 ms per decode step at 28 layers" in line and "0.157 ms of which" in line
    assert "5.5 MB" in line


@pytest.mark.parametrize("P", [1, 2, 4, 8])
def test_headwise_work_splits_the_models_flops_exactly(P):
    """Summed over ranks, head-wise work is the whole model's (roofline.model_flops, computed
    independently from the full shapes); sequence work per rank covers the prompt once."""
    cfg = Qwen3Config(**PRESETS["qwen3-0.6b"])
    T = 64
    work = LAYOUTS["headwise"](cfg, P, T, 1, True, 4)
    total = sum(w.mm_flops + w.att_flops for w in work.ranks)
    assert total == pytest.approx(model_flops(cfg, T), rel=1e-12)
    seq = LAYOUTS["sequence_zigzag"](cfg, P, T, 1, True, 4)
    L, M = cfg.num_hidden_layers, sum(k * n for k, n in [(1024, 2048), (1024, 1024), (1024, 1024),
                                                           (2048, 1024), (1024, 3072), (1024, 3072),
                                                           (3072, 1024)])
    whole = 2 * L * M * T + 2 * cfg.hidden_size * cfg.vocab_size
    assert sum(w.mm_flops for w in seq.ranks) == pytest.approx(whole)


def network_record(link: str, gbit: float | None, runs: list[dict], comm: dict, per_call: float,
                   calibration: list[dict] | None = None) -> dict:
    return {"link": link, "link_gbit": gbit, "nodes": 1 if link == "shm" else 2, "skipped": None,
            "comm": comm, "overhead": overhead_record(0.3e-3, 20e-6, comm, per_call),
            "calibration": calibration or [], "runs": runs}


def with_split(run: dict, transfer: float, hosts: list[str]) -> dict:
    for phase in ("prefill", "decode"):
        compute = run[phase]["median_s"] - transfer
        run[phase].update({"transfer_s": transfer, "wait_s": 0.01, "compute_s": compute})
    run["environment"]["hosts"] = hosts
    run["placement"] = {"ranks": [{"host": h, "cpus": [i]} for i, h in enumerate(hosts)]}
    return run


def test_held_out_cells_per_network():
    calib = [fake_run("headwise", "standard", 1, 128, 150, 10)]
    held = [with_split(fake_run("headwise", "standard", 2, 128, 150, 10), 0.05, ["node0", "node1"])]
    shm_comm, slow_comm = sweep(2e-6, 2e-10, 5e-6, 1e-10), sweep(30e-6, 5e-8, 200e-6, 8e-9)
    records = [network_record("shm", None, [with_split(fake_run("headwise", "standard", 2, 128, 150, 10),
                                                       0.02, ["vm", "vm"])], shm_comm, 2e-6, calib),
               network_record("1", 1.0, held, slow_comm, 500e-6, calib),
               {"link": "10", "link_gbit": 10.0, "skipped": "emulated cluster unavailable: needs root"}]
    result = cm.build(calib, None, network=records)
    net = result["groups"][0]["network"]
    assert [n["network"] for n in net["networks"]] == ["shm", "1 Gb/s", "10 Gb/s"]
    assert net["networks"][2]["skipped"].endswith("needs root")
    by = {c["network"]: c for c in net["cells"]}
    assert by["1 Gb/s"]["crossed_network"] and not by["shm"]["crossed_network"]
    # the slower network and its larger cost per call give the larger communication term
    assert by["1 Gb/s"]["predicted_decode_comm_s"] > 10 * by["shm"]["predicted_decode_comm_s"]
    assert result["fixed_cost"]["layer_s"] == pytest.approx(20e-6)
    rows = {(r["network"], r["phase"]): r for r in net["error"]}
    r = rows[("1 Gb/s", "decode")]
    assert r["cells"] == 1 and r["mean_abs_error_pct"] == pytest.approx(abs(by["1 Gb/s"]["decode_error_pct"]))
    assert r["comm_over_transfer"] == [pytest.approx(by["1 Gb/s"]["predicted_decode_comm_s"] / 0.05)]
    text = "\n".join(network_report.lines(network_report.records(result["groups"][0], result["fixed_cost"])))
    assert "10 Gb/s: not measured (emulated cluster unavailable: needs root)" in text
    assert "node0: 0; node1: 1" in text and "| headwise_standard_np2_p128 | 1 Gb/s | yes |" in text


def test_netcal_writes_why_when_the_cluster_cannot_run(tmp_path, monkeypatch):
    from pipeline.study import cluster

    def refuse() -> None:
        raise cluster.ClusterError("the emulated cluster needs root (network namespaces, veth, tc)")

    monkeypatch.setattr(cluster, "check_host", refuse)
    out = tmp_path / "link1.json"
    assert netcal.main(["--export", "x", "--link", "1", "--cells", "headwise_standard_np2_p128",
                        "--workdir", str(tmp_path), "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["skipped"].startswith("emulated cluster unavailable: the emulated cluster needs root")
    assert netcal.calibration_cells(["sequence_online_softmax_np2_p128", "headwise_standard_np2_p64"]) == [
        "headwise_online_softmax_np1_p128", "headwise_standard_np1_p64"]


def test_netcal_rejects_bad_input(capsys):
    for argv in (["--link", "fast"], ["--link", "1", "--nodes", "1"], ["--link", "shm", "--cells", "nope"]):
        with pytest.raises(SystemExit):
            netcal.parse_args(["--export", "x", "--out", "o.json", *argv])
        assert "error:" in capsys.readouterr().err


def test_model_unchanged_without_network_records():
    """No netcal record: no fixed term, the old intra-node network (comm.json or assumed)."""
    runs = [fake_run("headwise", "standard", P, 128, 150, 10) for P in (1, 2)]
    result = cm.build(runs, None)
    assert result["fixed_cost"]["step_s"] == 0 and result["groups"][0]["network"]["networks"] == []
    assert CFG06.num_hidden_layers == 28


def test_calls_on_sub_communicators_and_point_to_point():
    """A two-level layout's calls name their communicator's size; "send" is one message."""
    net = cm.Network(alpha=10e-6, beta=1e-9, per_call=1e-6)
    n = 4096
    assert comm_time([("allreduce", n, 3, 2)], 8, net) == pytest.approx(3 * (2 * 10e-6 + n * 1e-9 + 1e-6))
    assert comm_time([("allreduce", n, 1)], 8, net) == pytest.approx(6 * 10e-6 + 2 * 7 / 8 * n * 1e-9 + 1e-6)
    assert comm_time([("send", n, 5)], 2, net) == pytest.approx(5 * (10e-6 + n * 1e-9 + 1e-6))
    assert comm_time([("send", n, 5)], 1, net) == 0


def test_one_thread_calibration_cell_scales_bandwidth_to_the_node():
    """netcal calibrates on P=1 cells of one thread: the node's bandwidth is the cell's stream
    rate times cores / cores used (decode bytes from roofline.model_bytes, independently)."""
    two = fake_run("headwise", "standard", 1, 128, 150, 10)  # 2 threads on the 2 cores
    one = fake_run("headwise", "standard", 1, 128, 150, 10)
    one["cell"]["threads_per_rank"] = 1
    steps = sum(cm.model_bytes(CFG06, 4, 128 + i + 1) for i in range(two["cell"]["gen_len"]))
    bw_two = cm.calibrate(CFG06, [two])["standard"]["mem_gb_s_per_node"]
    bw_one = cm.calibrate(CFG06, [one])["standard"]["mem_gb_s_per_node"]
    assert bw_two == pytest.approx(steps / two["decode"]["median_s"] / 1e9)
    assert bw_one == pytest.approx(2 * bw_two)
    # and a one-thread rank alone on the node streams at its share (1 of 2 cores): its own cell back
    cell = cm.build([one], None)["groups"][0]["cells"][0]
    assert cell["predicted_decode_tok_s"] == pytest.approx(10, rel=1e-9)
    assert cell["predicted_prefill_tok_s"] == pytest.approx(150, rel=1e-9)
    assert cm.local_placement(1, 2, 1).bandwidth_share() == 0.5
    assert cm.local_placement(2, 2, 1).bandwidth_share() == cm.local_placement(4, 2, 1).bandwidth_share() * 2


def test_cost_per_call_in_situ_per_size_class_and_waiting_per_second_of_compute():
    """A P=2 head-wise cell whose transfer is the sweep's prediction plus a known cost per call of
    each size class and whose waiting is a known fraction of its compute gives them back. Its calls,
    counted by hand: prefill 2L Allreduces of 128 x 1024 x 4 B = 512 KiB and the logits' Allgather
    (V x 4 / 2 B per rank), all above 64 KiB; a decode step 2L Allreduces of 4 KiB below it and
    the same Allgather above."""
    from pipeline.study.costmodel.heldout import in_situ

    comm = sweep(30e-6, 5e-8, 200e-6, 8e-9)
    net, _ = cm.network_from_comm(comm)
    run = fake_run("headwise", "online_softmax", 2, 128, 150, 10)
    L, gen, small, large = CFG06.num_hidden_layers, run["cell"]["gen_len"], 300e-6, 900e-6
    sweep_pre = 2 * L * (2 * 200e-6 + (512 << 10) * 8e-9) + 200e-6 + CFG06.vocab_size * 4 / 2 * 8e-9
    sweep_dec = 2 * L * (2 * 30e-6 + 4096 * 5e-8) + 200e-6 + CFG06.vocab_size * 4 / 2 * 8e-9
    run["prefill"].update(transfer_s=sweep_pre + (2 * L + 1) * large, compute_s=0.5, wait_s=0.04)
    run["decode"].update(transfer_s=gen * (sweep_dec + 2 * L * small + large), compute_s=1.5, wait_s=0.12)
    got = in_situ(CFG06, [run], net, 4)
    (up1, x1), (up2, x2) = got["per_call_classes"]
    assert (up1, x1, x2) == (64 << 10, pytest.approx(small), pytest.approx(large)) and math.isinf(up2)
    assert got["wait_fraction"] == pytest.approx(0.16 / 2.0) and got["wait_per_call_s"] == 0
    # waiting that is a skew per call instead (a tiny model's): 20 µs x (57 + 8 x 57) calls
    for phase, calls in (("prefill", 2 * L + 1), ("decode", gen * (2 * L + 1))):
        run[phase]["wait_s"] = calls * 20e-6
    skew = in_situ(CFG06, [run], net, 4)
    assert skew["wait_per_call_s"] == pytest.approx(20e-6)
    assert skew["wait_fraction"] == pytest.approx(0, abs=1e-12)
    slow = cm.Network(net.alpha, net.beta, net.classes, wait_fraction=got["wait_fraction"],
                      per_call_classes=got["per_call_classes"])
    place, rates = cm.local_placement(2, 2, 1), cm.Rates(1e11, 1e11, 1e11, 2e10)
    t = cm.phase_time(CFG06, "headwise", "decode", 1, place, rates, slow, 4, context=128)
    assert t["comm_s"] == pytest.approx(sweep_dec + 2 * L * small + large)
    busy = max(t["flop_s"], t["memory_s"]) + t["fixed_s"]  # decode: the FLOPs hide under the stream
    assert t["wait_s"] == pytest.approx(0.08 * busy)
    assert t["total_s"] == pytest.approx(busy + t["comm_s"] + t["wait_s"])
    pre = cm.phase_time(CFG06, "headwise", "prefill", 128, place, rates, slow, 4)
    assert pre["total_s"] == pytest.approx(pre["flop_s"] + pre["memory_s"] + pre["fixed_s"] + pre["comm_s"]
                                           + 0.08 * (pre["flop_s"] + pre["memory_s"] + pre["fixed_s"]))


def test_rank_speed_among_others_is_the_median_of_every_sessions_cells():
    """A P=2 cell whose measured compute is twice the model's busy time gives speed 0.5 per phase;
    the speed at P is the median over the samples of every session; pipeline cells are left out
    (a stage's compute is its own, the prediction the whole path); the slowed calibration scales
    every rate."""
    from pipeline.study.costmodel.heldout import concurrency, rank_speeds, slowed

    calib = [fake_run("headwise", "standard", 1, 128, 150, 10)]
    cal = cm.calibrate(CFG06, calib)
    net = cm.Network(5e-6, 2e-10)
    run = fake_run("headwise", "standard", 2, 128, 150, 10)
    rates = cm.Rates(**cal["standard"]["rates"])
    p = cm.predict(CFG06, "headwise", 2, 128, cm.local_placement(2, 2, 1), rates, net, 4,
                   gen_len=run["cell"]["gen_len"])
    for phase, speed in (("prefill", 0.5), ("decode", 0.8)):
        run[phase]["compute_s"] = (p[phase]["total_s"] - p[phase]["comm_s"]) / speed
    layer = fake_run("layer", "standard", 2, 128, 150, 10)
    layer["prefill"]["compute_s"] = layer["decode"]["compute_s"] = 1.0
    samples = rank_speeds(CFG06, [run, layer], cal, net, 4, cm.FixedCost())
    assert samples == [(2, pytest.approx(0.5), pytest.approx(0.8))]
    speed = concurrency([*samples, (2, 0.9, 0.6), (2, 0.7, 0.7), (4, 0.3, 0.2)])
    assert speed[2] == (pytest.approx(0.7), pytest.approx(0.7)) and speed[4] == (0.3, 0.2)
    r, s = cal["standard"]["rates"], slowed(cal, (0.5, 0.8))["standard"]["rates"]
    assert s["f_mm"] == pytest.approx(0.5 * r["f_mm"])
    assert s["bandwidth"] == pytest.approx(0.8 * r["bandwidth"])
