# Helpers of the Snakefile: where things live, which cells the matrix has, and the checks that
# make bad input fail at start with the offending config field named. Everything here runs when
# the workflow is parsed (also for a dry run), before any job starts.

import json
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
from glob import glob

import yaml
from snakemake.exceptions import WorkflowError

from model_export.config import PRESETS, CheckpointError, Qwen3Config
from pipeline.cells import DTYPES, REFERENCE_DTYPE, CellId
from pipeline.engine.partition import layout_ranks, why_not

RUNS = "results/runs"
COMPARISONS = ("dtype", "ranks", "ceilings", "baselines")  # the named comparisons of rules/compare.smk
GGUF_DTYPES = ("f32", "bf16", "q8_0")  # the GGUF files llama.cpp runs on (rule gguf)
COMPARE_PROMPT_LEN = 128  # the seed study's prompt length: every comparison measures at it
# profiles/default/config.yaml gives the workflow machine=100: a measurement (bench, compare, commbench,
# netcal, baseline) holds every share, so it runs alone; any other job holds one, so exports, GGUF
# writes and builds run side by side but never beside a measurement (the `bench` resource alone let
# one run beside a benchmark under --cores 8)
MEASUREMENT = 100
BESIDE = 1
REFERENCE_CACHE = "results/work/reference-runs"  # the float32 runs low-precision cells share (refcache.py)
COMPARE_ALGO = "online_softmax"  # the ranks and ceilings comparisons' attention, as the others' (compare.py)


def get_typed_config(config, schema="config/config.schema.yaml"):
    """The config with command-line values typed as the schema says, before validation.

    `--config ranks=[1,2]` arrives as ["1", "2"] (Snakemake reads lists with YAML's BaseLoader)
    and `--config checkpoint=` as None; this turns them into [1, 2] and "". Values that do not
    convert are left alone for the validation to report with the field's name.
    """
    with open(schema) as f:
        properties = yaml.safe_load(f)["properties"]
    for key, spec in properties.items():
        if key in config:
            config[key] = get_typed_value(config[key], spec)
    return config


def get_typed_value(value, spec):
    kind = spec.get("type")
    if kind == "object" and isinstance(value, dict):
        properties = spec.get("properties", {})
        return {k: get_typed_value(v, properties.get(k, {})) for k, v in value.items()}
    if kind == "boolean" and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if kind == "array" and isinstance(value, list):
        return [get_typed_value(v, spec.get("items", {})) for v in value]
    if kind == "string" and value is None:
        return ""
    if kind in ("integer", "number") and isinstance(value, str):
        try:
            return int(value) if kind == "integer" else float(value)
        except ValueError:
            return value
    return value


def get_model_config():
    """The architecture of the configured model, or a WorkflowError naming the field at fault."""
    if not config["checkpoint"]:
        return Qwen3Config(**PRESETS[config["synthetic_preset"]])
    path = get_checkpoint_dir()
    if not os.path.isdir(path):
        raise WorkflowError(f"config checkpoint: {config['checkpoint']!r} is not a directory "
                            f"(leave it empty for the synthetic {config['synthetic_preset']})")
    try:
        cfg = Qwen3Config.from_json(os.path.join(path, "config.json"))
    except CheckpointError as e:
        raise WorkflowError(f"config checkpoint: {config['checkpoint']!r} is not a Qwen3 "
                            f"checkpoint: {e}") from None
    if not glob(os.path.join(path, "*.safetensors")):
        raise WorkflowError(f"config checkpoint: no *.safetensors file in {config['checkpoint']!r}")
    return cfg


def get_checked_lengths():
    """The prompt lengths, checked against the model's context window (as is the comparisons'
    prompt of COMPARE_PROMPT_LEN plus their gen_len)."""
    limit = MODEL.max_position_embeddings
    for n in config["prompt_lengths"]:
        if n + config["gen_len"] > limit:
            raise WorkflowError(f"config prompt_lengths: {n} + gen_len {config['gen_len']} exceeds "
                                f"the model's max_position_embeddings ({limit})")
    if COMPARE_PROMPT_LEN + config["comparisons"]["gen_len"] > limit:
        raise WorkflowError(f"config comparisons.gen_len: {COMPARE_PROMPT_LEN} + "
                            f"{config['comparisons']['gen_len']} exceeds the model's "
                            f"max_position_embeddings ({limit})")
    return sorted(config["prompt_lengths"])


