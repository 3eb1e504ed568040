"""Beyond this machine: the cluster described by config values, and tokens/s predicted on it."""

from __future__ import annotations

from pathlib import Path

from model_export.config import Qwen3Config
from pipeline.study.costmodel.network import Network
from pipeline.study.costmodel.work import STRATEGIES, FixedCost, Rates, cluster_placement, predict, why_not

# The default cluster network: 100 Gb/s InfiniBand-class (config values override).
DEFAULT_NET_ALPHA_S = 2e-6
DEFAULT_NET_BANDWIDTH_GB_S = 12.5

CLUSTER_KEYS = {
    "name": "label of the cluster in the report",
    "cores_per_node": "cores of one node (default: this machine's)",
    "ranks_per_node": "MPI ranks per node (default 1: a rank uses the whole node and its bandwidth)",
    "gflops_per_core": "effective matmul GFLOP/s per core (default: calibrated here; the attention and "
                       "decode rates scale with it)",
    "mem_gb_s_per_node": "effective streaming bandwidth of a node, GB/s (default: calibrated here)",
    "net_alpha_s": f"network latency per message, s (default {DEFAULT_NET_ALPHA_S})",
    "net_bandwidth_gb_s": f"network bandwidth per link, GB/s (default {DEFAULT_NET_BANDWIDTH_GB_S})",
}


def parse_cluster(items: list[str]) -> dict:
    """key=value pairs (keys in CLUSTER_KEYS), or a JSON/YAML file of them; later items win."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            path = Path(item)
            if not path.is_file():
                raise ValueError(f"--cluster {item!r}: neither key=value nor a file")
            import yaml  # JSON is YAML too

            loaded = yaml.safe_load(path.read_text()) or {}
            out.update(loaded.get("cluster", loaded))
            continue
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    unknown = set(out) - set(CLUSTER_KEYS)
    if unknown:
        raise ValueError(f"--cluster: unknown keys {sorted(unknown)}; known: {sorted(CLUSTER_KEYS)}")
    for key in out:
        if key != "name":
            out[key] = float(out[key])
            if out[key] <= 0:
                raise ValueError(f"--cluster {key} must be positive")
    return out


def cluster_machine(cluster: dict, cal: dict, intra: Network) -> tuple[dict, Rates, Network, Network]:
    """The cluster's description (with defaults filled in), its rates and its two networks."""
    rates = Rates(**cal["rates"])
    scale = 1.0
    if "gflops_per_core" in cluster:
        scale = cluster["gflops_per_core"] * 1e9 / rates.f_mm
    bandwidth = cluster.get("mem_gb_s_per_node", rates.bandwidth / 1e9) * 1e9
    rates = Rates(rates.f_mm * scale, rates.f_att * scale, rates.f_dec * scale, bandwidth)
    desc = {"name": cluster.get("name", "nodes like this machine, 100 Gb/s network"),
            "cores_per_node": int(cluster.get("cores_per_node", cal["cores_per_node"])),
            "ranks_per_node": int(cluster.get("ranks_per_node", 1)),
            "gflops_per_core": rates.f_mm / 1e9, "mem_gb_s_per_node": bandwidth / 1e9,
            "net_alpha_s": cluster.get("net_alpha_s", DEFAULT_NET_ALPHA_S),
            "net_bandwidth_gb_s": cluster.get("net_bandwidth_gb_s", DEFAULT_NET_BANDWIDTH_GB_S),
            "intra_alpha_s": intra.alpha, "intra_beta_s_per_byte": intra.beta,
            "from_config": sorted(k for k in cluster if k != "name")}
    inter = Network(desc["net_alpha_s"], 1 / (desc["net_bandwidth_gb_s"] * 1e9))
    return desc, rates, intra, inter


def predicted_curves(cfg: Qwen3Config, cal: dict, cluster: dict, intra: Network, dtype_bytes: float,
                     ranks: list[int], prompt_lens: list[int], fixed: FixedCost | None = None) -> list[dict]:
    """tok/s per (algorithm, strategy, T, P) on the cluster; the layouts that cannot run say why."""
    desc, _, _, _ = cluster_machine(cluster, cal[sorted(cal)[0]], intra)
    curves = []
    for algo in sorted(cal):
        _, rates, intra_net, inter = cluster_machine(cluster, cal[algo], intra)
        for strategy in STRATEGIES:
            for T in prompt_lens:
                for P in ranks:
                    place = cluster_placement(P, desc["cores_per_node"], desc["ranks_per_node"])
                    row = {"strategy": strategy, "attention_algo": algo, "nranks": P, "prompt_len": T,
                           "nodes": place.nodes}
                    reason = why_not(cfg, strategy, P, T)
                    if reason:
                        curves.append({**row, "feasible": False, "reason": reason})
                        continue
                    net = intra_net if place.nodes == 1 else inter
                    p = predict(cfg, strategy, P, T, place, rates, net, dtype_bytes, fixed=fixed)
                    curves.append({**row, "feasible": True, "prefill_tok_s": p["prefill_tok_s"],
                                   "decode_tok_s": p["decode_tok_s"],
                                   "prefill": p["prefill"], "decode": p["decode"]})
    return curves
