# Qwen3 parallel strategies on CPUs: export -> build -> bench (MPI) -> verify -> report.
#
#   snakemake --cores 8 report                                  # the whole matrix, regenerated
#   snakemake --cores 2 report --config synthetic_preset=tiny ranks=[1,2]
#   snakemake --cores 8 report --configfile config/full.yaml    # 4 ranks, two-level layouts, HF rule
#   snakemake --cores 8 report --configfile config/long.yaml    # adds prompt lengths 1024, 4096
#
# results/ path scheme (every file the workflow writes):
#   results/work/checkpoint/{model}/         synthetic checkpoint (only when config checkpoint is "")
#   results/work/export/{model}-{dtype}/     exported per-layer subgraph files + manifest.json
#   results/work/gguf/{model}-{f32,bf16,q8_0}.gguf   the checkpoint for llama.cpp (baselines comparison)
#   ext/*.so                                 compiled kernels (built in place by setup.py)
#   results/runs/{strategy}_{algo}_np{P}_p{prompt_len}[_{bf16,int8}].json    one bench JSON per cell
#                                            (pipeline/cells.py: the name, float32 without a suffix)
#   results/verification.{md,json}           every cell against the single-rank reference
#   results/comm.json                        MPI ping-pong + Allreduce sweep (2 ranks): alpha, beta
#   results/network/{shm,link<G>}.json       network calibration: sweep, tiny model, held-out cells on
#                                            shared memory and across emulated nodes at G Gb/s (rule netcal)
#   results/costmodel.json                   alpha-beta model: calibration, predicted vs measured, curves
#   results/baseline/hf_p{prompt_len}.json   HF transformers (torch) on the same checkpoint (optional)
#   results/compare/{name}.json, results/compare/{name}/{variant}_r{round}.json   back-to-back
#                                            comparisons (dtype, ranks, ceilings, baselines) and their rounds' JSONs
#   results/report.md, results/summary.{json,csv}, results/figures/{throughput,cells}_p{prompt_len}.png,
#   results/figures/costmodel.png            (predicted curves beyond this machine)
#   results/logs/{rule}/...log, results/logs/benchmarks/{rule}/...tsv   (not committed)
#
# A crashed or timed-out benchmark fails its rule and keeps its log under results/logs/bench/.
# With --keep-going the other cells still run; the workflow then ends in error and its `onerror`
# hook rebuilds results/report.md from the cells that exist, marking the missing ones, with the
# cost model and HF baseline results if earlier runs left them (Snakemake
# never schedules a job whose input failed, so the report rule itself cannot do this). The hook
# also removes results/verification.* (they no longer describe the cells) and the report's
# marker results/logs/report.complete, so the next run reruns the missing cells and the report
# (Snakemake would otherwise take the partial report as up to date: it does not rerun missing
# intermediate files for an output that exists).

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"


validate(get_typed_config(config), "config/config.schema.yaml", set_default=True)

MODEL = get_model_config()
LENGTHS = get_checked_lengths()
MPI_LAUNCHER = get_mpi_launcher()


wildcard_constraints:
    dtype="|".join(DTYPES),
    dtype_suffix="|".join(f"_{d}" for d in DTYPES[1:]) + "|",  # "" for float32 (pipeline/cells.py)
    strategy=r"headwise|sequence|layer|(layer|sequence)\d+\.headwise\d+",
    algo="standard|online_softmax",
    nranks=r"\d+",
    prompt_len=r"\d+",


localrules:
    all,
    verify,
    costmodel,
    report,


rule all:
    input:
        "results/report.md",
        "results/verification.md",


rule synthetic_checkpoint:
    output:
        directory(get_checkpoint_dir()),
    params:
        preset=config["synthetic_preset"],
        seed=config["seed"],
    resources:
        machine=BESIDE,
    log:
        "results/logs/synthetic_checkpoint.log",
    benchmark:
        "results/logs/benchmarks/synthetic_checkpoint.tsv"
    conda:
        "envs/workflow.yaml"
    shell:
        "python -m pipeline synthetic --preset {params.preset} --seed {params.seed}"
        " --out {output} > {log} 2>&1"


rule export:
    input:
        get_checkpoint_files(),
    output:
        directory(get_export_dir("{dtype}")),
    params:
        checkpoint=get_checkpoint_param,
    resources:
        machine=BESIDE,
    log:
        "results/logs/export_{dtype}.log",
    benchmark:
        "results/logs/benchmarks/export_{dtype}.tsv"
    conda:
        "envs/workflow.yaml"
    shell:
        "python -m pipeline export --checkpoint {params.checkpoint} --out {output} --force"
        " --dtype {wildcards.dtype} > {log} 2>&1"


