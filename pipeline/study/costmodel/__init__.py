"""An alpha-beta + roofline model of the engine: calibrated on this machine and its networks,
checked on held-out cells, extrapolated to a cluster.

    python -m pipeline costmodel --runs results/runs/*.json --comm results/comm.json \
        [--network results/network/*.json] \
        [--cluster cores_per_node=64 mem_gb_s_per_node=200 net_alpha_s=2e-6 net_bandwidth_gb_s=12.5] \
        --out results/costmodel.json

Calibration (per model and stored dtype, per attention algorithm) uses only the single-rank
cells: their prefill gives the compute rates, their decode the memory bandwidth. The fixed cost
per step and per layer comes from a tiny model's decode, the network terms (alpha-beta per
message-size class, and the engine's own cost per call) from pipeline.study.netcal's records of
shared memory and each emulated link speed (comm.json when those are missing). The model then
predicts every measured cell and the netcal held-out cells on their network (errors in the
output), and tokens/s per strategy for P = 1..64 on a cluster described by config values.

The modules, each importing only those above it:

    network      Network (alpha, beta per size class, cost per call), the collectives, the sweep fit
    work         Rates, FixedCost, Placement; LAYOUTS: one function per layout giving each rank's
                 FLOPs, bytes and collectives from partition.shard / prompt_chunks; phase_time, predict
    calibrate    rates from the P=1 cells, the fixed cost, the cost per call
    heldout      measured cells beside predictions, per network; the error summary
    extrapolate  the cluster of the config, the predicted curves
    equations    the equations (rendered by the report's appendix)
    cli          build() the whole record, main()
"""

# The names the tests, the report's inputs and older callers use, from one place.
from pipeline.study.costmodel.calibrate import calibrate, fit_prefill_rates, fixed_cost
from pipeline.study.costmodel.cli import SCHEMA_VERSION, build, main
from pipeline.study.costmodel.equations import EQUATIONS_MD
from pipeline.study.costmodel.extrapolate import CLUSTER_KEYS, parse_cluster
from pipeline.study.costmodel.heldout import error_summary, measured_cell
from pipeline.study.costmodel.network import Network, network_from_comm, t_allgather, t_allreduce, t_bcast
from pipeline.study.costmodel.work import (
    LAYOUTS,
    STRATEGIES,
    FixedCost,
    Rates,
    local_placement,
    phase_time,
    predict,
    sequence_blocks,
    why_not,
)
from pipeline.study.roofline import model_bytes

__all__ = ["CLUSTER_KEYS", "EQUATIONS_MD", "LAYOUTS", "SCHEMA_VERSION", "STRATEGIES", "FixedCost",
           "Network", "Rates", "build", "calibrate", "error_summary", "fit_prefill_rates", "fixed_cost",
           "local_placement", "main", "measured_cell", "model_bytes", "network_from_comm", "parse_cluster",
           "phase_time", "predict", "sequence_blocks", "t_allgather", "t_allreduce", "t_bcast", "why_not"]
