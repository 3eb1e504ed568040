"""The MPI latency/bandwidth sweep: the fit on synthetic data, and a short run under mpiexec."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.study.commbench import allreduce_alpha_beta, fit_alpha_beta
from tests.mpi import run_mpi


def test_fit_recovers_alpha_beta():
    sizes = np.array([8 << i for i in range(22)])
    times = 3e-6 + sizes * 2e-10
    a, b = fit_alpha_beta(sizes, times)
    assert a == pytest.approx(3e-6, rel=1e-9) and b == pytest.approx(2e-10, rel=1e-9)
    # relative least squares: 10% noise on the big messages does not swamp the latency
    noisy = times * np.where(sizes > 1 << 20, 1.1, 1.0)
    a, _ = fit_alpha_beta(sizes, noisy)
    assert a == pytest.approx(3e-6, rel=0.1)


def test_fit_never_negative():
    a, b = fit_alpha_beta([8, 16, 32], [3e-6, 2e-6, 1e-6])  # times falling with size: b would be < 0
    assert a > 0 and b == 0


def test_allreduce_conversion():
    assert allreduce_alpha_beta(8e-6, 2e-10, 2) == (4e-6, 2e-10)  # 2 lg(2) alpha + 2 (1/2) n beta
    alpha, beta = allreduce_alpha_beta(8e-6, 2e-10, 4)
    assert alpha == pytest.approx(2e-6) and beta == pytest.approx(2e-10 / 1.5)


@pytest.mark.parametrize("nranks", [1, 2])
def test_commbench_runs(nranks, tmp_path):
    out = tmp_path / "comm.json"
    proc = run_mpi(nranks, ["-m", "pipeline", "commbench", "--out", str(out), "--samples", "3",
                            "--sample-ms", "0.5", "--max-bytes", "65536"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["nranks"] == nranks and r["environment"]["nranks"] == nranks
    if nranks == 1:
        assert r["pingpong"] is None and r["allreduce"] is None
        return
    pp, ar = r["pingpong"], r["allreduce"]
    assert pp["sizes_bytes"][0] == 8 and pp["sizes_bytes"][-1] == 65536
    assert ar["sizes_bytes"][0] == 4 and ar["sizes_bytes"][-1] == 65536
    for sweep in (pp, ar):
        assert len(sweep["median_s"]) == len(sweep["sizes_bytes"])
        assert all(t > 0 and np.isfinite(t) for t in sweep["median_s"])
        assert sweep["alpha_s"] >= 0 and sweep["beta_s_per_byte"] >= 0
        assert sweep["alpha_s"] + sweep["beta_s_per_byte"] > 0