def get_mpi_launcher():
    """The MPI launcher (Snakemake's `mpi` resource); it must be on PATH here. With an emulated
    cluster, mpiexec across its nodes (python -m pipeline cluster mpiexec)."""
    if config["emulated_cluster"]["nodes"]:
        if os.geteuid() != 0:
            raise WorkflowError("config emulated_cluster: the emulated cluster needs root "
                                "(network namespaces); set nodes: 0 to run on this machine")
        return "python -m pipeline cluster mpiexec"
    launcher = config["mpi_launcher"]
    program = shlex.split(launcher)[0]
    if shutil.which(program) is None:
        raise WorkflowError(f"config mpi_launcher: {program!r} not found on PATH "
                            f"(install MPI, activate the environment, or set mpi_launcher)")
    if config["binding"] != "none" and os.path.basename(program) in ("mpiexec", "mpiexec.hydra"):
        # Hydra's binding options, chosen per job for the machine it runs on (pipeline.engine.binding)
        return f"python -m pipeline launch --bind {config['binding']} --mpiexec {shlex.quote(launcher)}"
    return launcher


def get_model_id():
    """Name of this model's checkpoint and export directories under results/work/."""
    if config["checkpoint"]:
        name = os.path.basename(os.path.normpath(config["checkpoint"]))
    else:
        name = f"synthetic-{config['synthetic_preset']}-seed{config['seed']}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def get_checkpoint_dir():
    if config["checkpoint"]:
        return os.path.abspath(config["checkpoint"])
    return f"results/work/checkpoint/{get_model_id()}"


def get_checkpoint_files():
    """What the export reads: the synthetic rule's directory, or a real checkpoint's files."""
    if not config["checkpoint"]:
        return [get_checkpoint_dir()]
    path = get_checkpoint_dir()
    names = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json"]
    return sorted(f for name in names for f in glob(os.path.join(path, name)))


def get_checkpoint_param(wildcards, input):
    """The checkpoint directory handed to the exporter (its files are the export's input)."""
    return get_checkpoint_dir()


def get_export_dir(dtype=REFERENCE_DTYPE):
    """The export in `dtype` (float32 by default; may be the "{dtype}" wildcard)."""
    return f"results/work/export/{get_model_id()}-{dtype}"


def get_cell_dtype(wildcards):
    """The dtype of a bench job's cell, from its name's suffix ("" for float32)."""
    return wildcards.dtype_suffix[1:] or REFERENCE_DTYPE


def get_cell_export(wildcards):
    return get_export_dir(get_cell_dtype(wildcards))


def get_cell_reference_export(wildcards):
    """A low-precision cell also runs the float32 export, after its timing, for NMSE, KL and top-1."""
    return [get_export_dir()] if get_cell_dtype(wildcards) != REFERENCE_DTYPE else []


def get_reference_option(wildcards, input):
    """--reference-export, and the cache of its float32 runs that the cells share (refcache.py)."""
    if not input.reference:
        return ""
    return f" --reference-export {input.reference} --reference-cache {REFERENCE_CACHE}"  # after --export


def get_compare_files():
    """results/compare/{name}.json of each comparison the config turns on and this machine can run."""
    wanted = [name for name in COMPARISONS if config["comparisons"][name]]  # baselines: a non-empty list
    if not get_compare_rank_cores():  # no C >= 2 that head-wise splits over: no ranks comparison
        wanted = [name for name in wanted if name != "ranks"]
    return [f"results/compare/{name}.json" for name in wanted]


def get_compare_rank_cores():
    """C of the ranks comparison (C ranks x 1 thread against 1 rank x C threads): the most of this
    machine's CPUs head-wise can split over (0: none). From the machine, not --cores, so a dry run
    plans the same report."""
    usable = [p for p in range(2, (os.cpu_count() or 1) + 1)
              if get_not_applicable_reason("headwise", p, COMPARE_PROMPT_LEN) is None]
    return max(usable, default=0)


