"""The matrix across the emulated cluster: cells whose ranks ran on several hosts are predicted
with the network of the cluster's link (TEST DATA: made-up sweeps, timings and hosts; no runs).
Expected communication times are written out from the alpha-beta formulas by hand."""

from __future__ import annotations

import pytest

from pipeline.report import network as network_report
from pipeline.study import costmodel as cm
from pipeline.study.costmodel.network import comm_time, crosses
from tests.study.test_costmodel import CFG06, fake_run
from tests.study.test_costmodel_network import network_record, sweep

SHM = (2e-6, 2e-10, 5e-6, 1e-10)  # alpha, beta below 64 KiB; alpha, beta above
LINK = (30e-6, 5e-8, 200e-6, 8e-9)
SHM_CALL, LINK_CALL = 2e-6, 500e-6  # the engine's own cost per call (tiny model, netcal's overhead)
L, D_BYTES, V_PART = CFG06.num_hidden_layers, 4 * CFG06.hidden_size, 4 * CFG06.vocab_size / 2


def on_hosts(run: dict, hosts: list[str]) -> dict:
    run["environment"]["hosts"] = hosts
    run["placement"] = {"ranks": [{"host": h, "cpus": [i % 2]} for i, h in enumerate(hosts)]}
    return run


def headwise_decode_step(net: tuple[float, float, float, float], per_call: float) -> float:
    """Head-wise at P=2, one decode step: 2L Allreduces of d floats (2 alpha + n beta, small class)
    and the logits' Allgather (alpha + n/2 beta of 4V bytes, large class), each + the cost per call."""
    a_s, b_s, a_l, b_l = net
    return 2 * L * (2 * a_s + D_BYTES * b_s + per_call) + (a_l + V_PART * b_l + per_call)


def matrix(link_gbit: float | None) -> dict:
    calib = fake_run("headwise", "standard", 1, 128, 150, 10)
    crossed = on_hosts(fake_run("headwise", "standard", 2, 128, 150, 10), ["node0", "node1"])
    local = on_hosts(fake_run("headwise", "online_softmax", 2, 128, 150, 10), ["vm", "vm"])
    records = [network_record("shm", None, [], sweep(*SHM), SHM_CALL),
               network_record("10", 10.0, [], sweep(*LINK), LINK_CALL)]
    return cm.build([calib, crossed, local], None, network=records, link_gbit=link_gbit)


def test_cells_across_hosts_are_predicted_on_the_links_network():
    group = matrix(10.0)["groups"][0]
    by = {c["cell"]: c for c in group["cells"]}
    crossed, local = by["headwise_standard_np2_p128"], by["headwise_online_softmax_np2_p128"]
    assert (crossed["network"], crossed["crossed_network"], crossed["nodes"]) == ("10 Gb/s", True, 2)
    assert crossed["predicted_on"] == "10 Gb/s"
    assert (local["network"], local["crossed_network"]) == ("shm", False)
    gen = crossed["gen_len"]
    assert crossed["predicted_decode_comm_s"] == pytest.approx(gen * headwise_decode_step(LINK, LINK_CALL))
    assert local["predicted_decode_comm_s"] == pytest.approx(gen * headwise_decode_step(SHM, SHM_CALL))
    # the report names the crossed cells, their link, the time split and where each rank ran
    rec = network_report.crossed(group["cells"])
    assert rec["cells"] == ["headwise_standard_np2_p128"] and rec["links"] == ["10 Gb/s"]
    text = "\n".join(network_report.crossed_lines(rec))
    assert "crossed the emulated network (10 Gb/s links" in text
    assert "| headwise_standard_np2_p128 | 10 Gb/s | 2 | decode |" in text
    assert "node0: 0; node1: 1" in text


def test_a_link_without_its_calibration_falls_back_to_shared_memory_and_says_so():
    group = matrix(25.0)["groups"][0]
    crossed = next(c for c in group["cells"] if c["crossed_network"])
    assert crossed["network"] == "25 Gb/s" and crossed["predicted_on"] == "shm (its link not calibrated)"
    assert crossed["predicted_decode_comm_s"] == pytest.approx(
        crossed["gen_len"] * headwise_decode_step(SHM, SHM_CALL))
    unknown = next(c for c in matrix(None)["groups"][0]["cells"] if c["crossed_network"])
    assert unknown["network"] == "emulated link (speed not given)"