rule build:
    input:
        get_kernel_sources(),
    output:
        get_kernel_libraries(),
    resources:
        machine=BESIDE,
    log:
        "results/logs/build.log",
    benchmark:
        "results/logs/benchmarks/build.tsv"
    conda:
        "envs/workflow.yaml"
    shell:
        # --force: setuptools relinks the objects it has when only setup.py (its flags) changed
        "python setup.py build_ext --inplace --force > {log} 2>&1"


rule bench:
    input:
        export=get_cell_export,
        reference=get_cell_reference_export,
        kernels=get_kernel_libraries(),
        engine=get_engine_sources(),
    output:
        json="results/runs/{strategy}_{algo}_np{nranks}_p{prompt_len}{dtype_suffix}.json",
    params:
        gen_len=config["gen_len"],
        iters=get_iters,
        warmup=get_warmup,
        reference=get_reference_option,
        timeout=get_timeout_prefix(),
    threads: get_bench_threads
    resources:
        mpi=MPI_LAUNCHER,
        tasks=get_tasks,
        cpus_per_task=get_cpus_per_task,
        job_threads=get_job_threads,
        machine=MEASUREMENT,
    log:
        "results/logs/bench/{strategy}_{algo}_np{nranks}_p{prompt_len}{dtype_suffix}.log",
    benchmark:
        "results/logs/benchmarks/bench/{strategy}_{algo}_np{nranks}_p{prompt_len}{dtype_suffix}.tsv"
    conda:
        "envs/workflow.yaml"
    shell:
        "{params.timeout} {resources.mpi} -n {resources.tasks}"
        " python -m mpi4py -m pipeline bench --export {input.export}{params.reference}"
        " --parallel-strategy {wildcards.strategy} --attention-algo {wildcards.algo}"
        " --prompt-len {wildcards.prompt_len} --gen-len {params.gen_len}"
        " --iters {params.iters} --warmup {params.warmup} --threads {resources.job_threads}"
        " --out {output.json} > {log} 2>&1"


rule verify:
    input:
        runs=get_run_files(),
        code=["pipeline/report/verify.py", "pipeline/cells.py"],
    output:
        md="results/verification.md",
        json="results/verification.json",
    params:
        atol=config["verify_atol"],
        rtol=config["verify_rtol"],
    resources:
        machine=BESIDE,
    log:
        "results/logs/verify.log",
    conda:
        "envs/workflow.yaml"
    shell:
        "python -m pipeline verify --runs {input.runs} --atol {params.atol} --rtol {params.rtol}"
        " --out-md {output.md} --out-json {output.json} > {log} 2>&1"


include: "rules/scaling.smk"
include: "rules/compare.smk"


rule report:
    input:
        runs=get_run_files(),
        verification="results/verification.json",
        costmodel="results/costmodel.json",
        baseline=get_baseline_files(),
        compare=get_compare_files(),
        code=get_report_sources(),
    output:
        md="results/report.md",
        json="results/summary.json",
        csv="results/summary.csv",
        figures=get_figure_files(),
        complete=touch("results/logs/report.complete"),
    params:
        cells=get_cell_names(),
        not_applicable=get_not_applicable(),
        workflow_config=get_workflow_config_json(),
        logs="results/logs/bench",
    resources:
        machine=BESIDE,
    log:
        "results/logs/report.log",
    conda:
        "envs/workflow.yaml"
    shell:
        "python -m pipeline report --runs {input.runs} --verification {input.verification}"
        " --costmodel {input.costmodel} --baseline {input.baseline}"
        " --compare {input.compare}"
        " --cells {params.cells} --not-applicable {params.not_applicable:q}"
        " --workflow-config {params.workflow_config:q} --logs-dir {params.logs}"
        " --out-md {output.md} --out-json {output.json} --out-csv {output.csv} > {log} 2>&1"


onstart:
    if get_cluster_command("up"):
        print(f"Emulated cluster: {get_cluster_command('up')}")
        subprocess.run(get_cluster_command("up"), shell=True, check=True)


onsuccess:
    if get_cluster_command("down"):
        subprocess.run(get_cluster_command("down"), shell=True, check=False)


onerror:
    if get_cluster_command("down"):
        subprocess.run(get_cluster_command("down"), shell=True, check=False)
    if get_partial_report_wanted():
        print("Some jobs failed: building results/report.md from the cells that exist.")
        for stale in get_stale_files():
            os.remove(stale)
        subprocess.run(get_partial_report_command(), shell=True, check=False)