def get_compare_exports(wildcards):
    """The exports a comparison reads: float32 and bf16 for dtype (float32 the reference), else one per
    configured dtype, float32 first."""
    if wildcards.name == "dtype":
        return [get_export_dir("float32"), get_export_dir("bf16")]
    return [get_export_dir(d) for d in DTYPES if d in config["dtypes"]]


def get_gguf_file(dtype):
    """The GGUF file of the checkpoint in `dtype` (f32, bf16, q8_0, or the "{gguf_dtype}" wildcard)."""
    return f"results/work/gguf/{get_model_id()}-{dtype}.gguf"


def get_compare_ggufs(wildcards):
    """The GGUF files of the baselines comparison: none unless llama.cpp is asked for and both its
    packages (llama-cpp-python, gguf) are installed; otherwise the comparison says it skipped it."""
    import importlib.util

    wanted = wildcards.name == "baselines" and "llamacpp" in config["comparisons"]["baselines"]
    if not wanted or any(importlib.util.find_spec(m) is None for m in ("llama_cpp", "gguf")):
        return []
    return [get_gguf_file(dtype) for dtype in GGUF_DTYPES]


def get_compare_checkpoint(wildcards):
    """The checkpoint's files, which the torch baseline loads (baselines comparison only)."""
    return get_checkpoint_files() if wildcards.name == "baselines" else []


def get_compare_threads(wildcards):
    """Cores of every variant: C for ranks (1 where there is none: the command then says why it
    cannot run), else min(--cores, this machine's CPUs)."""
    return max(1, get_compare_rank_cores()) if wildcards.name == "ranks" else get_machine_cores()


def get_compare_options(wildcards):
    """The options only one comparison takes: the dtype comparison's rank counts, 1 and, where
    head-wise splits the model, 2; the baselines', their checkpoint, GGUF files and names."""
    if wildcards.name == "baselines":
        ggufs = [f"{d}={get_gguf_file(d)}" for d in GGUF_DTYPES if get_compare_ggufs(wildcards)]
        # NMSE/KL/top-1 of every variant against the float32 run the matrix's cells share
        accuracy = ["--reference-cache", REFERENCE_CACHE] if "float32" in config["dtypes"] else []
        return shlex.join(["--checkpoint", get_checkpoint_dir(), "--gguf", *ggufs,
                           "--baselines", *config["comparisons"]["baselines"], *accuracy])
    if wildcards.name in ("ranks", "ceilings"):  # per dtype: one algorithm keeps the run under 30 minutes
        return f"--algos {COMPARE_ALGO}"
    if wildcards.name != "dtype":
        return ""
    ranks = [p for p in (1, 2) if get_not_applicable_reason("headwise", p, COMPARE_PROMPT_LEN) is None]
    return "--ranks " + " ".join(str(p) for p in ranks)


def get_kernel_sources():
    return sorted(glob("ext/*.pyx") + glob("ext/*.pxd") + glob("ext/*.h")) + ["setup.py"]


def get_kernel_libraries():
    """The compiled modules setup.py builds in place, one per ext/*.pyx."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    return [f"{path[:-len('.pyx')]}{suffix}" for path in sorted(glob("ext/*.pyx"))]


def get_engine_sources():
    """What a bench job runs besides the kernels (the engine, the export reader, the bench program):
    editing them reruns the benchmarks."""
    files = glob("pipeline/engine/**/*.py", recursive=True) + ["pipeline/__init__.py", "pipeline/cells.py"]
    files += [f"pipeline/study/{name}.py" for name in ("bench", "stats", "roofline")]
    files += [f"model_export/{name}.py" for name in ("config", "dtypes", "layout", "reader")]
    return sorted(f for f in files if os.path.exists(f))


def get_cells():
    """Every cell of the matrix: (name, applicable, reason when not)."""
    layouts = [(s, p) for s in config["strategies"] for p in sorted(config["ranks"])]
    layouts += [(name, layout_ranks(name)) for name in config.get("layouts", [])]
    dtypes = [d for d in DTYPES if d in config["dtypes"]]  # float32 first, whatever the config's order
    cells = []
    for dtype in dtypes:
        for n in LENGTHS:
            for strategy, p in layouts:
                for algo in get_algorithms(dtype):
                    name = CellId(strategy, algo, p, n, dtype).name
                    reason = get_not_applicable_reason(strategy, p, n)
                    cells.append((name, reason is None, reason))
    return cells


def get_algorithms(dtype):
    """The attention algorithms of a dtype's cells: `algorithms` for float32, else
    `low_precision_algorithms` (attention is float32 in every dtype)."""
    return config["algorithms"] if dtype == "float32" else config["low_precision_algorithms"]


def get_not_applicable_reason(strategy, nranks, prompt_len):
    """Why a cell cannot run (None when it can): the engine's own reason (pipeline.engine.partition)."""
    return why_not(MODEL, strategy, nranks, prompt_len)