def test_two_level_layout_across_nodes_keeps_its_inner_group_on_shared_memory():
    """layer2.headwise2 on [node0, node0, node1, node1]: the head-wise pairs (adjacent ranks) stay
    inside a node, the stage-to-stage send (ranks 2 apart) and the 4-rank calls cross."""
    hosts = ["node0", "node0", "node1", "node1"]
    assert not crosses(hosts, 2, 1) and crosses(hosts, 2, 2) and crosses(hosts, 4)
    shm, link = cm.Network(2e-6, 2e-10, per_call=1e-6), cm.Network(30e-6, 5e-8, per_call=4e-6)
    n = 4096
    calls = [("send", n, 1, 2, 2), ("allreduce", n, 3, 2), ("bcast", n, 1)]
    expected = ((30e-6 + n * 5e-8 + 4e-6)              # send across: alpha + n beta
                + 3 * (2 * 2e-6 + n * 2e-10 + 1e-6)    # 3 Allreduces of a pair inside a node
                + 2 * (30e-6 + n * 5e-8) + 4e-6)       # Bcast over 4 ranks: lg 4 = 2 steps, across
    assert comm_time(calls, 4, shm, link, hosts) == pytest.approx(expected)
    assert comm_time(calls, 4, shm) == pytest.approx(comm_time(calls, 4, shm, link, ["vm"] * 4))


def test_dtypes_never_crash_the_model():
    """float32 and bf16 cells are modelled per dtype; int8's bytes per weight are not: its group is
    listed as not modelled with the reason, the others go on."""
    runs = []
    for dtype, manifest in (("float32", "float32"), ("bf16", "bfloat16"), ("int8", "int8")):
        for P in (1, 2):
            run = fake_run("headwise", "standard", P, 128, 150, 10, dtype=manifest)
            run["cell"]["dtype"] = dtype
            runs.append(run)
    result = cm.build(runs, None)
    assert sorted(g["model"]["dtype"] for g in result["groups"]) == ["bfloat16", "float32"]
    (skipped,) = result["skipped"]
    assert skipped["dtype"] == "int8" and "not modelled" in skipped["reason"]
    assert skipped["cells"] == ["headwise_standard_np1_p128_int8", "headwise_standard_np2_p128_int8"]
    bf16 = next(g for g in result["groups"] if g["model"]["dtype"] == "bfloat16")
    assert bf16["model"]["dtype_bytes"] == 2
    assert [c["cell"] for c in bf16["cells"]] == ["headwise_standard_np1_p128_bf16",
                                                  "headwise_standard_np2_p128_bf16"]


def test_a_low_precision_group_takes_the_in_situ_costs_of_the_float32_cells():
    """The in-situ cells are float32, the messages float32 activations in every weight dtype: a
    bf16 group's network has the same costs per call as float32's."""
    from pipeline.study.costmodel.heldout import record_network

    rec = network_record("10", 10.0, [], sweep(*LINK), LINK_CALL)
    cell = fake_run("headwise", "online_softmax", 2, 128, 150, 10)
    gen, extra = cell["cell"]["gen_len"], 700e-6
    cell["prefill"].update(transfer_s=(2 * L + 1) * extra + 1.0, compute_s=0.5, wait_s=0.0)
    cell["decode"].update(transfer_s=gen * (2 * L + 1) * extra + 1.0, compute_s=1.0, wait_s=0.0)
    rec["comm_calibration"] = [cell]
    f32, _ = record_network(CFG06, rec, 4, "float32")
    bf16, info = record_network(CFG06, rec, 2, "bfloat16")
    assert bf16 == f32 and info["per_call_from"] == ["headwise_online_softmax_np2_p128"]
    assert bf16.per_call > LINK_CALL  # the cell's, not the tiny model's
