# Beyond the matrix: the MPI latency/bandwidth sweep, the network calibration (sweep, tiny model
# and held-out cells on shared memory and across emulated nodes per link speed), the cost model
# calibrated on them and on the single-rank cells, and the optional Hugging Face baseline. All
# feed the report. The measurements hold every share of the `machine` resource, so nothing runs beside them.


rule commbench:
    input:
        code="pipeline/study/commbench.py",
    output:
        "results/comm.json",
    params:
        timeout=get_timeout_prefix(),
    resources:
        mpi=MPI_LAUNCHER,
        tasks=2,
        machine=MEASUREMENT,
    log:
        "results/logs/commbench.log",
    benchmark:
        "results/logs/benchmarks/commbench.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "{params.timeout} {resources.mpi} -n {resources.tasks}"
        " python -m mpi4py -m pipeline commbench --out {output} > {log} 2>&1"


rule netcal:
    input:
        export=get_export_dir(),
        kernels=get_kernel_libraries(),
        engine=get_engine_sources(),
        code=["pipeline/study/netcal.py", "pipeline/study/commbench.py", "pipeline/study/cluster.py"],
    output:
        "results/network/{link}.json",
    wildcard_constraints:
        link=r"shm|link[0-9.]+",
    params:
        link=get_netcal_link,
        nodes=config["network_calibration"]["nodes"],
        cells=get_netcal_cells(),
        gen_len=config["gen_len"],
        iters=config["iters"],
        mpiexec=config["mpi_launcher"],
    threads: get_machine_cores()
    resources:
        machine=MEASUREMENT,
    log:
        "results/logs/netcal/{link}.log",
    benchmark:
        "results/logs/benchmarks/netcal/{link}.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m pipeline netcal --export {input.export} --link {params.link} --nodes {params.nodes}"
        " --cells {params.cells} --gen-len {params.gen_len} --iters {params.iters}"
        " --threads {threads} --mpiexec {params.mpiexec:q} --out {output} > {log} 2>&1"


rule costmodel:
    input:
        runs=get_run_files(),
        comm="results/comm.json",
        network=get_netcal_files(),
        link=get_emulated_link_files(),
        code=glob("pipeline/study/costmodel/*.py"),
    output:
        "results/costmodel.json",
    params:
        cluster=get_cluster_args(),
        emulated=get_emulated_link_arg(),
        ranks=config["cluster"]["predict_ranks"],
        lengths=config["cluster"]["predict_prompt_lengths"],
    resources:
        machine=BESIDE,
    log:
        "results/logs/costmodel.log",
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m pipeline costmodel --runs {input.runs} --comm {input.comm} {params.cluster}"
        " --ranks {params.ranks} --prompt-lens {params.lengths} --network {input.network} {input.link}"
        " {params.emulated} --out {output} > {log} 2>&1"


rule baseline:
    input:
        checkpoint=get_checkpoint_files(),
        code=["pipeline/study/baseline.py", "pipeline/engine/prompts.py"],
    output:
        "results/baseline/hf_p{prompt_len}.json",
    params:
        checkpoint=get_checkpoint_param,
        gen_len=config["gen_len"],
        iters=config["iters"],
        warmup=config["warmup"],
        timeout=get_timeout_prefix(),
    threads: get_baseline_threads
    resources:
        machine=MEASUREMENT,
    log:
        "results/logs/baseline/hf_p{prompt_len}.log",
    benchmark:
        "results/logs/benchmarks/baseline/hf_p{prompt_len}.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "{params.timeout} python -m pipeline baseline --checkpoint {params.checkpoint}"
        " --prompt-len {wildcards.prompt_len} --gen-len {params.gen_len} --iters {params.iters}"
        " --warmup {params.warmup} --threads {threads} --out {output} > {log} 2>&1"