def get_run_files():
    return [f"{RUNS}/{name}.json" for name, applicable, _ in get_cells() if applicable]


def get_cell_names():
    return [name for name, _, _ in get_cells()]


def get_not_applicable():
    return [f"{name}={reason}" for name, applicable, reason in get_cells() if not applicable]


def get_report_sources():
    """The report's code: editing it rebuilds the report (not the cells)."""
    return sorted(glob("pipeline/report/*.py")) + ["pipeline/cells.py"]


def get_figure_files():
    per_length = [f"results/figures/{kind}_p{n}.png" for n in LENGTHS for kind in ("throughput", "cells")]
    return per_length + ["results/figures/costmodel.png"]


def get_baseline_files():
    """The Hugging Face baseline's results, one per prompt length (none when config baseline is off)."""
    if not config["baseline"]:
        return []
    return [f"results/baseline/hf_p{n}.json" for n in LENGTHS]


def get_baseline_threads(wildcards):
    """The baseline gets the cores of a 1-rank cell: threads_per_rank, or the job's cores."""
    return config["threads_per_rank"] or get_machine_cores()


def get_cluster_args():
    """pipeline.study.costmodel's --cluster key=value pairs: the config's cluster section, leaving out
    the zeros and empty strings that mean "calibrated on this machine"."""
    keys = ["name", "cores_per_node", "ranks_per_node", "gflops_per_core", "mem_gb_s_per_node",
            "net_alpha_s", "net_bandwidth_gb_s"]
    pairs = [f"{k}={config['cluster'][k]}" for k in keys if config["cluster"][k]]
    return shlex.join(["--cluster", *pairs]) if pairs else ""


def get_workflow_config_json():
    return json.dumps(config, sort_keys=True)


def get_machine_cores():
    """min(--cores, this machine's CPUs); the CPUs alone when Snakemake has no core count."""
    try:
        return max(1, min(int(workflow.cores), os.cpu_count() or 1))
    except (WorkflowError, TypeError, ValueError):
        return os.cpu_count() or 1


def get_bench_threads(wildcards):
    """Total cores of a bench job; pipeline.study.bench gives each rank max(1, threads // P)."""
    if config["threads_per_rank"]:
        return config["threads_per_rank"] * int(wildcards.nranks)
    return get_machine_cores()


def get_job_threads(wildcards, threads):
    """The --threads handed to pipeline.study.bench (all ranks together). threads_per_rank x P when
    configured, even beyond this machine's cores (ranks on other hosts); else the job's cores."""
    if config["threads_per_rank"]:
        return config["threads_per_rank"] * int(wildcards.nranks)
    return threads


def is_long_prompt(wildcards):
    return 0 < config["long_prompt_from"] <= int(wildcards.prompt_len)


def get_iters(wildcards):
    return config["long_prompt_iters"] if is_long_prompt(wildcards) else config["iters"]


def get_warmup(wildcards):
    return config["long_prompt_warmup"] if is_long_prompt(wildcards) else config["warmup"]


def get_tasks(wildcards):
    return int(wildcards.nranks)


def get_cpus_per_task(wildcards, threads):
    """SLURM's --cpus-per-task for an MPI job: each rank's share of the job's threads."""
    return config["threads_per_rank"] or max(1, threads // int(wildcards.nranks))


def get_timeout_prefix():
    """`timeout` in front of the launcher, so a hung benchmark fails its rule instead of waiting."""
    if not config["bench_timeout"]:
        return ""
    return f"timeout --kill-after=30 {config['bench_timeout']}"


def get_partial_report_wanted():
    """After a failed run: rebuild the report from the cells that exist, if it was asked for."""
    targets = {job.rule.name for job in workflow.dag.targetjobs}
    return bool(targets & {"all", "report"}) and bool(glob(f"{RUNS}/*.json"))


def get_stale_files():
    """What a failed run leaves out of date once cells lack a result: verify's outputs and the
    marker of a complete report (removing it makes the next run redo the missing cells)."""
    if all(os.path.exists(f) for f in get_run_files()):
        return []
    stale = ["results/verification.md", "results/verification.json", "results/logs/report.complete"]
    return [f for f in stale if os.path.exists(f)]


def get_partial_report_command():
    """The report rule's command line over whatever cells exist (see `onerror` in the Snakefile)."""
    args = ["python", "-m", "pipeline", "report", "--runs-dir", RUNS, "--cells", *get_cell_names()]
    if get_not_applicable():
        args += ["--not-applicable", *get_not_applicable()]
    if os.path.exists("results/costmodel.json"):
        args += ["--costmodel", "results/costmodel.json"]
    baseline = [f for f in get_baseline_files() if os.path.exists(f)]
    if baseline:
        args += ["--baseline", *baseline]
    args += ["--compare", *[f for f in get_compare_files() if os.path.exists(f)]]
    args += ["--atol", str(config["verify_atol"]), "--rtol", str(config["verify_rtol"]),
             "--workflow-config", get_workflow_config_json(), "--logs-dir", "results/logs/bench",
             "--out-md", "results/report.md", "--out-json", "results/summary.json",
             "--out-csv", "results/summary.csv", "--partial"]
    return shlex.join(args) + " > results/logs/report_partial.log 2>&1"



def get_netcal_files():
    """results/network/{shm,link<G>}.json: the network calibration's records (none when off, or
    when none of its held-out cells is a cell of the matrix)."""
    nc = config["network_calibration"]
    links = (["shm"] if nc["shared_memory"] else []) + [f"link{g:g}" for g in nc["link_gbit"]]
    return [f"results/network/{link}.json" for link in links] if get_netcal_cells() else []


def get_emulated_link_files():
    """The netcal record of the emulated cluster's link when the matrix runs across it (its cells
    are predicted with that link's network) and the network calibration does not list it already."""
    cluster = config["emulated_cluster"]
    own = f"results/network/link{cluster['link_gbit']:g}.json"
    if not (cluster["nodes"] and cluster["link_gbit"] > 0 and get_netcal_cells()):
        return []
    return [] if own in get_netcal_files() else [own]


def get_emulated_link_arg():
    """costmodel's --emulated-link-gbit: the link the matrix's cells ran across ("" when off)."""
    cluster = config["emulated_cluster"]
    return f"--emulated-link-gbit {cluster['link_gbit']:g}" if cluster["nodes"] else ""


def get_netcal_link(wildcards):
    """netcal's --link: "shm", or the link cap in Gb/s of results/network/link<G>.json."""
    return wildcards.link if wildcards.link == "shm" else wildcards.link[len("link"):]


def get_netcal_cells():
    """The held-out cells of the network calibration that are cells of the matrix (the others are
    left out: a held-out cell is a matrix cell measured again across each network), checked at
    parse time (name and layout)."""
    matrix = {name for name, applicable, _ in get_cells() if applicable}
    cells = []
    for name in config["network_calibration"]["cells"]:
        try:
            cell = CellId.parse(name)
        except ValueError as e:
            raise WorkflowError(f"config network_calibration.cells: {e}")
        reason = why_not(MODEL, cell.strategy, cell.nranks, cell.prompt_len)
        if reason:
            raise WorkflowError(f"config network_calibration.cells: {name}: {reason}")
        if name in matrix:
            cells.append(name)
    return cells


def get_cluster_command(action):
    """`python -m pipeline cluster up|down` for the configured emulated cluster ("" when off)."""
    cluster = config["emulated_cluster"]
    if not cluster["nodes"]:
        return ""
    if action == "up":
        return (f"python -m pipeline cluster up --nodes {cluster['nodes']}"
                f" --link-gbit {cluster['link_gbit']}")
    return "python -m pipeline cluster down"
